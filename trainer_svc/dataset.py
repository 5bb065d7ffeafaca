"""Training data: parse and validate JSONL, naming the line and field of every mistake.

Four formats, one example per line:
    {"prompt": "...", "completion": "..."}                                  instruction tuning
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}    chat
    {"text": "..."}                                                          continued pre-training
    {"prompt": "..." | [turns], "chosen": "...", "rejected": "..."}          preference pairs (DPO)
A line whose keys fit two formats, or none, is refused with the reason; a preference job takes
preference pairs only, and any other job none. The service validates a
dataset before it accepts a job, removes duplicates (`deduplicate`), looks for held-out examples
that also appear in training (`leaked`), then hands the worker the normalised examples
(`write_examples` / `read_examples`), so a worker never sees malformed data. Each example keeps
the line it came from, so errors found later (too many tokens) still name the line the user
wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from loraplane.errors import InvalidArgument
from loraplane.training import HeldOutSet


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class PromptCompletion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    completion: str = Field(min_length=1)
    group: str | None = Field(None, min_length=1)
    """What the example shares with others (an entity, a template, a time period): a validation split the
    trainer makes holds whole groups out (templates.py)."""


class ChatExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatTurn] = Field(min_length=1)
    group: str | None = Field(None, min_length=1)
    """What the example shares with others (an entity, a template, a time period): a validation split the
    trainer makes holds whole groups out (templates.py)."""

    @model_validator(mode="after")
    def _ends_with_assistant(self) -> ChatExample:
        if self.messages[-1].role != "assistant" or not self.messages[-1].content:
            raise ValueError("the last message must be a non-empty assistant message (what the model learns)")
        return self


class TextExample(BaseModel):
    """Plain text the model learns every token of (continued pre-training)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)


def _answer_text(value: object) -> object:
    """An answer given as TRL's conversational form, a list of one assistant message, is its text."""
    if not isinstance(value, list):
        return value
    if len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
        return value[0].get("content")
    raise ValueError("give the answer as text, or as a list of one assistant message")


def _prompt_shape(value: object) -> object:
    if not isinstance(value, str | list):
        raise ValueError("give the prompt as text, or as a list of messages")
    return value


Answer = Annotated[str, Field(min_length=1), BeforeValidator(_answer_text)]


class PreferenceExample(BaseModel):
    """A prompt and two answers to it, the better (`chosen`) and the worse (`rejected`): what preference
    tuning learns from. The prompt is text, or a conversation that ends in a user turn (TRL's
    conversational form); each answer is text, or a list of one assistant message."""

    model_config = ConfigDict(extra="forbid")
    prompt: Annotated[str | Annotated[list[ChatTurn], Field(min_length=1)], BeforeValidator(_prompt_shape)]
    chosen: Answer
    rejected: Answer
    group: str | None = Field(None, min_length=1)
    """What the example shares with others (an entity, a template, a time period): a validation split the
    trainer makes holds whole groups out (templates.py)."""

    @model_validator(mode="after")
    def _a_real_choice(self) -> PreferenceExample:
        if isinstance(self.prompt, list) and self.prompt[-1].role != "user":
            raise ValueError("a conversation given as the prompt must end with a user message (what is answered)")
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same answer, so there is nothing to prefer")
        return self

    def answered(self, *, chosen: bool) -> PromptCompletion | ChatExample:
        """The prompt with one of its answers, as a supervised example: how lengths, the drift profile and
        scores see the pair."""
        answer = self.chosen if chosen else self.rejected
        if isinstance(self.prompt, str):
            return PromptCompletion(prompt=self.prompt, completion=answer)
        return ChatExample(messages=[*self.prompt, ChatTurn(role="assistant", content=answer)])


Example = PromptCompletion | ChatExample | TextExample | PreferenceExample


class SourcedExample(BaseModel):
    """An example and its 1-based line in the dataset the user sent; a held-out example also says which
    held-out set it is in."""

    line: int
    example: Example
    held_out: HeldOutSet | None = None
    repeats: int = 1
    """How many times the dataset held the example (the same after case and whitespace are normalised):
    training sees it once, while the drift reference counts it as often as it was sent, as traffic would."""

    def prompt_text(self) -> str | None:
        """What the example asks, as text (the turns before the answer); None for plain text."""
        example = self.example
        if isinstance(example, TextExample):
            return None
        if isinstance(example, ChatExample):
            return "\n".join(turn.content for turn in example.messages[:-1])
        if isinstance(example, PreferenceExample) and isinstance(example.prompt, list):
            return "\n".join(turn.content for turn in example.prompt)
        return str(example.prompt)

    def answer_text(self) -> str | None:
        """The one answer the example teaches (the completion, the last assistant turn); None for plain
        text and for preference pairs, which teach a comparison."""
        example = self.example
        if isinstance(example, PromptCompletion):
            return example.completion
        if isinstance(example, ChatExample):
            return example.messages[-1].content
        return None


_FORMATS: dict[str, tuple[type[BaseModel], frozenset[str]]] = {
    # The keys that tell each format apart ("prompt" is in two of them).
    "prompt/completion": (PromptCompletion, frozenset({"completion"})),
    "messages": (ChatExample, frozenset({"messages"})),
    "text": (TextExample, frozenset({"text"})),
    "preference": (PreferenceExample, frozenset({"chosen", "rejected"})),
}
_UNION_BRANCHES = frozenset({"str", "list[ChatTurn]"})
_EXPECTED = 'expected an object with "prompt" and "completion", with "messages", or with "text"'
_EXPECTED_PREFERENCE = 'expected a preference pair: an object with "prompt", "chosen" and "rejected"'


