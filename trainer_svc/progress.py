"""What a worker reports while it runs: one JSON object per line on its event stream.

The local executor reads these from the child's stdout, the Kubernetes executor from the pod
log; both parse them with `parse_event`, so the worker and its readers share one schema.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from loraplane.errors import ErrorCode
from loraplane.training import HeldOutSet, TaskMetric

Phase = Literal["loading_model", "tokenizing", "training", "evaluating", "publishing"]


class PhaseEvent(BaseModel):
    kind: Literal["phase"] = "phase"
    phase: Phase
    message: str = ""


class ProgressEvent(BaseModel):
    kind: Literal["progress"] = "progress"
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    elapsed_seconds: float
    eta_seconds: float


class EvalEvent(BaseModel):
    kind: Literal["eval"] = "eval"
    step: int
    validation_loss: float


class PublishedAdapter(BaseModel):
    name: str
    version: int
    uri: str
    manifest_sha256: str


class TaskScore(BaseModel):
    """A task metric of the greedy answers to the test prompts, by the base model and by the adapter."""

    metric: TaskMetric
    base: float
    adapter: float
    examples: int
    held_out: HeldOutSet | None = None
    """Which held-out prompts; None in the jobs of a trainer from before the sets were told apart."""


class Checkpoint(BaseModel):
    """One evaluation during training; the published checkpoint is the best by validation loss."""

    step: int
    validation_loss: float
    train_loss: float
    published: bool
    facts_lost: int | None = None
    """General facts the base model knew that this checkpoint answers wrong (knowledge_probe.py)."""


class ResultEvent(BaseModel):
    """The last event of a successful run."""

    kind: Literal["result"] = "result"
    adapter: PublishedAdapter
    metrics: dict[str, float]
    task_scores: list[TaskScore] = Field(default_factory=list)
    checkpoints: list[Checkpoint] = Field(default_factory=list)


class ErrorEvent(BaseModel):
    """The last event of a failed run."""

    kind: Literal["error"] = "error"
    code: ErrorCode
    message: str
    field: str = ""


WorkerEvent = Annotated[PhaseEvent | ProgressEvent | EvalEvent | ResultEvent | ErrorEvent, Field(discriminator="kind")]
_EVENT_ADAPTER: TypeAdapter[WorkerEvent] = TypeAdapter(WorkerEvent)


def format_event(event: BaseModel) -> str:
    """One line of the event stream."""
    return event.model_dump_json() + "\n"


def parse_event(line: str) -> WorkerEvent | None:
    """The event on `line`, or None for a line that is not one (library chatter, blank)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        return _EVENT_ADAPTER.validate_python(json.loads(line))
    except (ValueError, ValidationError):
        return None
