"""Drift statistics: the reference profile a trainer leaves in an artifact, and how live traffic compares.

The trainer builds a `Profile` from held-out prompts and what the adapter generates for them, and
publishes it with the adapter. Serving builds the same `Profile` over a sliding window of live
requests with the same `ProfileBuilder` and exports what `compare` computes, so bucket edges,
hashing and the log-probability measures can never disagree between the two sides.

Histograms are stored as raw counts (not proportions) so a profile stays exact and windows can be
summed; the statistics normalise them.

The prompt's length and token histograms count its content only: a chat template puts the same
tokens around every user turn (SmolLM2's, 30 tokens with its default system prompt), which would
otherwise dilute both statistics equally on both sides and hide a shift in what users write.
Both sides strip the same `PromptFrame`, found from the base model's own template.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

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


PromptTokens = Literal["whole", "content", "mixed"]
"""What a profile's prompt histograms count: whole templated prompts (profiles written before the
frame was stripped), content only, or a sum of profiles of both kinds (`Profile.total`)."""

_FRAME_PROBE: Final = "Hello"
"""A user turn's content for finding the template around it: one token in any vocabulary worth the name."""


@dataclass(frozen=True)
class PromptFrame:
    """The tokens a chat template puts before and after a user turn's content."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    def content(self, prompt_token_ids: Sequence[int]) -> Sequence[int]:
        """The prompt without the frame's prefix and suffix, each stripped only where it is there (a
        raw prompt, or a conversation with a system turn of its own, keeps what does not match)."""
        start, end = 0, len(prompt_token_ids)
        if self.prefix and tuple(prompt_token_ids[: len(self.prefix)]) == self.prefix:
            start = len(self.prefix)
        if (
            self.suffix
            and end - start >= len(self.suffix)
            and tuple(prompt_token_ids[-len(self.suffix) :]) == self.suffix
        ):
            end -= len(self.suffix)
        return prompt_token_ids[start:end]


class ChatTokenizer(Protocol):
    """What finding a template's frame needs of a tokenizer (Hugging Face's, or an engine's)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


def template_frame(tokenizer: ChatTokenizer) -> PromptFrame:
    """The frame `tokenizer`'s chat template puts around one user turn, as the trainer and serving
    both render it (generation prompt included). No template, or one whose tokens at the content's
    edges merge with it, gives an empty frame: prompts are then counted whole."""
    try:
        text = str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": _FRAME_PROBE}], tokenize=False, add_generation_prompt=True
            )
        )
    except Exception:  # noqa: BLE001 - no template, or one (Jinja code) that refuses a lone user turn
        return PromptFrame()
    before, found, after = text.partition(_FRAME_PROBE)
    if not found:
        return PromptFrame()

    def encode(part: str) -> list[int]:
        return list(tokenizer.encode(part, add_special_tokens=False)) if part else []

    prefix, suffix = encode(before), encode(after)
    if [*prefix, *encode(_FRAME_PROBE), *suffix] != encode(text):
        return PromptFrame()
    return PromptFrame(tuple(prefix), tuple(suffix))


class DriftStatistic(StrEnum):
    """The drift statistics, each oriented so that a higher value means more drift."""

    PROMPT_LENGTH_PSI = "prompt_length_psi"
    PROMPT_TOKEN_JSD = "prompt_token_jsd"
    RESPONSE_LENGTH_PSI = "response_length_psi"
    OUTPUT_CONFIDENCE_DROP = "output_confidence_drop"
    """Reference output confidence minus live: the model is less sure of what it now generates."""
    PROMPT_SURPRISE_RISE = "prompt_surprise_rise"
    """Live prompt surprise minus reference: prompts are further from what the adapter was trained on."""