def _parse_line(obj: object, *, preferences: bool) -> Example:
    expected = _EXPECTED_PREFERENCE if preferences else _EXPECTED
    if not isinstance(obj, dict):
        raise ValueError(expected)
    fits = [name for name, (_, keys) in _FORMATS.items() if keys & obj.keys()]
    if not fits and "prompt" in obj:  # named as what it most nearly is, so the error says what is missing
        fits = ["preference" if preferences else "prompt/completion"]
    if len(fits) > 1:
        raise ValueError(f"the object fits two formats ({' and '.join(fits)}); give the keys of one only")
    if not fits:
        raise ValueError(expected)
    if (fits[0] == "preference") != preferences:
        needed = (
            "a preference pair" if preferences else 'an example of the answer (a preference pair needs method "dpo")'
        )
        raise ValueError(f"this line is a {fits[0]} example, but the job's method trains on {needed}; {expected}")
    model, _ = _FORMATS[fits[0]]
    return model.model_validate(obj)  # type: ignore[return-value]


def _describe(error: ValidationError) -> str:
    """The first mistake, as field path and message. A value that a union field (a prompt as text or as
    messages) refuses fails every branch; the mistake is in the branch of the value's own type, so a branch's
    bare type mismatch gives way to any other error, and the branch's name is left out of the path."""
    errors = error.errors()
    first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    where = ".".join(str(p) for p in first["loc"] if p not in _UNION_BRANCHES)
    return f"{where}: {first['msg']}" if where else first["msg"]


def parse_jsonl(
    text: str, *, field: str, preferences: bool = False, max_examples: int = 1_000_000
) -> list[SourcedExample]:
    """Every example in `text`; InvalidArgument naming `field` and the line for the first mistake.

    `preferences`: the job learns from preference pairs (DPO), so every line must be one; otherwise none may.
    """
    examples: list[SourcedExample] = []
    # Only "\n" ends a line: str.splitlines() also splits at U+2028 and others, legal inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            examples.append(SourcedExample(line=number, example=_parse_line(json.loads(line), preferences=preferences)))
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})", field=field
            ) from None
        except ValidationError as exc:
            raise InvalidArgument(f"line {number}: {_describe(exc)}", field=field) from None
        except ValueError as exc:
            raise InvalidArgument(f"line {number}: {exc}", field=field) from None
        if len(examples) > max_examples:
            raise InvalidArgument(f"more than {max_examples} examples; split the dataset", field=field)
    if not examples:
        raise InvalidArgument("dataset has no examples: give one JSON object per line", field=field)
    return examples


def write_examples(path: Path, examples: list[SourcedExample]) -> None:
    """Write via a temporary name, so a crash never leaves a partial file that looks complete."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(e.model_dump_json() + "\n" for e in examples))
    os.replace(partial, path)


def read_examples(path: Path) -> list[SourcedExample]:
    """Examples `write_examples` wrote: already validated, so no line-level checks here."""
    return [SourcedExample.model_validate_json(line) for line in path.read_text().split("\n") if line]


def _normalised(example: Example) -> str:
    """What two examples that differ only in case and whitespace have in common."""
    if isinstance(example, PromptCompletion):
        parts = [example.prompt, example.completion]
    elif isinstance(example, ChatExample):
        parts = [f"{turn.role}:{turn.content}" for turn in example.messages]
    elif isinstance(example, PreferenceExample):
        if isinstance(example.prompt, str):
            parts = [example.prompt]
        else:
            parts = [f"{turn.role}:{turn.content}" for turn in example.prompt]
        parts += [example.chosen, example.rejected]
    else:
        parts = [example.text]
    return "\x1f".join(" ".join(part.casefold().split()) for part in parts)


def deduplicate(examples: list[SourcedExample]) -> tuple[list[SourcedExample], int]:
    """The examples without repeats (the same after case and whitespace are normalised), first kept with its
    `repeats` counted; and how many were removed. A repeated example is weighted twice in training and can sit
    on both sides of a split."""
    keys = [_normalised(sourced.example) for sourced in examples]
    counts = Counter(keys)
    kept: dict[str, SourcedExample] = {}
    for key, sourced in zip(keys, examples, strict=True):
        if key not in kept:
            kept[key] = sourced.model_copy(update={"repeats": counts[key]})
    return list(kept.values()), len(examples) - len(kept)


def leaked(held_out: list[SourcedExample], train: list[SourcedExample]) -> list[int]:
    """Lines of `held_out` whose example (normalised) is also in `train`: scores on them measure memory."""
    seen = {_normalised(sourced.example) for sourced in train}
    return [sourced.line for sourced in held_out if _normalised(sourced.example) in seen]


def fingerprint(examples: list[SourcedExample]) -> str:
    """sha256 of the normalised examples (not their line numbers): the same data, the same fingerprint."""
    digest = hashlib.sha256()
    for sourced in examples:
        digest.update(sourced.example.model_dump_json(exclude={"group"}).encode() + b"\n")
    return f"sha256:{digest.hexdigest()}"
