"""The job as the trainer tracks it: state machine, progress, outcome."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from loraplane.errors import ErrorCode
from loraplane.training import JobState
from trainer_svc.progress import Checkpoint, PublishedAdapter, TaskScore
from trainer_svc.spec import JobSpec


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float = 0.0
    learning_rate: float = 0.0
    elapsed_seconds: float = 0.0
    eta_seconds: float = 0.0


class JobError(BaseModel):
    code: ErrorCode
    message: str
    field: str = ""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(BaseModel):
    id: str
    request_id: str = ""
    owner: str = ""
    """The name of the token that created it; "" when authentication is off (every caller's)."""
    spec: JobSpec
    state: JobState = JobState.VALIDATING
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset_metrics: dict[str, float] = Field(default_factory=dict)
    """What validating the data found (duplicates removed, leaks); kept when a restart clears `metrics`."""
    task_scores: list[TaskScore] = Field(default_factory=list)
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    adapter: PublishedAdapter | None = None
    error: JobError | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobEvent(BaseModel):
    """One change to a job, with the job as it stood afterwards; sequence counts from 1 per job."""

    job_id: str
    sequence: int
    time: datetime
    message: str
    job: Job
