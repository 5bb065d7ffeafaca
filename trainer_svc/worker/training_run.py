"""The shape every training method takes: the model to adapt, the job's data, how to run; and what it gives back.

Supervised tuning (train.py) and preference tuning (preference.py) are called alike,
`train(model, data, run) -> TrainedAdapter`, so the worker's entry point picks one by the job's
method and calls it without knowing which arguments each reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from loraplane.training import HeldOutSet, PromptFormat
from trainer_svc.dataset import SourcedExample
from trainer_svc.progress import Checkpoint
from trainer_svc.spec import DpoParameters, TrainingParameters
from trainer_svc.worker.events import Emit
from trainer_svc.worker.parent_weights import Parent, start_from
from trainer_svc.worker.tokenization import TokenizedExample

T = TypeVar("T")
MIN_EARLY_STOPPING_EXAMPLES = 10
"""Fewest unseen-group examples early stopping is measured on alone: below it, one example's loss would
choose the checkpoint."""
MIN_DRIFT_REFERENCE_EXAMPLES = 8
"""Rows held out at random that a drift reference is made of, at least; fewer and every validation example is."""


@dataclass(frozen=True)
class ModelToTrain:
    """The base model, the adapter to give it, and its tokenizer."""

    base: PreTrainedModel
    adapter: LoraConfig
    tokenizer: PreTrainedTokenizerBase
    parent: Parent | None = None
    """The version the job continues: the adapter starts from its weights."""

    def start_adapter(self, model: PeftModel) -> None:
        """Give `model`'s new adapter its starting values: the parent's, where the job continues one (a fresh
        adapter keeps peft's initialisation)."""
        if self.parent is not None:
            start_from(model, self.parent)


@dataclass(frozen=True)
class Examples:
    """One of a job's datasets, as read and as tokenized, with the spec field it came from (for errors)."""

    sourced: list[SourcedExample]
    tokenized: list[TokenizedExample]
    """Each example's trained answer: a preference pair's chosen one."""
    rejected: list[TokenizedExample]
    """A preference pair's rejected answer; [] for a supervised job."""
    field: str

    def as_sent(self) -> list[TokenizedExample]:
        """The tokenized examples, each as often as the dataset held it: the traffic the data stands for
        (training sees each once)."""
        pairs = zip(self.sourced, self.tokenized, strict=True)
        return [example for sourced, example in pairs for _ in range(sourced.repeats)]

    def held_out_sets(self) -> dict[HeldOutSet, Examples]:
        """The examples by the held-out set each is in, in the order they come (an example without a label
        is counted as the caller's validation data; `load_training_sets` labels every held-out example)."""
        labels = [sourced.held_out or HeldOutSet.VALIDATION for sourced in self.sourced]
        return {label: self._only([at == label for at in labels]) for label in dict.fromkeys(labels)}

    def _only(self, keep: list[bool]) -> Examples:
        def kept(items: list[T]) -> list[T]:
            return [item for item, wanted in zip(items, keep, strict=True) if wanted] if items else []

        return Examples(kept(self.sourced), kept(self.tokenized), kept(self.rejected), self.field)


@dataclass(frozen=True)
class TrainingSets:
    """A job's data as every phase after loading it reads it."""

    train: Examples
    validation: Examples
    test: Examples
    replayed: list[TokenizedExample]
    """The base model's own answers to general questions, trained beside a supervised job's examples."""
    prompt_format: PromptFormat

    @property
    def early_stopping(self) -> Examples:
        """What validation loss is measured on, and so early stopping and the published checkpoint: the
        unseen groups where the trainer held out at least MIN_EARLY_STOPPING_EXAMPLES of them (the
        checkpoint that does best on new phrasings), else every validation example."""
        unseen = self.validation.held_out_sets().get(HeldOutSet.UNSEEN_GROUPS)
        return unseen if unseen and len(unseen.tokenized) >= MIN_EARLY_STOPPING_EXAMPLES else self.validation

    @property
    def drift_reference(self) -> Examples:
        """The held-out examples the adapter answers for its drift reference: the rows held out at random
        (traffic like the training data) where the trainer held out at least MIN_DRIFT_REFERENCE_EXAMPLES
        of them, else every validation example. Not the unseen groups: new phrasings are by design a shift
        from the training data, and a reference made of them reads traffic like the training data as drift
        (a skewed mix of answers, say one label's, against traffic with all of them)."""
        rows = self.validation.held_out_sets().get(HeldOutSet.IN_DISTRIBUTION)
        return rows if rows and len(rows.tokenized) >= MIN_DRIFT_REFERENCE_EXAMPLES else self.validation

    def scored(self) -> dict[HeldOutSet, Examples]:
        """The held-out sets the task scores are measured on: the test data, else each validation set apart."""
        return (self.test if self.test.tokenized else self.validation).held_out_sets()


@dataclass(frozen=True)
class TrainingRun:
    """How the run goes: the job's parameters, where its checkpoints go (and the one it resumes from), and
    where its events go."""

    params: TrainingParameters
    dpo: DpoParameters
    output_dir: Path
    resume_from: Path | None
    emit: Emit


@dataclass(frozen=True)
class TrainingOutcome:
    metrics: dict[str, float]
    """Steps, early stop, the published step and the generalization gaps (validation minus training loss)."""
    checkpoints: list[Checkpoint]
    preempted_at: int | None = None
    """The step of the checkpoint saved when the trainer stopped this run (it was not finished)."""


@dataclass(frozen=True)
class TrainedAdapter:
    """The base model with its trained adapter, and how the run went."""

    model: PeftModel
    outcome: TrainingOutcome


Train = Callable[[ModelToTrain, TrainingSets, TrainingRun], TrainedAdapter]
"""A training method: supervised (`train.train`) or preference tuning (`preference.train_preferences`)."""
