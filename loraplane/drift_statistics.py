"""Drift statistics, each judged against the spread it shows on unchanged traffic at the window's size.

A fixed threshold cannot serve every window: a distance between 16 live prompts and a reference
reads high on unchanged traffic (sampling noise), while the same value over 500 prompts is a real
shift. So each statistic gets a p-value from a two-sample bootstrap test (Efron and Tibshirani, ch.
16): under "the window is traffic like the reference", both are draws from one population, whose best
estimate is the two pooled; pseudo-references of the reference's size and pseudo-windows of the
window's size are drawn from the pool with replacement, and the p-value is the share of them whose
statistic reads at least the observed value. Drawing whole records (a prompt with all its tokens)
keeps the tokens of one prompt together, which a chi-square test on token counts would wrongly treat
as independent; pooling lets a rare kind of request that the reference happens to lack count as
possible, where a bootstrap of the reference alone would call it impossible.

Each statistic is a function of two aggregates (sums of per-record features over a reference and a
window), so a batch of draws is a matrix product of multinomial counts with the pooled features.
Draws stop early once the statistic has been reached STOP_AFTER times (Besag and Clifford's sequential
test): a window like the reference costs a hundred draws, a drifted one DRAWS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from loraplane.drift import EMBEDDING_DIMENSIONS, LENGTH_BUCKETS, TOKEN_BUCKETS, DriftStatistic, Profile, length_bucket

DRAWS = 1000
"""Bootstrap pairs at most: p-values down to 1/1001, below the per-statistic threshold of a 5% rate
shared by nine statistics (0.0056)."""
BATCH = 100
REFERENCE_NOISE_WEIGHT = 2
"""Pseudo-references are drawn at the reference's size over this, counting its sampling noise this many
times. A reference is itself a sample, and every window is compared with the same one: a reference whose
mean happens to sit some standard errors from its population's would make a share of every window many
times the rate alarm. For a mean, doubling the reference's part of the spread moves the threshold from
z*sqrt(1/n + 1/R) to z*sqrt(1/n + 2/R) (z = 2.5 at 0.6%): it absorbs a reference about two of its standard
errors off where the window is as large as the reference, over one where it is a third of it, and costs
little power where the reference is much the larger (its error is then small beside the window's)."""
STOP_AFTER = 10
"""Draws stop once this many read at least the observed value: the p-value is then at least 10/1001,
over any per-statistic threshold."""
PSI_EPSILON = 1e-4
"""Proportions below this count as this in PSI, so an empty bucket on one side gives a large but finite value."""


def _rows_as_proportions(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts, dtype=np.float64), where=totals > 0)


