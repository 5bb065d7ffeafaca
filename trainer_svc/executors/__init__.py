"""Where workers run. One interface; `local` runs a child process on this machine, `kubernetes` a Job."""

from __future__ import annotations

from loraplane.errors import StartupError
from trainer_svc.executors.base import Executor, RunOutcome
from trainer_svc.executors.local import LocalExecutor
from trainer_svc.settings import TrainerSettings

__all__ = ["Executor", "LocalExecutor", "RunOutcome", "create_executor"]


def create_executor(settings: TrainerSettings) -> Executor:
    """The executor `settings.trainer_executor` names."""
    if settings.trainer_executor == "kubernetes":
        if not settings.store_uri.startswith("s3://"):
            raise StartupError(
                f"the kubernetes executor's worker pods fetch their input from the store and publish to it, so it "
                f"must be one they reach: set LORAPLANE_STORE_URI to an s3:// bucket (it is {settings.store_uri})"
            )
        from trainer_svc.executors.kubernetes import KubernetesExecutor  # the client loads only where it runs

        return KubernetesExecutor(settings)
    return LocalExecutor(settings)
