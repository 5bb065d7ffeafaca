import math

import numpy as np
import pytest

from loraplane.drift import (
    LENGTH_BUCKETS,
    PSI_EPSILON,
    TOKEN_BUCKETS,
    Profile,
    ProfileBuilder,
    compare,
    js_divergence,
    length_bucket,
    psi,
    token_bucket,
)


def _profile(samples: list[tuple[list[int], list[int], float | None]]) -> Profile:
    builder = ProfileBuilder()
    for prompt, response, logprob in samples:
        builder.add(prompt, response, logprob)
    return builder.build()


def test_length_bucket_edges_are_powers_of_two() -> None:
    lengths = [0, 1, 2, 3, 4, 7, 8, 16383, 16384, 10**9]
    assert length_bucket(lengths).tolist() == [0, 1, 2, 2, 3, 3, 4, 14, 15, 15]
    assert LENGTH_BUCKETS == 16


def test_token_bucket_is_stable_and_in_range() -> None:
    ids = np.arange(50_000)
    buckets = token_bucket(ids)
    assert buckets.min() >= 0 and buckets.max() < TOKEN_BUCKETS
    # Fixed values: a change here would silently invalidate every stored profile.
    assert token_bucket([0, 1, 2, 49_151]).tolist() == [0, 229, 138, 73]
    # Neighbouring ids spread over the buckets instead of filling a few.
    counts = np.bincount(token_bucket(np.arange(1024)), minlength=TOKEN_BUCKETS)
    assert counts.max() <= 12


@pytest.mark.parametrize("statistic", [psi, js_divergence])
def test_identical_distributions_give_zero(statistic) -> None:
    counts = [5, 0, 3, 12, 1]
    assert statistic(counts, counts) == pytest.approx(0.0, abs=1e-12)
    # Counts and proportions of the same distribution are the same distribution.
    assert statistic(counts, np.asarray(counts) / 21) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_disjoint_distributions_is_known_large_value() -> None:
    expected = 2 * (1 - PSI_EPSILON) * math.log(1 / PSI_EPSILON)
    assert psi([10, 0], [0, 4]) == pytest.approx(expected)
    assert psi([10, 0], [0, 4]) > 0.25


def test_psi_of_a_moderate_shift() -> None:
    value = psi([50, 50], [60, 40])
    assert value == pytest.approx(0.1 * math.log(0.6 / 0.5) - 0.1 * math.log(0.4 / 0.5))


def test_jsd_is_one_for_disjoint_and_bounded() -> None:
    assert js_divergence([1, 0, 0], [0, 0, 7]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        p, q = rng.random(8) * (rng.random(8) > 0.3), rng.random(8)
        p[0] += 0.01
        value = js_divergence(p, q)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(js_divergence(q, p))


@pytest.mark.parametrize("statistic", [psi, js_divergence])
def test_statistics_reject_empty_or_mismatched(statistic) -> None:
    with pytest.raises(ValueError, match="empty"):
        statistic([0, 0], [1, 1])
    with pytest.raises(ValueError, match="different numbers"):
        statistic([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        statistic([1, -1], [1, 1])


def test_builder_counts_samples() -> None:
    profile = _profile([([1, 2, 3], [4, 5], -1.0), ([], [6, 7, 8, 9], -3.0), ([7], [8], None)])
    assert profile.sample_count == 3
    assert profile.prompt_length_histogram[2] == 1  # length 3
    assert profile.prompt_length_histogram[0] == 1  # empty prompt
    assert profile.prompt_length_histogram[1] == 1  # length 1
    assert sum(profile.prompt_token_distribution) == 4
    assert profile.response_length_histogram[2] == 1 and profile.response_length_histogram[3] == 1
    # Per token over the responses that have log-probabilities: (-1 - 3) / (2 + 4).
    assert profile.mean_response_logprob == pytest.approx(-4 / 6)


def test_profile_json_round_trip(tmp_path) -> None:
    profile = _profile([([1, 2, 3], [4, 5], -1.5), ([9] * 40, [1] * 300, -30.0)])
    profile.save(tmp_path / "profile.json")
    assert Profile.load(tmp_path / "profile.json") == profile
    with pytest.raises(ValueError, match="buckets"):
        Profile.model_validate({**profile.model_dump(), "prompt_token_distribution": [1, 2]})


def test_compare_same_traffic_shows_no_drift() -> None:
    samples = [([i, i + 1, i + 2], [i] * (i % 5 + 1), -0.5 * (i % 5 + 1)) for i in range(40)]
    report = compare(_profile(samples), _profile(samples))
    assert report.window_size == 40
    assert report.prompt_length_psi == pytest.approx(0.0, abs=1e-12)
    assert report.prompt_token_jsd == pytest.approx(0.0, abs=1e-12)
    assert report.response_length_psi == pytest.approx(0.0, abs=1e-12)
    assert report.mean_response_logprob == pytest.approx(-0.5)
    assert report.response_logprob_shift == pytest.approx(0.0)


def test_compare_shifted_traffic_shows_drift() -> None:
    reference = _profile([([1, 2], [3], -0.1)] * 20)
    live = _profile([(list(range(100, 400)), [5] * 100, -200.0)] * 5)
    report = compare(reference, live)
    assert report.window_size == 5
    assert report.prompt_length_psi > 10
    assert report.prompt_token_jsd > 0.9
    assert report.response_length_psi > 10
    assert report.mean_response_logprob == pytest.approx(-2.0)
    assert report.response_logprob_shift == pytest.approx(-1.9)


def test_compare_with_an_empty_window_reports_nothing() -> None:
    reference = _profile([([1, 2], [3], -0.1)])
    report = compare(reference, Profile())
    assert report.window_size == 0
    assert report.prompt_length_psi is None
    assert report.prompt_token_jsd is None
    assert report.response_length_psi is None
    assert report.response_logprob_shift is None