def psi_rows(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index of each row of `actual` against the same row of `expected` (counts):
    sum((a - e) * ln(a / e)), proportions floored at PSI_EPSILON."""
    e = np.maximum(_rows_as_proportions(expected), PSI_EPSILON)
    a = np.maximum(_rows_as_proportions(actual), PSI_EPSILON)
    return np.sum((a - e) * np.log(a / e), axis=1)


def jsd_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence, base 2, in [0, 1], of each row pair of counts."""
    p_, q_ = _rows_as_proportions(p), _rows_as_proportions(q)
    m = (p_ + q_) / 2

    def kl_to_m(x: np.ndarray) -> np.ndarray:
        ratio = np.divide(x, m, out=np.ones_like(x), where=x > 0)
        return np.sum(x * np.log2(ratio), axis=1)

    return np.clip((kl_to_m(p_) + kl_to_m(q_)) / 2, 0.0, 1.0)


def _mean(aggregate: np.ndarray) -> np.ndarray:
    """Column 0 over column 1: a mean per token or a share, from summed (value, weight) features."""
    return np.divide(aggregate[:, 0], aggregate[:, 1], out=np.full(len(aggregate), np.nan), where=aggregate[:, 1] > 0)


def _one_hot(indices: np.ndarray, width: int) -> np.ndarray:
    rows = np.zeros((len(indices), width))
    rows[np.arange(len(indices)), indices] = 1.0
    return rows


def _prompt_lengths(profile: Profile) -> np.ndarray:
    return _one_hot(length_bucket([r.length for r in profile.prompts]), LENGTH_BUCKETS)


def _prompt_tokens(profile: Profile) -> np.ndarray:
    rows = np.zeros((len(profile.prompts), TOKEN_BUCKETS))
    for row, record in enumerate(profile.prompts):
        rows[row, list(record.buckets)] = record.counts
    return rows[rows.sum(axis=1) > 0]


def _response_lengths(profile: Profile) -> np.ndarray:
    """Answers that ended by themselves: a cut answer's length is the caller's max_tokens, not the adapter's
    (truncation_rise counts those)."""
    return _one_hot(length_bucket([r.response_length for r in profile.answers if not r.truncated]), LENGTH_BUCKETS)


def _confidence(profile: Profile) -> np.ndarray:
    pairs = [(r.response_logprob, r.response_length) for r in profile.answers if r.response_logprob is not None]
    return np.array(pairs, dtype=np.float64).reshape(-1, 2)


def _surprise(profile: Profile) -> np.ndarray:
    pairs = [(r.nll, r.scored_tokens) for r in profile.prompts if r.nll is not None]
    return np.array(pairs, dtype=np.float64).reshape(-1, 2)


def _meaning(profile: Profile) -> np.ndarray:
    rows = [(*r.embedding, 1.0) for r in profile.prompts if r.embedding is not None]
    return np.array(rows, dtype=np.float64) if rows else np.zeros((0, EMBEDDING_DIMENSIONS + 1))


def _mean_distance(reference: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Squared distance between the mean vectors of summed (vector..., count) features: a maximum mean
    discrepancy with a linear kernel."""
    difference = live[:, :-1] / live[:, -1:] - reference[:, :-1] / reference[:, -1:]
    return np.sum(difference**2, axis=1)


def _shares(flag: Callable[[Profile], list[bool]]) -> Callable[[Profile], np.ndarray]:
    def features(profile: Profile) -> np.ndarray:
        return np.array([(float(value), 1.0) for value in flag(profile)], dtype=np.float64).reshape(-1, 2)

    return features


def _drop(reference: np.ndarray, live: np.ndarray) -> np.ndarray:
    return _mean(reference) - _mean(live)


def _rise(reference: np.ndarray, live: np.ndarray) -> np.ndarray:
    return _mean(live) - _mean(reference)


@dataclass(frozen=True)
class Definition:
    """How a statistic is computed: per-record features (rows of the records that carry it), and its value
    from the features summed over the reference and over the window (one row per draw)."""

    features: Callable[[Profile], np.ndarray]
    value: Callable[[np.ndarray, np.ndarray], np.ndarray]


DEFINITIONS: Mapping[DriftStatistic, Definition] = {
    DriftStatistic.PROMPT_LENGTH_PSI: Definition(_prompt_lengths, psi_rows),
    DriftStatistic.PROMPT_TOKEN_JSD: Definition(_prompt_tokens, jsd_rows),
    DriftStatistic.RESPONSE_LENGTH_PSI: Definition(_response_lengths, psi_rows),
    DriftStatistic.OUTPUT_CONFIDENCE_DROP: Definition(_confidence, _drop),
    DriftStatistic.PROMPT_SURPRISE_RISE: Definition(_surprise, _rise),
    DriftStatistic.ANSWER_FORM_DROP: Definition(
        _shares(lambda p: [r.in_form for r in p.answers if r.in_form is not None]),
        _drop,
    ),
    DriftStatistic.TRUNCATION_RISE: Definition(_shares(lambda p: [r.truncated for r in p.answers]), _rise),
    DriftStatistic.REFUSAL_RISE: Definition(_shares(lambda p: [r.refused for r in p.answers]), _rise),
    DriftStatistic.PROMPT_MEANING_SHIFT: Definition(_meaning, _mean_distance),
}


class Reading(BaseModel):
    """One statistic of a window: its value, how unusual that is for unchanged traffic, and the verdict."""

    value: float | None
    """None below the window minimum, or when a side has no data for it."""
    p_value: float | None
    """Share of bootstrap windows of unchanged traffic, of this window's size, reading at least `value`."""
    samples: int
    """The window's records that carry this statistic."""
    over: bool


def _seed(statistic: DriftStatistic, reference_rows: int, window_rows: int) -> list[int]:
    """Draws depend on the statistic and the sizes only: the same window always gets the same p-value."""
    return [list(DriftStatistic).index(statistic), reference_rows, window_rows]


def bootstrap_p_value(
    statistic: DriftStatistic, reference: np.ndarray, window: np.ndarray, observed: float, *, draws: int = DRAWS
) -> float:
    """The share of pooled bootstrap pairs (see the module docstring) whose statistic reads at least `observed`."""
    pooled = np.vstack([reference, window])
    value = DEFINITIONS[statistic].value
    rng = np.random.default_rng(_seed(statistic, len(reference), len(window)))

    def resampled(size: int, batch: int) -> np.ndarray:
        """`batch` sums of `size` pooled rows drawn with replacement."""
        rows = rng.integers(0, len(pooled), size=(batch, size)) + len(pooled) * np.arange(batch)[:, None]
        return np.bincount(rows.ravel(), minlength=batch * len(pooled)).reshape(batch, -1) @ pooled

    done = reached = 0
    while done < draws and reached < STOP_AFTER:
        batch = min(BATCH, draws - done)
        pseudo_reference = resampled(max(len(reference) // REFERENCE_NOISE_WEIGHT, 1), batch)
        pseudo_window = resampled(len(window), batch)
        null = np.nan_to_num(value(pseudo_reference, pseudo_window), nan=-np.inf)
        reached += int(np.count_nonzero(null >= observed - 1e-12))
        done += batch
    return (1 + reached) / (1 + done)


@dataclass
class Calibration:
    """One reference's features, computed once, against which windows are read."""

    reference: Profile
    _features: dict[DriftStatistic, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self._features = {statistic: d.features(self.reference) for statistic, d in DEFINITIONS.items()}

    def reading(self, statistic: DriftStatistic, live: Profile) -> tuple[float | None, float | None, int]:
        """The statistic's value on `live`, its p-value and the window's records behind it."""
        reference, window = self._features[statistic], DEFINITIONS[statistic].features(live)
        if not len(reference) or not len(window):
            return None, None, len(window)
        value = float(DEFINITIONS[statistic].value(reference.sum(axis=0)[None], window.sum(axis=0)[None])[0])
        if math.isnan(value):
            return None, None, len(window)
        return value, bootstrap_p_value(statistic, reference, window, value), len(window)


@dataclass(frozen=True)
class Verdicts:
    """What makes a statistic over: its p-value under the false-alarm rate shared among the statistics
    (Bonferroni: the chance that any of k statistics reads over on unchanged traffic stays under the
    rate), or, for a statistic given a raw threshold, its value above that."""

    false_alarm_rate: float
    thresholds: Mapping[DriftStatistic, float] = field(default_factory=dict)


class DriftReport(BaseModel):
    """How a live window differs from its reference, statistic by statistic."""

    window_size: int
    reference_prompts: int
    reference_answers: int
    readings: dict[DriftStatistic, Reading]
    p_value_threshold: float | None
    """The false-alarm rate over the statistics judged by p-value; None when none is."""
    output_confidence: float | None
    reference_output_confidence: float | None
    prompt_surprise: float | None
    reference_prompt_surprise: float | None
    form: str | None
    """The trained form (answer_form.AnswerForm.describe); None where the answers share none."""
    form_share: float | None
    reference_form_share: float | None

    @property
    def drifted(self) -> bool:
        return any(reading.over for reading in self.readings.values())


def report(calibration: Calibration, live: Profile, verdicts: Verdicts, *, min_samples: int) -> DriftReport:
    """The readings of `live` against the calibrated reference; below `min_samples` requests none."""
    reference = calibration.reference
    enough = live.sample_count >= min_samples
    figures = {s: calibration.reading(s, live) if enough else (None, None, 0) for s in DriftStatistic}
    by_p_value = [s for s, (value, _, _) in figures.items() if value is not None and s not in verdicts.thresholds]
    threshold = verdicts.false_alarm_rate / len(by_p_value) if by_p_value else None
    readings: dict[DriftStatistic, Reading] = {}
    for statistic, (value, p_value, samples) in figures.items():
        raw = verdicts.thresholds.get(statistic)
        if value is None:
            over = False
        elif raw is not None:
            over = value > raw
        else:
            over = p_value is not None and threshold is not None and p_value <= threshold
        readings[statistic] = Reading(value=value, p_value=p_value, samples=samples, over=over)
    return DriftReport(
        window_size=live.sample_count,
        reference_prompts=len(reference.prompts),
        reference_answers=reference.sample_count,
        readings=readings,
        p_value_threshold=threshold,
        output_confidence=live.output_confidence if enough else None,
        reference_output_confidence=reference.output_confidence,
        prompt_surprise=live.prompt_surprise if enough else None,
        reference_prompt_surprise=reference.prompt_surprise,
        form=reference.form.describe() if reference.form else None,
        form_share=live.form_share if enough else None,
        reference_form_share=reference.form_share,
    )
