"""A job's held-out sets: the validation split the trainer makes when the caller gives none, and how
much of the caller's own held-out prompts are near-copies of training prompts.

The split holds out whole groups (templates.py) so that one figure of the report says what prompts
phrased in a new way get, and rows at random beside them for the in-distribution figure; each
held-out example is labelled with its set, which the worker scores and reports apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplane.training import HeldOutSet
from trainer_svc.dataset import ChatExample, PreferenceExample, PromptCompletion, SourcedExample
from trainer_svc.templates import grouped_split, near_copies


def _group(sourced: SourcedExample) -> str | None:
    example = sourced.example
    return example.group if isinstance(example, PromptCompletion | ChatExample | PreferenceExample) else None


def _labelled(examples: list[SourcedExample], held_out: HeldOutSet) -> list[SourcedExample]:
    return [example.model_copy(update={"held_out": held_out}) for example in examples]


@dataclass(frozen=True)
class Split:
    train: list[SourcedExample]
    validation: list[SourcedExample]
    """Whole unseen groups and in-distribution rows, each labelled."""
    grouping: str
    """How the groups were found, or why the rows were all drawn at random."""


def split_validation(examples: list[SourcedExample], fraction: float, seed: int) -> Split:
    """Hold out about `fraction` of `examples` as whole groups and half as many rows at random (or all
    `fraction` at random where the examples have no groups to hold out); deterministic for a seed."""
    prompts = [example.prompt_text() for example in examples]
    groups = [_group(example) for example in examples]
    split = grouped_split(prompts, groups, [example.answer_text() for example in examples], fraction, seed)
    validation = [
        *_labelled([examples[row] for row in split.unseen_groups], HeldOutSet.UNSEEN_GROUPS),
        *_labelled([examples[row] for row in split.in_distribution], HeldOutSet.IN_DISTRIBUTION),
    ]
    return Split([examples[row] for row in split.train], validation, split.grouping)


@dataclass(frozen=True)
class NearCopies:
    """Of the caller's held-out prompts, how many near-copy a training prompt (templates.near_copies)."""

    copies: int
    prompts: int

    @property
    def share(self) -> float:
        return self.copies / self.prompts if self.prompts else 0.0


def caller_held_out(
    train: list[SourcedExample], validation: list[SourcedExample], test: list[SourcedExample]
) -> tuple[list[SourcedExample], list[SourcedExample], NearCopies]:
    """The caller's validation and test examples labelled as theirs, and how many of their prompts (the
    test's, else the validation's: the ones the task scores are measured on) near-copy training prompts."""
    scored = test or validation
    trained = [prompt for example in train if (prompt := example.prompt_text()) is not None]
    asked = [prompt for example in scored if (prompt := example.prompt_text()) is not None]
    counted = NearCopies(near_copies(trained, asked) if trained and asked else 0, len(asked))
    return _labelled(validation, HeldOutSet.VALIDATION), _labelled(test, HeldOutSet.TEST), counted
