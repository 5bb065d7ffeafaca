"""Drift records: what the trainer keeps of the traffic an adapter was trained for, and what serving
keeps of live traffic, in one form so that the two can be compared statistic by statistic.

Each request becomes a `Record` (`observe`): its prompt's length and hashed tokens, the length of the
answer, the log-probabilities of both, whether the answer kept the trained form (answer_form.py),
was cut at max_tokens or refused. The trainer publishes a `Profile` with each adapter version: a
record of every prompt the job saw (up to MAX_PROMPT_RECORDS; prompt statistics), and records of
held-out prompts answered by the trained adapter (generation statistics: an adapter is surer of
prompts it was trained on, so those would set the bar too high). Serving keeps the records of a
sliding window per adapter version. Keeping records rather than histograms lets serving judge each
statistic against the spread it shows on unchanged traffic at the window's own size
(drift_statistics.py), and both sides count with this one implementation.

Prompt lengths and tokens count the content only: a chat template puts the same tokens around every
user turn (SmolLM2's, 30 tokens with its default system prompt), which would otherwise dilute both
statistics equally on both sides and hide a shift in what users write. Both sides strip the same
`PromptFrame`, found from the base model's own template.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraplane.answer_form import AnswerForm, is_refusal

# Upper bounds (exclusive) of the token-length buckets: powers of two, so one bucket covers a
# doubling of length. Bucket 0 holds length 0; the last bucket holds everything from 2**14 up.
LENGTH_BUCKET_EDGES: tuple[int, ...] = tuple(2**k for k in range(15))
LENGTH_BUCKETS = len(LENGTH_BUCKET_EDGES) + 1
# Token ids are hashed into this many buckets, so the distribution has the same size for every
# vocabulary and a profile stays small.
TOKEN_BUCKETS = 256

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


EMBEDDING_DIMENSIONS = 64
"""A prompt's meaning, as drift sees it: the model's last hidden state at the prompt's last token (what
the first generated token is read from: the prompt as the model understood it), L2-normalised and
projected to this many dimensions by a fixed random Gaussian matrix, which keeps distances between
vectors within a few percent (Johnson-Lindenstrauss) and a record small."""
_EMBEDDING_SEED: Final = 20261207


@functools.cache
def _projection(width: int) -> np.ndarray:
    rng = np.random.default_rng(_EMBEDDING_SEED)
    return rng.standard_normal((width, EMBEDDING_DIMENSIONS)) / math.sqrt(EMBEDDING_DIMENSIONS)


def prompt_embedding(last_hidden: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """The drift embedding (EMBEDDING_DIMENSIONS) of a prompt from the model's hidden state at its last token."""
    vector = np.asarray(last_hidden, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(vector))
    projected = (vector / norm if norm else vector) @ _projection(len(vector))
    return tuple(round(float(value), 5) for value in projected)


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
    ANSWER_FORM_DROP = "answer_form_drop"
    """Reference share of answers in the trained form minus live: the adapter stops answering as trained."""
    TRUNCATION_RISE = "truncation_rise"
    """Live share of answers cut at max_tokens minus reference."""
    REFUSAL_RISE = "refusal_rise"
    """Live share of refusals minus reference."""
    PROMPT_MEANING_SHIFT = "prompt_meaning_shift"
    """Squared distance between the live and the reference mean prompt embedding: users ask for something
    else, whether or not in other words and lengths."""


@dataclass(frozen=True)
class Sample:
    """One request as drift sees it. Log-probabilities are sums over tokens, from the raw model distribution."""

    prompt_token_ids: Sequence[int]
    response_token_ids: Sequence[int]
    response_logprob: float | None = None
    """Sum over the generated tokens; None when unknown."""
    prompt_logprob: float | None = None
    """Sum over prompt tokens 1..n-1 (the first has nothing before it); None when not scored."""
    answer: str = ""
    """The generated text."""
    truncated: bool = False
    """Generation stopped at max_tokens rather than at an end token."""
    prompt_embedding: tuple[float, ...] | None = None
    """`prompt_embedding` of the prompt; None where the engine does not compute it."""


class PromptRecord(BaseModel):
    """A prompt's content (without the template's frame): its length and its tokens' hash buckets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    length: int = Field(ge=0)
    buckets: tuple[int, ...] = ()
    """The token_bucket values of the content's tokens, ascending, each once..."""
    counts: tuple[int, ...] = ()
    """... and how many of its tokens fall in each: at most TOKEN_BUCKETS pairs, however long the prompt."""
    nll: float | None = None
    """Negative log-likelihood summed over the whole prompt's tokens 1..n-1 (frame included, as the engine
    scores it); None when the prompt was not scored."""
    scored_tokens: int = Field(0, ge=0)
    embedding: tuple[float, ...] | None = None
    """`prompt_embedding`; None where it was not computed."""

    @model_validator(mode="after")
    def _paired(self) -> PromptRecord:
        if len(self.buckets) != len(self.counts):
            raise ValueError("a prompt record needs one count per bucket")
        return self


