"""Where workers run. One interface; `local` runs a child process on this machine, `kubernetes` a Job."""

from __future__ import annotations

from trainer_svc.executors.base import Executor, RunOutcome
from trainer_svc.executors.local import LocalExecutor
from trainer_svc.settings import TrainerSettings

__all__ = ["Executor", "LocalExecutor", "RunOutcome", "create_executor"]


def create_executor(settings: TrainerSettings) -> Executor:
    """The executor `settings.trainer_executor` names."""
    if settings.trainer_executor == "kubernetes":
        from trainer_svc.executors.kubernetes import KubernetesExecutor  # the client loads only where it runs

        return KubernetesExecutor(settings)
    return LocalExecutor(settings)