class Profile(BaseModel):
    """Traffic statistics of one adapter: the training reference or a window of live requests.

    Log-probabilities are kept as sums with their token counts, so profiles add up exactly
    (`Profile.total`) and the means are per token over all samples, whatever their lengths.
    Output confidence is the mean log-probability of the tokens the model GENERATED (never of
    reference answers scored by teacher forcing, which live traffic cannot match); prompt
    surprise is the mean negative log-likelihood of prompt tokens 1..n-1 given those before.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[3] = 3
    prompt_tokens: PromptTokens = "content"
    sample_count: int = Field(0, ge=0)
    prompt_length_histogram: list[int] = Field(default_factory=lambda: [0] * LENGTH_BUCKETS)
    prompt_token_distribution: list[int] = Field(
        default_factory=lambda: [0] * TOKEN_BUCKETS,
        description="count of prompt tokens per hash bucket (token_bucket)",
    )
    response_length_histogram: list[int] = Field(default_factory=lambda: [0] * LENGTH_BUCKETS)
    response_logprob_sum: float = 0.0
    response_logprob_tokens: int = Field(0, ge=0)
    prompt_nll_sum: float = 0.0
    prompt_nll_tokens: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Read an older profile. Version 1: its histograms stand; its teacher-forced log-probability is
        dropped. Versions 1 and 2 counted whole templated prompts, which the live window then counts too."""
        if isinstance(data, dict) and data.get("schema_version") in (1, 2):
            data = {key: value for key, value in data.items() if key != "mean_response_logprob"}
            data["schema_version"], data["prompt_tokens"] = 3, "whole"
        return data

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

    @property
    def output_confidence(self) -> float | None:
        """Mean log-probability per generated token; None without any."""
        return self.response_logprob_sum / self.response_logprob_tokens if self.response_logprob_tokens else None

    @property
    def prompt_surprise(self) -> float | None:
        """Mean negative log-likelihood per scored prompt token; None without any."""
        return self.prompt_nll_sum / self.prompt_nll_tokens if self.prompt_nll_tokens else None

    @classmethod
    def total(cls, profiles: Iterable[Profile]) -> Profile:
        """The profile of all their samples together."""
        profiles = list(profiles)
        kinds = {profile.prompt_tokens for profile in profiles}
        kind: PromptTokens = "mixed" if len(kinds) > 1 else kinds.pop() if kinds else "content"
        builder = ProfileBuilder(prompt_tokens=kind)
        for profile in profiles:
            builder.merge(profile)
        return builder.build()

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.model_validate_json(path.read_bytes())


@dataclass(frozen=True)
class Sample:
    """One request as drift sees it. Log-probabilities are sums over tokens, from the raw model distribution."""

    prompt_token_ids: Sequence[int]
    response_token_ids: Sequence[int]
    response_logprob: float | None = None
    """Sum over the generated tokens; None when unknown."""
    prompt_logprob: float | None = None
    """Sum over prompt tokens 1..n-1 (the first has nothing before it); None when not scored."""