class Record(BaseModel):
    """One answered prompt: the prompt, and what the adapter answered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: PromptRecord
    response_length: int = Field(ge=0)
    response_logprob: float | None = None
    """Sum over the generated tokens; None when the engine gave none."""
    in_form: bool | None = None
    """Whether the answer kept the trained form; None where the adapter has none."""
    truncated: bool = False
    refused: bool = False


def prompt_record(
    prompt_token_ids: Sequence[int],
    frame: PromptFrame,
    prompt_logprob: float | None = None,
    embedding: tuple[float, ...] | None = None,
) -> PromptRecord:
    """The record of a prompt: its content's length and token buckets, its surprise where it was scored
    (`prompt_logprob`, the sum over tokens 1..n-1) and its `embedding` where it was computed."""
    measured: dict[str, Any] = {"embedding": embedding}
    if prompt_logprob is not None and len(prompt_token_ids) > 1:
        measured |= {"nll": -prompt_logprob, "scored_tokens": len(prompt_token_ids) - 1}
    content = frame.content(prompt_token_ids)
    if not len(content):
        return PromptRecord(length=0, **measured)
    buckets, counts = np.unique(token_bucket(content), return_counts=True)
    return PromptRecord(length=len(content), buckets=tuple(buckets.tolist()), counts=tuple(counts.tolist()), **measured)


def observe(sample: Sample, frame: PromptFrame, form: AnswerForm | None) -> Record:
    """The record of one answered request (a live one, or a held-out prompt the trainer answered)."""
    answered = sample.response_logprob is not None and len(sample.response_token_ids) > 0
    return Record(
        prompt=prompt_record(sample.prompt_token_ids, frame, sample.prompt_logprob, sample.prompt_embedding),
        response_length=len(sample.response_token_ids),
        response_logprob=sample.response_logprob if answered else None,
        in_form=form.holds(sample.answer) if form is not None else None,
        truncated=sample.truncated,
        refused=is_refusal(sample.answer),
    )


SCHEMA_VERSION: Final = 4


class Profile(BaseModel):
    """An adapter's drift reference (as the trainer publishes it), or the records of a live window.

    `prompts` are what prompt statistics (lengths, words, surprise) compare with: in a reference, every
    prompt the job saw (up to MAX_PROMPT_RECORDS); in a window, the window's own prompts. `answers` are what generation
    statistics compare with: held-out prompts the trained adapter answered, or the window's requests.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[4] = SCHEMA_VERSION
    prompts: list[PromptRecord] = Field(default_factory=list)
    answers: list[Record] = Field(default_factory=list)
    form: AnswerForm | None = None
    """The form the training answers share, which `answers[].in_form` was judged by."""

    @model_validator(mode="before")
    @classmethod
    def _current(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(
                f"the drift reference has schema {data['schema_version']}, written by an older trainer that kept "
                f"histograms rather than records (schema {SCHEMA_VERSION}): train a new version to monitor its drift"
            )
        return data

    @classmethod
    def of_window(cls, records: Sequence[Record]) -> Profile:
        """A live window's profile: its requests' prompts and answers."""
        return cls(prompts=[record.prompt for record in records], answers=list(records))

    @classmethod
    def total(cls, profiles: Iterable[Profile]) -> Profile:
        """The profile of all their records together (several adapters counted under one label)."""
        profiles = list(profiles)
        return cls(
            prompts=[record for profile in profiles for record in profile.prompts],
            answers=[record for profile in profiles for record in profile.answers],
        )

    @property
    def sample_count(self) -> int:
        """Answered prompts (a window's requests)."""
        return len(self.answers)

    @property
    def output_confidence(self) -> float | None:
        """Mean log-probability per generated token; None without any."""
        scored = [(r.response_logprob, r.response_length) for r in self.answers if r.response_logprob is not None]
        tokens = sum(length for _, length in scored)
        return sum(logprob for logprob, _ in scored) / tokens if tokens else None

    @property
    def prompt_surprise(self) -> float | None:
        """Mean negative log-likelihood per scored prompt token; None without any."""
        scored = [(r.nll, r.scored_tokens) for r in self.prompts if r.nll is not None]
        tokens = sum(count for _, count in scored)
        return sum(nll for nll, _ in scored) / tokens if tokens else None

    @property
    def form_share(self) -> float | None:
        """Share of answers in the trained form; None where there is none."""
        judged = [r.in_form for r in self.answers if r.in_form is not None]
        return sum(judged) / len(judged) if judged else None

    def prompt_length_histogram(self) -> list[int]:
        return np.bincount(length_bucket([r.length for r in self.prompts]), minlength=LENGTH_BUCKETS).tolist()

    def response_length_histogram(self) -> list[int]:
        lengths = [r.response_length for r in self.answers]
        return np.bincount(length_bucket(lengths), minlength=LENGTH_BUCKETS).tolist()

    def save(self, path: Path) -> None:
        """Written compactly (fields at their defaults left out), the schema named."""
        document = self.model_dump(mode="json", exclude_defaults=True) | {"schema_version": SCHEMA_VERSION}
        path.write_text(json.dumps(document, separators=(",", ":")))

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.model_validate_json(path.read_bytes())
