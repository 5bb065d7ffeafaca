"""Training data: parse and validate JSONL, naming the line and field of every mistake.

Two formats, one example per line:
    {"prompt": "...", "completion": "..."}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
The service validates a dataset before it accepts a job, then hands the worker the normalised
examples (`write_examples` / `read_examples`), so a worker never sees malformed data. Each
example keeps the line it came from, so errors found later (too many tokens) still name the
line the user wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraplane.errors import InvalidArgument


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class PromptCompletion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    completion: str = Field(min_length=1)


class ChatExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatTurn] = Field(min_length=1)

    @model_validator(mode="after")
    def _ends_with_assistant(self) -> ChatExample:
        if self.messages[-1].role != "assistant" or not self.messages[-1].content:
            raise ValueError("the last message must be a non-empty assistant message (what the model learns)")
        return self


Example = PromptCompletion | ChatExample


class SourcedExample(BaseModel):
    """An example and its 1-based line in the dataset the user sent."""

    line: int
    example: Example


def _parse_line(obj: object) -> Example:
    if isinstance(obj, dict) and "messages" in obj:
        return ChatExample.model_validate(obj)
    if isinstance(obj, dict) and ("prompt" in obj or "completion" in obj):
        return PromptCompletion.model_validate(obj)
    raise ValueError('expected an object with "prompt" and "completion", or with "messages"')


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def parse_jsonl(text: str, *, field: str, max_examples: int = 1_000_000) -> list[SourcedExample]:
    """Every example in `text`; InvalidArgument naming `field` and the line for the first mistake."""
    examples: list[SourcedExample] = []
    # Only "\n" ends a line: str.splitlines() also splits at U+2028 and others, legal inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            examples.append(SourcedExample(line=number, example=_parse_line(json.loads(line))))
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


def split_validation(
    examples: list[SourcedExample], fraction: float, seed: int
) -> tuple[list[SourcedExample], list[SourcedExample]]:
    """Hold out `fraction` of `examples` for validation: at least one, and never all of them."""
    if fraction == 0 or len(examples) < 2:
        return examples, []
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    held_out = min(max(1, round(len(shuffled) * fraction)), len(shuffled) - 1)
    return shuffled[held_out:], shuffled[:held_out]


def write_examples(path: Path, examples: list[SourcedExample]) -> None:
    """Write via a temporary name, so a crash never leaves a partial file that looks complete."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(e.model_dump_json() + "\n" for e in examples))
    os.replace(partial, path)


def read_examples(path: Path) -> list[SourcedExample]:
    """Examples `write_examples` wrote: already validated, so no line-level checks here."""
    return [SourcedExample.model_validate_json(line) for line in path.read_text().split("\n") if line]


def fingerprint(examples: list[SourcedExample]) -> str:
    """sha256 of the normalised examples (not their line numbers): the same data, the same fingerprint."""
    digest = hashlib.sha256()
    for sourced in examples:
        digest.update(sourced.example.model_dump_json().encode() + b"\n")
    return f"sha256:{digest.hexdigest()}"
