"""Drift statistics judged by bootstrap p-values: row-wise distances, the p-value against an exact
computation, false alarms at every window size, a shift found, and the Bonferroni share of the rate."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from loraplane.answer_form import derive_form
from loraplane.drift import DriftStatistic, Profile, PromptFrame, Record, Sample, observe, prompt_embedding
from loraplane.drift_statistics import (
    PSI_EPSILON,
    REFERENCE_NOISE_WEIGHT,
    Calibration,
    Verdicts,
    bootstrap_p_value,
    jsd_rows,
    psi_rows,
    report,
)

FORM = derive_form(['{"name": "Ana"}', '{"name": "Tom"}', '{"name": "Mia"}'])


def _request(rng: random.Random, *, topic: int = 0, prose: bool = False) -> Record:
    """A request of a JSON-extraction adapter: an instruction, a few words of its topic, a short answer."""
    words = [rng.randrange(100 * topic, 100 * topic + 100) for _ in range(rng.randint(6, 30))]
    answer = "Her name is Ana." if prose else '{"name": "Ana"}'
    length = rng.randint(4, 12) if not prose else rng.randint(20, 40)
    meaning = [rng.gauss(1.0 if axis == topic else 0.0, 0.3) for axis in range(8)]
    sample = Sample(
        [5000, 5001, 5002, *words],
        list(range(length)),
        -length * rng.uniform(0.05, 0.4),
        -len(words) * rng.uniform(2.0, 3.0) if rng.random() < 0.5 else None,
        answer,
        truncated=rng.random() < 0.02,
        prompt_embedding=prompt_embedding(meaning),
    )
    return observe(sample, PromptFrame(), FORM)


def _reference(rng: random.Random, prompts: int = 300, answers: int = 80) -> Profile:
    answered = [_request(rng) for _ in range(answers)]
    seen = [_request(rng).prompt for _ in range(prompts - answers)]
    return Profile(prompts=[*seen, *(r.prompt for r in answered)], answers=answered, form=FORM)


def test_row_distances_are_zero_for_equal_rows_and_known_for_disjoint_ones() -> None:
    same = np.array([[1.0, 2.0, 3.0]])
    assert psi_rows(same, same * 5) == pytest.approx([0.0])
    assert jsd_rows(same, same * 5) == pytest.approx([0.0])
    disjoint = (np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert jsd_rows(*disjoint) == pytest.approx([1.0])
    assert psi_rows(*disjoint) == pytest.approx([2 * (1 - PSI_EPSILON) * math.log(1 / PSI_EPSILON)])
    moderate = psi_rows(np.array([[50.0, 50.0]]), np.array([[70.0, 30.0]]))
    assert moderate == pytest.approx([0.2 * math.log(0.7 / 0.5) - 0.2 * math.log(0.3 / 0.5)])


def _exact_rise_p_value(events: tuple[int, int], sizes: tuple[int, int]) -> float:
    """P(live share - reference share >= observed) when both sides draw from the pooled share, the reference
    side at its size over REFERENCE_NOISE_WEIGHT: what the pooled bootstrap estimates for a share statistic,
    computed exactly from two binomials."""
    (x_ref, x_live), (reference_size, n) = events, sizes
    pooled = (x_ref + x_live) / (reference_size + n)
    observed = x_live / n - x_ref / reference_size
    r = reference_size // REFERENCE_NOISE_WEIGHT

    def binomial(k: int, size: int) -> float:
        return math.comb(size, k) * pooled**k * (1 - pooled) ** (size - k)

    return sum(
        binomial(a, r) * binomial(b, n) for a in range(r + 1) for b in range(n + 1) if b / n - a / r >= observed - 1e-12
    )


@pytest.mark.parametrize(("reference_events", "live_events"), [(2, 3), (2, 4), (1, 5), (4, 6)])
def test_the_bootstrap_p_value_of_a_share_matches_the_exact_one(reference_events: int, live_events: int) -> None:
    r, n = 80, 30
    reference = np.array([(float(i < reference_events), 1.0) for i in range(r)])
    window = np.array([(float(i < live_events), 1.0) for i in range(n)])
    observed = live_events / n - reference_events / r
    estimate = bootstrap_p_value(DriftStatistic.TRUNCATION_RISE, reference, window, observed)
    exact = _exact_rise_p_value((reference_events, live_events), (r, n))
    assert estimate == pytest.approx(exact, abs=max(0.01, 0.4 * exact))


def test_the_reference_itself_reads_as_no_drift() -> None:
    reference = _reference(random.Random(1))
    result = report(Calibration(reference), Profile.of_window(reference.answers), Verdicts(0.05), min_samples=10)
    assert not result.drifted
    assert all(r.p_value is not None and r.p_value > 0.05 for r in result.readings.values() if r.value is not None)


@pytest.mark.parametrize("size", [12, 100])
def test_unchanged_traffic_false_alarms_within_the_rate_at_every_window_size(size: int) -> None:
    """150 windows drawn like the reference (fixed seed): small windows are not flagged more than large ones,
    and neither more than the rate allows (5%, with a binomial margin)."""
    rng = random.Random(7)
    calibration, verdicts = Calibration(_reference(rng)), Verdicts(0.05)
    flagged = sum(
        report(calibration, Profile.of_window([_request(rng) for _ in range(size)]), verdicts, min_samples=8).drifted
        for _ in range(150)
    )
    assert flagged / 150 <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / 150)


def test_new_topics_and_prose_answers_are_flagged_in_one_window() -> None:
    rng = random.Random(3)
    calibration, verdicts = Calibration(_reference(rng)), Verdicts(0.05)
    topics = report(
        calibration, Profile.of_window([_request(rng, topic=5) for _ in range(30)]), verdicts, min_samples=8
    )
    assert topics.readings[DriftStatistic.PROMPT_TOKEN_JSD].over
    assert topics.readings[DriftStatistic.PROMPT_MEANING_SHIFT].over
    assert not topics.readings[DriftStatistic.ANSWER_FORM_DROP].over
    prose = report(
        calibration, Profile.of_window([_request(rng, prose=True) for _ in range(30)]), verdicts, min_samples=8
    )
    assert prose.readings[DriftStatistic.ANSWER_FORM_DROP].over
    assert prose.readings[DriftStatistic.RESPONSE_LENGTH_PSI].over
    assert prose.form_share == 0.0 and prose.reference_form_share == 1.0
    assert not prose.readings[DriftStatistic.PROMPT_TOKEN_JSD].over
    assert not prose.readings[DriftStatistic.PROMPT_MEANING_SHIFT].over


def test_a_new_meaning_in_the_same_words_moves_the_meaning_statistic_alone() -> None:
    """Same words and lengths, another intent (an embedding of another topic): only meaning can see it."""
    rng = random.Random(8)
    calibration, verdicts = Calibration(_reference(rng)), Verdicts(0.05)
    same_words = [_request(rng) for _ in range(30)]
    shifted = [_request(random.Random(index), topic=3) for index in range(30)]
    moved = [
        record.model_copy(update={"prompt": record.prompt.model_copy(update={"embedding": other.prompt.embedding})})
        for record, other in zip(same_words, shifted, strict=True)
    ]
    readings = report(calibration, Profile.of_window(moved), verdicts, min_samples=8).readings
    assert [s for s, r in readings.items() if r.over] == [DriftStatistic.PROMPT_MEANING_SHIFT]


def test_the_rate_is_shared_among_the_statistics_judged_and_a_raw_threshold_overrides() -> None:
    rng = random.Random(4)
    calibration = Calibration(_reference(rng))
    live = Profile.of_window([_request(rng) for _ in range(30)])
    judged = report(calibration, live, Verdicts(0.05), min_samples=8)
    carried = [s for s, r in judged.readings.items() if r.value is not None]
    assert len(carried) == len(DriftStatistic) and judged.p_value_threshold == pytest.approx(0.05 / len(carried))
    overridden = report(calibration, live, Verdicts(0.05, {DriftStatistic.PROMPT_LENGTH_PSI: 0.0}), min_samples=8)
    assert overridden.readings[DriftStatistic.PROMPT_LENGTH_PSI].over, "any positive PSI is over a raw 0"
    assert overridden.p_value_threshold == pytest.approx(0.05 / (len(carried) - 1))


def test_below_the_minimum_nothing_is_read() -> None:
    rng = random.Random(5)
    result = report(Calibration(_reference(rng)), Profile.of_window([_request(rng)]), Verdicts(0.05), min_samples=8)
    assert all(r.value is None and not r.over for r in result.readings.values())
    assert result.p_value_threshold is None and result.output_confidence is None


def test_a_statistic_without_data_on_a_side_is_absent() -> None:
    rng = random.Random(6)
    reference = _reference(rng)
    unscored = [r.model_copy(update={"prompt": r.prompt.model_copy(update={"nll": None})}) for r in reference.answers]
    result = report(Calibration(reference), Profile.of_window(unscored), Verdicts(0.05), min_samples=8)
    reading = result.readings[DriftStatistic.PROMPT_SURPRISE_RISE]
    assert (reading.value, reading.p_value, reading.samples) == (None, None, 0)


def test_answer_lengths_leave_out_answers_cut_at_max_tokens() -> None:
    """An adapter that does not stop is cut at whatever max_tokens its caller sets: 14 tokens in the reference,
    48 live. Those lengths say nothing about the adapter, and do not move the statistic."""
    rng = random.Random(9)
    reference = _reference(rng)
    cut = [r.model_copy(update={"truncated": True, "response_length": 14}) for r in reference.answers[:20]]
    reference = reference.model_copy(update={"answers": [*cut, *reference.answers[20:]]})
    live = [_request(rng) for _ in range(30)]
    live[:8] = [r.model_copy(update={"truncated": True, "response_length": 48}) for r in live[:8]]
    readings = report(Calibration(reference), Profile.of_window(live), Verdicts(0.05), min_samples=8).readings
    assert not readings[DriftStatistic.RESPONSE_LENGTH_PSI].over
    assert readings[DriftStatistic.RESPONSE_LENGTH_PSI].samples == sum(not r.truncated for r in live) <= 22
