"""A worker's Job (or TrainJob) on the cluster once it exists: find it, follow its pod, delete it.

The pod's log is its progress: the same JSON lines the local executor reads from a child's stdout.
A log stream that closes while the container still runs is opened again; a pod that can never
start (a missing image, ConfigMap or Secret) has its Job deleted rather than left waiting.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Container
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import GenericNamespacedResource
from lightkube.resources.batch_v1 import Job as KubeJob
from lightkube.resources.core_v1 import Pod
from lightkube.types import CascadeType

from trainer_svc.executors.base import EventHandler, RunOutcome
from trainer_svc.executors.kube_manifests import JOB_ID_LABEL, job_name
from trainer_svc.executors.kubeflow import TrainJob, first_node_labels
from trainer_svc.progress import parse_event

WorkerResource = KubeJob | GenericNamespacedResource
_POLL_SECONDS = 1.0
_LOG_TAIL_LINES = 20


class WorkerJobs:
    """This trainer's worker Jobs and TrainJobs, each found by its training job's id.

    `cancelled` is the executor's live set of cancelled job ids: following stops as soon as its
    job is in it.
    """

    def __init__(self, api: AsyncClient, *, trainjob_runtime: str, cancelled: Container[str]) -> None:
        self._api = api
        self._trainjob_runtime = trainjob_runtime
        self._cancelled = cancelled

    async def find(self, job_id: str) -> WorkerResource | None:
        """The job's Job, or its TrainJob where the settings name a training runtime; None if it has neither."""
        async for job in self._api.list(KubeJob, labels={JOB_ID_LABEL: job_id}):
            return job
        if self._trainjob_runtime:
            async for trainjob in self._api.list(TrainJob, labels={JOB_ID_LABEL: job_id}):
                return trainjob
        return None

    async def delete(self, job_id: str) -> None:
        """Delete the Job or TrainJob with its pods (which get SIGTERM); nothing if there is none."""
        for kind in (KubeJob, TrainJob):
            try:
                await self._api.delete(kind, job_name(job_id), cascade=CascadeType.BACKGROUND)
            except ApiError as exc:
                if exc.status.code != 404:  # 404 also where Kubeflow Trainer is not installed
                    raise

    async def follow(self, job_id: str, on_event: EventHandler) -> RunOutcome:
        """Hand on the pod's events until it ends. A log stream that closes while the container still runs
        is opened again, skipping the lines already read."""
        pod = await self._started_pod(job_id)
        if isinstance(pod, RunOutcome):
            return pod
        assert pod.metadata is not None and pod.metadata.name is not None  # a listed pod has a name
        name = pod.metadata.name
        tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        read = 0
        while True:
            seen = 0
            try:
                async for line in self._api.log(name, follow=True):
                    seen += 1
                    if seen <= read:
                        continue
                    read = seen
                    event = parse_event(line)
                    if event is not None:
                        await on_event(event)
                    elif line.strip():
                        tail.append(line.rstrip())
            except ApiError as exc:  # the pod was deleted under the stream (cancel), or never started
                tail.append(f"reading the log of pod {name}: {exc.status.message}")
            ended = await self._ended(job_id, name, "\n".join(tail))
            if ended is not None:
                return ended
            await asyncio.sleep(_POLL_SECONDS)

    async def _started_pod(self, job_id: str) -> Pod | RunOutcome:
        """The Job's newest pod once it has left Pending (its log can then be read); or how the job ended
        before that: cancelled, its Job failed or gone, or a pod that can never start (its Job is deleted)."""
        job = await self.find(job_id)
        # A Job's one pod, or a TrainJob's first node (its first rank).
        labels: dict[str, Any] = (
            first_node_labels(job_id) if isinstance(job, GenericNamespacedResource) else {JOB_ID_LABEL: job_id}
        )
        while job_id not in self._cancelled:
            pods = [pod async for pod in self._api.list(Pod, labels=labels)]
            if not pods:
                job = await self.find(job_id)
                if job is None:
                    return RunOutcome(exit_code=-1, cancelled=False, log_tail="the worker Job is gone")
                failed = _failed_condition(job)
                if failed:
                    return RunOutcome(exit_code=-1, cancelled=False, log_tail=f"the worker Job failed: {failed}")
            else:
                pod = max(pods, key=_created)  # one pod per Job (backoffLimit 0); the newest, were there more
                stuck = _cannot_start(pod)
                if stuck:
                    await self.delete(job_id)
                    return RunOutcome(exit_code=-1, cancelled=False, log_tail=f"the worker pod cannot start: {stuck}")
                if pod.status is not None and pod.status.phase != "Pending":
                    return pod
            await asyncio.sleep(_POLL_SECONDS)
        return RunOutcome(exit_code=-1, cancelled=True, log_tail="")

    async def _ended(self, job_id: str, pod_name: str, log_tail: str) -> RunOutcome | None:
        """How the pod ended (its container's exit code, or why Kubernetes stopped it); None while it runs."""
        if job_id in self._cancelled:
            return RunOutcome(exit_code=-1, cancelled=True, log_tail=log_tail)
        try:
            pod = await self._api.get(Pod, pod_name)
        except ApiError as exc:
            if exc.status.code == 404:
                return RunOutcome(exit_code=-1, cancelled=False, log_tail=f"{log_tail}\npod {pod_name} vanished")
            raise
        status = pod.status
        if status is not None and status.phase == "Failed" and status.reason:  # Evicted, DeadlineExceeded
            return RunOutcome(
                exit_code=-1,
                cancelled=False,
                log_tail=f"{log_tail}\nthe pod was stopped: {status.reason}: {status.message or ''}".strip(),
            )
        for container in (status.containerStatuses or []) if status is not None else []:
            if container.state is not None and container.state.terminated is not None:
                return RunOutcome(exit_code=container.state.terminated.exitCode, cancelled=False, log_tail=log_tail)
        return None


_CANNOT_START = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)
"""Why a container waits that no waiting cures (a missing image, ConfigMap or Secret)."""


def _created(pod: Pod) -> datetime:
    created = pod.metadata.creationTimestamp if pod.metadata is not None else None
    return created or datetime.min.replace(tzinfo=UTC)


def _cannot_start(pod: Pod) -> str:
    """Why `pod`'s container can never start, or "" if it may yet."""
    for container in (pod.status.containerStatuses or []) if pod.status is not None else []:
        waiting = container.state.waiting if container.state is not None else None
        if waiting is not None and waiting.reason in _CANNOT_START:
            return f"{waiting.reason}: {waiting.message or ''}".strip()
    return ""


def _failed_condition(job: WorkerResource) -> str:
    """The reason a Job or TrainJob has failed (DeadlineExceeded, BackoffLimitExceeded), or "" if it has not."""
    if isinstance(job, GenericNamespacedResource):  # a TrainJob's status is plain data
        status: dict[str, Any] = job.status if isinstance(job.status, dict) else {}
        conditions = [dict(c) for c in status.get("conditions", [])]
    else:
        conditions = [c.to_dict() for c in (job.status.conditions or [])] if job.status is not None else []
    for condition in conditions:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"{condition.get('reason')}: {condition.get('message') or ''}".strip()
    return ""
