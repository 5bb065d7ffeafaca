"""Drift statistics: the reference profile a trainer leaves in an artifact, and how live traffic compares.

The trainer builds a `Profile` from held-out data and publishes it with the adapter. Serving is to
build the same `Profile` over windows of live requests with the same `ProfileBuilder` and export
what `compare` computes, so bucket edges and hashing can never disagree between the two sides.

Histograms are stored as raw counts (not proportions) so a profile stays exact and windows can be
summed; the statistics normalise them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

# Upper bounds (exclusive) of the token-length buckets: powers of two, so one bucket covers a
# doubling of length. Bucket 0 holds length 0; the last bucket holds everything from 2**14 up.
LENGTH_BUCKET_EDGES: tuple[int, ...] = tuple(2**k for k in range(15))
LENGTH_BUCKETS = len(LENGTH_BUCKET_EDGES) + 1
# Token ids are hashed into this many buckets, so the distribution has the same size for every
# vocabulary and a profile stays small.
TOKEN_BUCKETS = 256
# Proportions below this count as this in PSI, so an empty bucket on one side gives a large but
# finite value instead of infinity.
PSI_EPSILON = 1e-4

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def length_bucket(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """The bucket index of each length: 0 for 0, k for lengths in [2**(k-1), 2**k)."""
    return np.searchsorted(np.asarray(LENGTH_BUCKET_EDGES), np.asarray(lengths, dtype=np.int64), side="right")


def token_bucket(token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """The hash bucket of each token id, by the splitmix64 finaliser.

    A fixed integer mix, not Python's salted hash(), so every process buckets the same id the same
    way, and neighbouring ids (frequent tokens cluster at low ids) land in unrelated buckets.
    """
    x = np.atleast_1d(np.asarray(token_ids, dtype=np.int64)).astype(np.uint64)  # arrays wrap silently
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(TOKEN_BUCKETS)).astype(np.int64)


class Profile(BaseModel):
    """Traffic statistics of one adapter: the training reference or a window of live requests."""

    schema_version: Literal[1] = 1
    sample_count: int = Field(0, ge=0)
    prompt_length_histogram: list[int] = Field(default_factory=lambda: [0] * LENGTH_BUCKETS)
    prompt_token_distribution: list[int] = Field(
        default_factory=lambda: [0] * TOKEN_BUCKETS,
        description="count of prompt tokens per hash bucket (token_bucket)",
    )
    response_length_histogram: list[int] = Field(default_factory=lambda: [0] * LENGTH_BUCKETS)
    mean_response_logprob: float | None = Field(
        None, description="mean per-token log-probability of the responses; None when unknown"
    )

    @model_validator(mode="after")
    def _bucket_counts_match(self) -> Profile:
        for name, size in (
            ("prompt_length_histogram", LENGTH_BUCKETS),
            ("prompt_token_distribution", TOKEN_BUCKETS),
            ("response_length_histogram", LENGTH_BUCKETS),
        ):
            if len(getattr(self, name)) != size:
                raise ValueError(f"{name} must have {size} buckets (schema version {self.schema_version})")
        return self

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.model_validate_json(path.read_bytes())


class ProfileBuilder:
    """Accumulates samples (prompt tokens, response tokens, response log-probability) into a Profile."""

    def __init__(self) -> None:
        self._samples = 0
        self._prompt_lengths = np.zeros(LENGTH_BUCKETS, dtype=np.int64)
        self._prompt_tokens = np.zeros(TOKEN_BUCKETS, dtype=np.int64)
        self._response_lengths = np.zeros(LENGTH_BUCKETS, dtype=np.int64)
        self._logprob_sum = 0.0
        self._logprob_tokens = 0

    def add(
        self,
        prompt_token_ids: Sequence[int],
        response_token_ids: Sequence[int],
        response_logprob: float | None = None,
    ) -> None:
        """Count one sample. `response_logprob` is the sum of the response tokens' log-probabilities.

        A sum rather than a mean, so the profile's mean is per token over all responses, whatever
        their lengths; leave it None when the caller has no log-probabilities.
        """
        self._samples += 1
        self._prompt_lengths[length_bucket([len(prompt_token_ids)])[0]] += 1
        self._response_lengths[length_bucket([len(response_token_ids)])[0]] += 1
        if len(prompt_token_ids):
            self._prompt_tokens += np.bincount(token_bucket(prompt_token_ids), minlength=TOKEN_BUCKETS)
        if response_logprob is not None and len(response_token_ids):
            self._logprob_sum += response_logprob
            self._logprob_tokens += len(response_token_ids)

    def build(self) -> Profile:
        return Profile(
            sample_count=self._samples,
            prompt_length_histogram=self._prompt_lengths.tolist(),
            prompt_token_distribution=self._prompt_tokens.tolist(),
            response_length_histogram=self._response_lengths.tolist(),
            mean_response_logprob=self._logprob_sum / self._logprob_tokens if self._logprob_tokens else None,
        )


def _proportions(counts: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(counts, dtype=np.float64)
    if values.ndim != 1 or np.any(values < 0):
        raise ValueError(f"{name} must be a one-dimensional array of non-negative counts")
    total = values.sum()
    if total <= 0:
        raise ValueError(f"{name} is empty: a distribution needs at least one count")
    return values / total


def _checked_pair(
    p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray, names: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    first, second = _proportions(p, names[0]), _proportions(q, names[1])
    if first.shape != second.shape:
        raise ValueError(f"{names[0]} and {names[1]} have different numbers of buckets")
    return first, second


def psi(
    expected: Sequence[float] | np.ndarray,
    actual: Sequence[float] | np.ndarray,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of `actual` against `expected` (counts or proportions).

    sum((a - e) * ln(a / e)) over buckets, with proportions floored at `epsilon` so a bucket empty
    on one side stays finite. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large.
    """
    e, a = _checked_pair(expected, actual, ("expected", "actual"))
    e, a = np.maximum(e, epsilon), np.maximum(a, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def js_divergence(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon divergence of two distributions (counts or proportions), base 2, in [0, 1]."""
    p_, q_ = _checked_pair(p, q, ("p", "q"))
    m = (p_ + q_) / 2

    def kl_to_m(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return float(np.clip((kl_to_m(p_) + kl_to_m(q_)) / 2, 0.0, 1.0))


class DriftReport(BaseModel):
    """How a live window differs from the reference. A statistic is None when a side has no data."""

    window_size: int
    prompt_length_psi: float | None
    prompt_token_jsd: float | None
    response_length_psi: float | None
    mean_response_logprob: float | None
    response_logprob_shift: float | None = Field(description="live mean log-probability minus the reference's")


def _when_both_have_data(
    statistic: Callable[[list[int], list[int]], float], a: list[int], b: list[int]
) -> float | None:
    return statistic(a, b) if sum(a) > 0 and sum(b) > 0 else None


def compare(reference: Profile, live: Profile) -> DriftReport:
    """The drift figures of `live` against `reference`."""
    shift = None
    if live.mean_response_logprob is not None and reference.mean_response_logprob is not None:
        shift = live.mean_response_logprob - reference.mean_response_logprob
    return DriftReport(
        window_size=live.sample_count,
        prompt_length_psi=_when_both_have_data(psi, reference.prompt_length_histogram, live.prompt_length_histogram),
        prompt_token_jsd=_when_both_have_data(
            js_divergence, reference.prompt_token_distribution, live.prompt_token_distribution
        ),
        response_length_psi=_when_both_have_data(
            psi, reference.response_length_histogram, live.response_length_histogram
        ),
        mean_response_logprob=live.mean_response_logprob,
        response_logprob_shift=shift,
    )
