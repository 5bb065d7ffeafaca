"""Whether a generated answer is right: the one implementation of answer matching, shared by the
job's task metrics and the benchmarks, so a figure means the same wherever it is reported.

A string comparison calls a correct answer wrong when it is only written differently: the base
model's pretty-printed JSON against a compact reference, "Paris." against "paris", "3.50" against
"3.5". So beside the strict exact match there are comparisons that look through the writing:

- `exact_match`: the answer equals the reference once surrounding whitespace is stripped.
- `normalized_exact_match`: both case-folded, whitespace runs collapsed, a Markdown code fence
  taken off, surrounding quotes and sentence punctuation stripped (a leading "." or "-" stays: it
  belongs to a number); two answers that are plain numbers compare as numbers ("3.50" == "3.5").
- `json_exact_match`: the answer, parsed as JSON (a code fence allowed round it), equals the
  parsed reference: key order and whitespace do not matter, numbers compare as numbers (3 == 3.0),
  and a value keeps its type (the number 30 is not the string "30", nor is `true` the number 1),
  as a program reading the answer would see it. Strings inside compare exactly. An answer that
  opens with a JSON object or array may go on after it (a chat model's "This JSON holds ..."):
  the value it opens with is its answer, as a caller taking the first JSON value would read it;
  text before the value, or after a bare number or string, makes it no JSON answer.
- `field_accuracy`: of the reference object's top-level fields, the share the answer has with an
  equal value; an answer that does not parse as an object has none.

The JSON comparisons apply only when every reference parses as JSON (`field_accuracy`: as a JSON
object); `not_applicable` says why when they do not, and a report leaves such a metric out rather
than reporting a 0 that would read as a wrong adapter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, TypeGuard, get_args

AnswerMetric = Literal["exact_match", "normalized_exact_match", "json_exact_match", "field_accuracy"]
"""The comparisons of an answer with its reference this module makes."""
ANSWER_METRICS: tuple[AnswerMetric, ...] = get_args(AnswerMetric)


def is_answer_metric(name: str) -> TypeGuard[AnswerMetric]:
    return name in ANSWER_METRICS


_FENCE_OPENING = re.compile(r"\A```[\w+-]*[ \t]*\n")
_FENCE = re.compile(_FENCE_OPENING.pattern + r"(?P<body>.*?)\n?```\Z", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_QUOTES = "\"'`“”‘’«»"
_LEADING = _QUOTES + ",;:!?"
_TRAILING = _QUOTES + ".,;:!?"


@dataclass(frozen=True)
class ParsedJson:
    """A text that parsed as JSON, holding its value (None is a value JSON can hold: `null`)."""

    value: object


def without_fence(text: str) -> str:
    """The text with surrounding whitespace and a Markdown code fence (```json ... ```) taken off."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    return fenced["body"].strip() if fenced else stripped


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python's json accepts them, JSON does not


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_refuse_constant)
"""Fractions parse as Decimal, so numbers compare exactly as written ("0.10" == "0.1")."""


def parse_json(text: str) -> ParsedJson | None:
    """The text's JSON value (fence and whitespace allowed round it), or None when it is not JSON."""
    try:
        return ParsedJson(_DECODER.decode(without_fence(text)))
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None


def answer_json(answer: str) -> ParsedJson | None:
    """The JSON value an answer gives: all of it as JSON (`parse_json`), else the object or array it
    opens with (after whitespace and a code fence's opening line), whatever follows; None otherwise."""
    if (whole := parse_json(answer)) is not None:
        return whole
    opening = _FENCE_OPENING.sub("", answer.strip(), count=1)
    if not opening.startswith(("{", "[")):
        return None
    try:
        return ParsedJson(_DECODER.raw_decode(opening)[0])
    except ValueError:
        return None


def json_equal(left: object, right: object) -> bool:
    """Equal as JSON values: objects by key whatever their order, arrays in order, numbers by value
    (3 == 3.0), every other value with its type (a bool is not a number, a number not a string)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float | Decimal) and isinstance(right, int | float | Decimal):
        return Decimal(left) == Decimal(right)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and left == right


def normalize(text: str) -> str:
    """Case-folded, whitespace collapsed, fence and surrounding quotes and sentence punctuation off."""
    collapsed = " ".join(without_fence(text).casefold().split())
    return collapsed.lstrip(_LEADING + " ").rstrip(_TRAILING + " ")


def exact_match(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


def normalized_match(answer: str, reference: str) -> bool:
    answer, reference = normalize(answer), normalize(reference)
    if _NUMBER.fullmatch(answer) and _NUMBER.fullmatch(reference):
        return Decimal(answer) == Decimal(reference)
    return answer == reference


def json_match(answer: str, reference: str) -> bool:
    """Whether the answer gives the reference's JSON value (`answer_json`); False when either is not JSON."""
    parsed, expected = answer_json(answer), parse_json(reference)
    return parsed is not None and expected is not None and json_equal(parsed.value, expected.value)


def field_accuracy(answer: str, reference: str) -> float:
    """The share of the reference object's top-level fields the answer has with an equal value (an
    empty reference object: 1 when the answer is one too); 0 when the answer gives no JSON object."""
    parsed, expected = answer_json(answer), parse_json(reference)
    if expected is None or not isinstance(expected.value, dict):
        raise ValueError(f"field accuracy needs a JSON object as the reference, not {reference!r}")
    if parsed is None or not isinstance(parsed.value, dict):
        return 0.0
    fields, given = expected.value, parsed.value
    if not fields:
        return float(not given)
    return sum(key in given and json_equal(given[key], value) for key, value in fields.items()) / len(fields)


def not_applicable(metric: AnswerMetric, references: Sequence[str]) -> str | None:
    """Why `metric` cannot score answers against these references, or None when it can."""
    if metric in ("exact_match", "normalized_exact_match"):
        return None
    parsed = [parse_json(reference) for reference in references]
    if metric == "json_exact_match":
        misses = sum(value is None for value in parsed)
        return f"{misses} of {len(references)} reference answers are not JSON" if misses else None
    misses = sum(value is None or not isinstance(value.value, dict) for value in parsed)
    return f"{misses} of {len(references)} reference answers are not JSON objects" if misses else None


_PER_ANSWER: dict[AnswerMetric, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "normalized_exact_match": normalized_match,
    "json_exact_match": json_match,
    "field_accuracy": field_accuracy,
}


def score(metric: AnswerMetric, answers: Sequence[str], references: Sequence[str]) -> float:
    """The mean of `metric` over the answers, each against its reference (check `not_applicable` first)."""
    compare = _PER_ANSWER[metric]
    return sum(float(compare(a, r)) for a, r in zip(answers, references, strict=True)) / len(references)


def scores(answers: Sequence[str], references: Sequence[str]) -> dict[AnswerMetric, float]:
    """Every comparison that applies to these references, by name: the strict and normalised exact
    match always, the JSON ones when the references are JSON."""
    return {
        metric: score(metric, answers, references)
        for metric in ANSWER_METRICS
        if not_applicable(metric, references) is None
    }
