"""Run each worker as a Kubernetes Job: training scales with the cluster, not with the trainer's pod.

One `batch/v1` Job per training job (`kube_manifests.py`), running the same worker entry point in
the same image; one Kubeflow Trainer TrainJob for a job on several nodes (`kubeflow.py`). Its input
travels through the store (`staged_input.py`); its progress is the pod's log (`kube_pods.py`).
Cancel deletes the Job (its pod gets SIGTERM and the worker exits without publishing). A trainer
that restarts finds the Jobs still running and follows them again instead of starting them twice.
Kubernetes is the scheduler: this only submits, follows and deletes.

lightkube is the client: asyncio-native (the trainer is an asyncio service; the official
`kubernetes` package is synchronous), typed resource models, and a log stream that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.resources.core_v1 import Pod

from loraplane.errors import FailedPrecondition
from loraplane.storage import open_store
from trainer_svc import staged_input
from trainer_svc.executors.base import EventHandler, Executor, RunOutcome
from trainer_svc.executors.config import ExecutorCapabilities, KubernetesConfig
from trainer_svc.executors.kube_manifests import POD_WORK_DIR, WorkerTemplate, job_manifest, job_name
from trainer_svc.executors.kube_pods import WorkerJobs
from trainer_svc.executors.kubeflow import trainjob_manifest
from trainer_svc.worker_input import WorkerInput

log = logging.getLogger(__name__)


class KubernetesExecutor(Executor):
    def __init__(self, config: KubernetesConfig) -> None:
        self._config = config
        self._client: AsyncClient | None = None
        self._jobs: WorkerJobs | None = None
        self._template: WorkerTemplate | None = None
        self._cancelled: set[str] = set()

    @property
    def capabilities(self) -> ExecutorCapabilities:
        """Each job's pods ask the cluster for their own resources; several nodes where a runtime is named."""
        return ExecutorCapabilities(per_job_resources=True, multi_node=bool(self._config.trainjob_runtime))

    @property
    def _api(self) -> AsyncClient:
        if self._client is None:
            server = self._config.api_server
            # A bare server URL (kubectl proxy) takes no credentials: an empty user says so.
            config = (
                KubeConfig.from_one(cluster=Cluster(server=server), user=User()) if server else KubeConfig.from_env()
            )
            self._client = AsyncClient(config, namespace=self._config.namespace or None)
        return self._client

    @property
    def _workers(self) -> WorkerJobs:
        if self._jobs is None:
            self._jobs = WorkerJobs(
                self._api, trainjob_runtime=self._config.trainjob_runtime, cancelled=self._cancelled
            )
        return self._jobs

    async def run(self, worker_input: WorkerInput, on_event: EventHandler) -> RunOutcome:
        job_id = worker_input.job_id
        store = open_store(self._config.store_uri, s3_endpoint_url=self._config.s3_endpoint_url)
        trainer_stopping = False
        try:
            if await self._workers.find(job_id) is None:
                await asyncio.to_thread(staged_input.stage, store, worker_input, POD_WORK_DIR)
                if job_id not in self._cancelled:  # a cancel while staging: nothing to start
                    manifest = trainjob_manifest if worker_input.spec.resources.multi_node else job_manifest
                    await self._api.create(manifest(self._config, worker_input, await self._worker_template()))
                if job_id in self._cancelled:  # a cancel before the Job existed found nothing to delete
                    await self._workers.delete(job_id)
            else:
                log.info("job %s: following its Kubernetes Job %s again", job_id, job_name(job_id))
            return await self._workers.follow(job_id, on_event)
        except asyncio.CancelledError:  # the trainer is stopping: the Job runs on, and the next trainer follows it
            trainer_stopping = True
            raise
        except BaseException:  # nobody will follow the Job now: it must not run on and publish unseen
            with contextlib.suppress(Exception):
                await self._workers.delete(job_id)
            raise
        finally:
            self._cancelled.discard(job_id)
            if not trainer_stopping:  # the Job has ended (or never will): its pod needs the input no more
                await asyncio.to_thread(staged_input.discard, store, job_id)

    async def preempt_all(self) -> set[str]:
        """Nothing: worker Jobs outlive the trainer, which follows them again when it restarts."""
        return set()

    async def cancel(self, job_id: str) -> None:
        """Delete the job's Kubernetes Job and its pod; `run` then returns with cancelled=True."""
        self._cancelled.add(job_id)
        await self._workers.delete(job_id)  # not created yet: `run` sees the mark and deletes it once it is

    async def _worker_template(self) -> WorkerTemplate:
        """From the settings when they name a worker image; else the trainer's own container, read from its
        pod, so a new image or configuration rolled out to the trainer reaches its workers too (kustomize
        gives the ConfigMap a hashed name only the trainer's pod spec knows)."""
        if self._template is not None:
            return self._template
        if self._config.worker.image:
            self._template = WorkerTemplate.from_image(self._config.worker)
            return self._template
        pod_name = os.environ.get("HOSTNAME", "")  # a pod's hostname is its name
        try:
            pod = await self._api.get(Pod, pod_name)
        except ApiError as exc:
            raise FailedPrecondition(
                f"cannot find the trainer's own pod {pod_name!r} to give worker Jobs its image and configuration "
                f"({exc.status.message}); outside a cluster, set LORAPLANE_KUBERNETES_WORKER_IMAGE"
            ) from exc
        self._template = WorkerTemplate.from_pod(pod)
        return self._template
