"""The form an adapter's answers take, as its training answers share it, and whether an answer keeps it.

A JSON-extraction adapter that starts answering in prose, or a classifier that starts explaining
itself, moves neither the prompt statistics nor much of the answer lengths; the share of answers in
the trained form shows it at once. The trainer derives the form from the training answers and
publishes it in the drift reference; serving checks every live answer against it, and the reference
records how often the adapter's own answers to held-out prompts keep it.

Forms, from the most to the least specific (the first that the training answers share is theirs):

- `json`: the answers are JSON values of one type (an object: with the keys every answer has);
- `label`: the answers are a small closed set of labels, each used again and again;
- `shape`: the answers are a few character shapes (digits as `9`, letter runs as `a`, as in
  `9999-99-99` for ISO dates);
- `length`: the answers' length in words lies in a range (half the shortest to twice the longest).

Refusals ("I'm sorry, but I can't ...") are told apart by their opening words, whatever the form.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loraplane.answers import answer_json, normalize, without_fence

SHARED = 0.95
"""Share of the training answers that must take a form for it to be theirs."""
MAX_LABELS = 20
MAX_LABEL_SHARE = 0.2
"""Distinct answers may be at most this share of the answers for them to be labels (each used about five
times or more)."""
MAX_SHAPES = 3
_REFUSAL = re.compile(
    r"\A\W*(?:i(?:'m| am) sorry|sorry,|i (?:can(?:no|')t|am unable|'m unable|won't|will not)|as an ai\b|"
    r"i'm not able|i am not able|unfortunately,? i)",
    re.IGNORECASE,
)

JsonType = Literal["object", "array", "string", "number", "boolean", "null"]


def is_refusal(answer: str) -> bool:
    """Whether the answer opens by declining ("I'm sorry", "I can't", "As an AI")."""
    return bool(_REFUSAL.match(answer))


def shape(answer: str) -> str:
    """The answer's character shape: each digit `9`, each run of letters `a`, each run of spaces one space."""
    text = re.sub(r"\d", "9", normalize(answer))
    text = re.sub(r"[^\W\d_]+", "a", text)
    return re.sub(r"\s+", " ", text)


def _json_type(value: object) -> JsonType:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "string" if isinstance(value, str) else "number"


def _words(answer: str) -> int:
    return len(answer.split())


class AnswerForm(BaseModel):
    """The form the training answers share (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["json", "label", "shape", "length"]
    json_type: JsonType | None = None
    json_keys: tuple[str, ...] = ()
    """For JSON objects: the keys every training answer has."""
    labels: tuple[str, ...] = ()
    """Normalised (answers.normalize)."""
    shapes: tuple[str, ...] = ()
    words: tuple[int, int] = Field((0, 0), description="fewest and most words of an answer in form")

    def holds(self, answer: str) -> bool:
        """Whether `answer` takes this form."""
        if self.kind == "json":
            parsed = answer_json(answer)
            if parsed is None or _json_type(parsed.value) != self.json_type:
                return False
            return not isinstance(parsed.value, dict) or all(key in parsed.value for key in self.json_keys)
        if self.kind == "label":
            return normalize(without_fence(answer)) in self.labels
        if self.kind == "shape":
            return shape(without_fence(answer)) in self.shapes
        low, high = self.words
        return low <= _words(answer) <= high

    def describe(self) -> str:
        """The form in a few words, for the drift table and the docs."""
        if self.kind == "json":
            keys = f" with keys {', '.join(self.json_keys)}" if self.json_keys else ""
            return f"JSON {self.json_type}{keys}"
        if self.kind == "label":
            return f"one of {len(self.labels)} labels"
        if self.kind == "shape":
            return f"shaped {' or '.join(self.shapes)}"
        return f"{self.words[0]}-{self.words[1]} words"


def _json_form(answers: Sequence[str]) -> AnswerForm | None:
    values = [parsed.value for answer in answers if (parsed := answer_json(answer)) is not None]
    if len(values) < SHARED * len(answers):
        return None
    json_type, count = Counter(map(_json_type, values)).most_common(1)[0]
    if count < SHARED * len(answers):
        return None
    objects = [value for value in values if isinstance(value, dict)]
    keys = set.intersection(*(set(value) for value in objects)) if objects else set()
    return AnswerForm(kind="json", json_type=json_type, json_keys=tuple(sorted(keys)))


def _covering(counts: Counter[str], most: int, total: int) -> tuple[str, ...] | None:
    """The fewest of the most common values (at most `most`) that cover SHARED of `total`; None if they cannot."""
    chosen, covered = [], 0
    for value, count in counts.most_common(most):
        chosen.append(value)
        covered += count
        if covered >= SHARED * total:
            return tuple(sorted(chosen))
    return None


def derive_form(answers: Sequence[str]) -> AnswerForm | None:
    """The form `answers` (the training answers) share; None without answers."""
    answers = [answer for answer in answers if answer.strip()]
    if not answers:
        return None
    if form := _json_form(answers):
        return form
    labels = Counter(normalize(without_fence(answer)) for answer in answers)
    few = len(labels) <= min(MAX_LABELS, MAX_LABEL_SHARE * len(answers))
    if few and (chosen := _covering(labels, MAX_LABELS, len(answers))):
        return AnswerForm(kind="label", labels=chosen)
    shapes = _covering(Counter(shape(without_fence(answer)) for answer in answers), MAX_SHAPES, len(answers))
    if shapes:
        return AnswerForm(kind="shape", shapes=shapes)
    words = sorted(map(_words, answers))
    return AnswerForm(kind="length", words=(words[0] // 2, 2 * words[-1]))
