"""Where workers run. One interface; `local` runs a child process on this machine."""

from __future__ import annotations

from trainer_svc.executors.base import Executor, RunOutcome
from trainer_svc.executors.local import LocalExecutor
from trainer_svc.settings import TrainerSettings

__all__ = ["Executor", "LocalExecutor", "RunOutcome", "create_executor"]


def create_executor(settings: TrainerSettings) -> Executor:
    """The executor `settings.trainer_executor` names."""
    executors: dict[str, type[Executor]] = {"local": LocalExecutor}
    return executors[settings.trainer_executor](settings)
