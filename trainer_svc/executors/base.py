"""The executor interface: run one worker to its end, reporting its events as they come."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from trainer_svc.executors.config import ExecutorCapabilities
from trainer_svc.progress import WorkerEvent
from trainer_svc.worker_input import WorkerInput

EventHandler = Callable[[WorkerEvent], Awaitable[None]]


@dataclass(frozen=True)
class RunOutcome:
    """How a worker ended: its exit code and the tail of its log for failures with no error event."""

    exit_code: int
    cancelled: bool
    log_tail: str
    preempted: bool = False
    """Stopped because the trainer is stopping (`preempt_all`): the job is to run again, from its checkpoint."""


class Executor(abc.ABC):
    @property
    @abc.abstractmethod
    def capabilities(self) -> ExecutorCapabilities:
        """What this executor can give a job beyond running its worker."""

    @abc.abstractmethod
    async def run(self, worker_input: WorkerInput, on_event: EventHandler) -> RunOutcome:
        """Run the worker for `worker_input` until it exits, awaiting `on_event` for each event."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> None:
        """Stop the job's worker if it runs; `run` then returns with cancelled=True."""

    @abc.abstractmethod
    async def preempt_all(self) -> set[str]:
        """The trainer is stopping: let the workers that stop with it save a checkpoint and exit (their `run`
        returns with preempted=True); the ids of their jobs. Workers that outlive the trainer (Kubernetes
        Jobs) are left running."""
