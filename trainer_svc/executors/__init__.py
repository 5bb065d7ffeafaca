"""Where workers run. One interface; `local` runs a child process on this machine, `kubernetes` a Job.

The entry point (`create_executor`) turns the settings into the small config each executor reads.
"""

from __future__ import annotations

from loraplane.errors import StartupError
from trainer_svc.executors.base import Executor, RunOutcome
from trainer_svc.executors.config import KubernetesConfig, LocalConfig, PodDefaults, WorkerImage
from trainer_svc.executors.local import LocalExecutor
from trainer_svc.settings import TrainerSettings

__all__ = ["Executor", "LocalExecutor", "RunOutcome", "create_executor", "kubernetes_config", "local_config"]


def local_config(settings: TrainerSettings) -> LocalConfig:
    return LocalConfig(
        cancel_grace_seconds=settings.trainer_cancel_grace_seconds,
        stop_grace_seconds=settings.trainer_stop_grace_seconds,
    )


def kubernetes_config(settings: TrainerSettings) -> KubernetesConfig:
    return KubernetesConfig(
        api_server=settings.kubernetes_api_server,
        namespace=settings.kubernetes_namespace,
        store_uri=settings.store_uri,
        s3_endpoint_url=settings.s3_endpoint_url,
        worker=WorkerImage(
            image=settings.kubernetes_worker_image,
            config_map=settings.kubernetes_config_map,
            s3_secret=settings.kubernetes_s3_secret,
        ),
        pods=PodDefaults(
            cpu=settings.kubernetes_worker_cpu,
            memory=settings.kubernetes_worker_memory,
            gpus=settings.kubernetes_worker_gpus,
            deadline_seconds=settings.kubernetes_job_deadline_seconds,
            ttl_seconds=settings.kubernetes_job_ttl_seconds,
        ),
        trainjob_runtime=settings.kubernetes_trainjob_runtime,
    )


def create_executor(settings: TrainerSettings) -> Executor:
    """The executor `settings.trainer_executor` names, given the values it reads."""
    if settings.trainer_executor == "kubernetes":
        if not settings.store_uri.startswith("s3://"):
            raise StartupError(
                f"the kubernetes executor's worker pods fetch their input from the store and publish to it, so it "
                f"must be one they reach: set LORAPLANE_STORE_URI to an s3:// bucket (it is {settings.store_uri})"
            )
        from trainer_svc.executors.kubernetes import KubernetesExecutor  # the client loads only where it runs

        return KubernetesExecutor(kubernetes_config(settings))
    return LocalExecutor(local_config(settings))