class ProfileBuilder:
    """Accumulates samples into a Profile; `remove` takes one back out, for sliding windows.

    `frame` is stripped from every prompt before its length and tokens are counted; `prompt_tokens`
    "whole" counts whole prompts instead, as a profile written before frames were stripped did.
    """

    def __init__(self, frame: PromptFrame = PromptFrame(), prompt_tokens: PromptTokens = "content") -> None:
        self._frame = frame if prompt_tokens == "content" else PromptFrame()
        self._prompt_tokens_kind: PromptTokens = prompt_tokens
        self._samples = 0
        self._prompt_lengths = np.zeros(LENGTH_BUCKETS, dtype=np.int64)
        self._prompt_tokens = np.zeros(TOKEN_BUCKETS, dtype=np.int64)
        self._response_lengths = np.zeros(LENGTH_BUCKETS, dtype=np.int64)
        self._logprob_sum = 0.0
        self._logprob_tokens = 0
        self._nll_sum = 0.0
        self._nll_tokens = 0

    def add(self, sample: Sample, sign: int = 1) -> None:
        self._samples += sign
        content = self._frame.content(sample.prompt_token_ids)
        self._prompt_lengths[length_bucket([len(content)])[0]] += sign
        self._response_lengths[length_bucket([len(sample.response_token_ids)])[0]] += sign
        if len(content):
            self._prompt_tokens += sign * np.bincount(token_bucket(content), minlength=TOKEN_BUCKETS)
        if sample.response_logprob is not None and len(sample.response_token_ids):
            self._logprob_sum += sign * sample.response_logprob
            self._logprob_tokens += sign * len(sample.response_token_ids)
        if sample.prompt_logprob is not None and len(sample.prompt_token_ids) > 1:
            self._nll_sum -= sign * sample.prompt_logprob
            self._nll_tokens += sign * (len(sample.prompt_token_ids) - 1)

    def remove(self, sample: Sample) -> None:
        """Take back a sample added before (a window's oldest)."""
        self.add(sample, sign=-1)

    def merge(self, profile: Profile) -> None:
        self._samples += profile.sample_count
        self._prompt_lengths += np.asarray(profile.prompt_length_histogram, dtype=np.int64)
        self._prompt_tokens += np.asarray(profile.prompt_token_distribution, dtype=np.int64)
        self._response_lengths += np.asarray(profile.response_length_histogram, dtype=np.int64)
        self._logprob_sum += profile.response_logprob_sum
        self._logprob_tokens += profile.response_logprob_tokens
        self._nll_sum += profile.prompt_nll_sum
        self._nll_tokens += profile.prompt_nll_tokens

    def build(self) -> Profile:
        return Profile(
            prompt_tokens=self._prompt_tokens_kind,
            sample_count=self._samples,
            prompt_length_histogram=self._prompt_lengths.tolist(),
            prompt_token_distribution=self._prompt_tokens.tolist(),
            response_length_histogram=self._response_lengths.tolist(),
            # Sums of a window that lost all its scored samples are rounding error around 0.
            response_logprob_sum=self._logprob_sum if self._logprob_tokens else 0.0,
            response_logprob_tokens=self._logprob_tokens,
            prompt_nll_sum=self._nll_sum if self._nll_tokens else 0.0,
            prompt_nll_tokens=self._nll_tokens,
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
    """How a live window differs from the reference. A value is None when a side has no data for it."""

    window_size: int
    reference_size: int
    statistics: dict[DriftStatistic, float | None]
    output_confidence: float | None
    reference_output_confidence: float | None
    prompt_surprise: float | None
    reference_prompt_surprise: float | None


def _when_both_have_data(
    statistic: Callable[[list[int], list[int]], float], a: list[int], b: list[int]
) -> float | None:
    return statistic(a, b) if sum(a) > 0 and sum(b) > 0 else None


def _difference(first: float | None, second: float | None) -> float | None:
    return None if first is None or second is None else first - second


def compare(reference: Profile, live: Profile) -> DriftReport:
    """The drift figures of `live` against `reference`, which must count prompts alike."""
    if reference.prompt_tokens != live.prompt_tokens:
        raise ValueError(
            f"the reference counts {reference.prompt_tokens} prompts and the live window {live.prompt_tokens} ones"
        )
    statistics = {
        DriftStatistic.PROMPT_LENGTH_PSI: _when_both_have_data(
            psi, reference.prompt_length_histogram, live.prompt_length_histogram
        ),
        DriftStatistic.PROMPT_TOKEN_JSD: _when_both_have_data(
            js_divergence, reference.prompt_token_distribution, live.prompt_token_distribution
        ),
        DriftStatistic.RESPONSE_LENGTH_PSI: _when_both_have_data(
            psi, reference.response_length_histogram, live.response_length_histogram
        ),
        DriftStatistic.OUTPUT_CONFIDENCE_DROP: _difference(reference.output_confidence, live.output_confidence),
        DriftStatistic.PROMPT_SURPRISE_RISE: _difference(live.prompt_surprise, reference.prompt_surprise),
    }
    return DriftReport(
        window_size=live.sample_count,
        reference_size=reference.sample_count,
        statistics=statistics,
        output_confidence=live.output_confidence,
        reference_output_confidence=reference.output_confidence,
        prompt_surprise=live.prompt_surprise,
        reference_prompt_surprise=reference.prompt_surprise,
    )
