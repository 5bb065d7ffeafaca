"""Run each worker as a Kubernetes Job: training scales with the cluster, not with the trainer's pod.

One `batch/v1` Job per training job, running the same worker entry point in the same image. Its
input travels through the store (`staged_input.py`); its progress is the pod's log, the same JSON
lines the local executor reads from a child's stdout. Cancel deletes the Job (its pod gets SIGTERM
and the worker exits without publishing). Jobs carry the training job's id as a label, so a
trainer that restarts finds the Jobs still running and follows them again instead of starting
them twice. Kubernetes is the scheduler: this only submits, follows and deletes.

A job on several nodes (spec.resources.nodes > 1) is a Kubeflow Trainer TrainJob instead, on the
training runtime the settings name (`torch-distributed`, say): the operator starts one pod per
node with the rendezvous variables torchrun reads (PET_*), so the same worker command runs as one
data-parallel run across the nodes, its first rank reporting. The trainer follows the first
node's pod as it follows a Job's.

lightkube is the client: asyncio-native (the trainer is an asyncio service; the official
`kubernetes` package is synchronous), typed resource models, and a log stream that follows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.models.batch_v1 import JobSpec as KubeJobSpec
from lightkube.models.core_v1 import (
    ConfigMapEnvSource,
    Container,
    EmptyDirVolumeSource,
    EnvFromSource,
    EnvVar,
    EnvVarSource,
    PodSpec,
    PodTemplateSpec,
    ResourceRequirements,
    SecretKeySelector,
    SecurityContext,
    Volume,
    VolumeMount,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job as KubeJob
from lightkube.resources.core_v1 import Pod
from lightkube.types import CascadeType

from loraplane.errors import FailedPrecondition
from loraplane.storage import open_store
from trainer_svc import staged_input
from trainer_svc.executors.base import EventHandler, Executor, RunOutcome
from trainer_svc.progress import parse_event
from trainer_svc.settings import TrainerSettings
from trainer_svc.worker_input import WorkerInput

log = logging.getLogger(__name__)

JOB_ID_LABEL = "loraplane.dev/job-id"
WORKER_LABELS = {
    "app.kubernetes.io/name": "loraplane-worker",
    "app.kubernetes.io/part-of": "loraplane",
    "app.kubernetes.io/managed-by": "loraplane-trainer",
}
TrainJob = create_namespaced_resource("trainer.kubeflow.org", "v1alpha1", "TrainJob", "trainjobs")
"""Kubeflow Trainer's job on several nodes (its CRD, where the operator is installed)."""
TRAINJOB_NODE = "node"
"""The replicated job, and its container, that Kubeflow's torch runtimes run the trainer in."""
WorkerResource = KubeJob | GenericNamespacedResource
POD_WORK_DIR = Path("/var/lib/loraplane/job")
"""Where a worker pod keeps its input, checkpoints and adapter: an emptyDir, gone with the pod."""
_POLL_SECONDS = 1.0
_LOG_TAIL_LINES = 20


def job_name(job_id: str) -> str:
    return f"loraplane-{job_id}"


def _launcher(gpus: int) -> list[str]:
    """Python for one process; torchrun for one process per GPU, as one data-parallel (DDP) run."""
    if gpus > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={gpus}"]
    return ["python"]


@dataclass(frozen=True)
class WorkerTemplate:
    """What a worker container shares with the trainer's: its image and its environment (the LORAPLANE_*
    ConfigMap and the S3 Secret), so a worker runs the trainer's code with the trainer's configuration;
    and the trainer's volumes, of which a worker mounts those that hold its job's base model."""

    image: str
    env_from: list[EnvFromSource]
    env: list[EnvVar]
    volumes: list[Volume] = field(default_factory=list)
    mounts: list[VolumeMount] = field(default_factory=list)

    @classmethod
    def from_pod(cls, pod: Pod) -> WorkerTemplate:
        """The trainer's own pod: its (first) container's image, environment and mounts, and the pod's volumes."""
        assert pod.spec is not None  # a pod the API returns always has one
        container = pod.spec.containers[0]
        return cls(
            image=container.image or "",
            env_from=container.envFrom or [],
            env=container.env or [],
            volumes=pod.spec.volumes or [],
            mounts=container.volumeMounts or [],
        )

    def model_volumes(self, base_model_path: Path) -> tuple[list[Volume], list[VolumeMount]]:
        """The volumes holding `base_model_path` (a model on a volume rather than in the image), mounted
        read-only: a worker reads the model and must not take the trainer's other volumes (its job DB)."""
        mounts = [
            VolumeMount(name=mount.name, mountPath=mount.mountPath, subPath=mount.subPath, readOnly=True)
            for mount in self.mounts
            if base_model_path.is_relative_to(mount.mountPath)
        ]
        names = {mount.name for mount in mounts}
        return [volume for volume in self.volumes if volume.name in names], mounts

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> WorkerTemplate:
        """For a trainer outside the cluster (or one that pins the worker image): the names in its settings."""
        secret = settings.kubernetes_s3_secret
        env = [
            EnvVar(name=variable, valueFrom=EnvVarSource(secretKeyRef=SecretKeySelector(name=secret, key=key)))
            for variable, key in (
                ("AWS_ACCESS_KEY_ID", "access-key-id"),
                ("AWS_SECRET_ACCESS_KEY", "secret-access-key"),
            )
            if secret
        ]
        config_map = EnvFromSource(configMapRef=ConfigMapEnvSource(name=settings.kubernetes_config_map))
        return cls(image=settings.kubernetes_worker_image, env_from=[config_map], env=env)


@dataclass(frozen=True)
class PodResources:
    """What each worker pod asks for: the job's own requests, else the trainer's defaults."""

    cpu: str
    memory: str
    gpus: int

    @classmethod
    def of(cls, settings: TrainerSettings, worker_input: WorkerInput) -> PodResources:
        asked = worker_input.spec.resources
        return cls(
            cpu=asked.cpu or settings.kubernetes_worker_cpu,
            memory=asked.memory or settings.kubernetes_worker_memory,
            gpus=asked.gpus if asked.gpus is not None else settings.kubernetes_worker_gpus,
        )

    def requirements(self) -> ResourceRequirements:
        limits = {"memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        return ResourceRequirements(requests={"cpu": self.cpu, "memory": self.memory}, limits=limits)


def _worker_args(worker_input: WorkerInput) -> list[str]:
    return ["-m", "trainer_svc.worker", "--from-store", worker_input.store_uri, worker_input.job_id]


def _work_volume() -> tuple[Volume, VolumeMount]:
    return Volume(name="work", emptyDir=EmptyDirVolumeSource()), VolumeMount(name="work", mountPath=str(POD_WORK_DIR))


def job_manifest(settings: TrainerSettings, worker_input: WorkerInput, template: WorkerTemplate) -> KubeJob:
    """The Job that trains `worker_input`'s job: the worker fetches its staged input from the store."""
    labels = {**WORKER_LABELS, JOB_ID_LABEL: worker_input.job_id}
    resources = PodResources.of(settings, worker_input)
    model_volumes, model_mounts = template.model_volumes(worker_input.base_model_path)
    work_volume, work_mount = _work_volume()
    worker = Container(
        name="worker",
        image=template.image,
        command=[*_launcher(resources.gpus), *_worker_args(worker_input)],
        envFrom=template.env_from,
        env=template.env,
        resources=resources.requirements(),
        volumeMounts=[work_mount, *model_mounts],
        securityContext=SecurityContext(allowPrivilegeEscalation=False, runAsNonRoot=True),
    )
    return KubeJob(
        metadata=ObjectMeta(
            name=job_name(worker_input.job_id),
            labels=labels,
            annotations={"loraplane.dev/adapter": worker_input.spec.adapter_name},
        ),
        spec=KubeJobSpec(
            # No retried pods: a retry would start over from nothing (checkpoints live in the pod), and the
            # trainer follows one pod per job; a job that fails is failed with the pod's reason.
            backoffLimit=0,
            activeDeadlineSeconds=settings.kubernetes_job_deadline_seconds,
            ttlSecondsAfterFinished=settings.kubernetes_job_ttl_seconds,
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=labels),
                spec=PodSpec(restartPolicy="Never", containers=[worker], volumes=[work_volume, *model_volumes]),
            ),
        ),
    )


def trainjob_manifest(
    settings: TrainerSettings, worker_input: WorkerInput, template: WorkerTemplate
) -> GenericNamespacedResource:
    """The TrainJob that trains `worker_input`'s job on spec.resources.nodes pods of the configured runtime.

    The runtime sets the rendezvous (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR...) that a bare
    `torchrun` reads; the pods get the trainer's image, its environment variables (a TrainJob takes no
    envFrom, so the S3 endpoint is passed by value) and the volumes a Job's pod gets.
    """
    resources = PodResources.of(settings, worker_input)
    model_volumes, model_mounts = template.model_volumes(worker_input.base_model_path)
    work_volume, work_mount = _work_volume()
    env = [variable.to_dict() for variable in template.env]
    if settings.s3_endpoint_url:
        env.append({"name": "LORAPLANE_S3_ENDPOINT_URL", "value": settings.s3_endpoint_url})
    labels = {**WORKER_LABELS, JOB_ID_LABEL: worker_input.job_id}
    spec: dict[str, Any] = {
        "runtimeRef": {
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
            "name": settings.kubernetes_trainjob_runtime,
        },
        "trainer": {
            "image": template.image,
            "command": ["torchrun", *_worker_args(worker_input)],
            "numNodes": worker_input.spec.resources.nodes,
            "numProcPerNode": max(resources.gpus, 1),
            "resourcesPerNode": resources.requirements().to_dict(),
            "env": env,
        },
        "labels": labels,
        "podSpecOverrides": [
            {
                "targetJobs": [{"name": TRAINJOB_NODE}],
                "volumes": [volume.to_dict() for volume in (work_volume, *model_volumes)],
                "containers": [
                    {"name": TRAINJOB_NODE, "volumeMounts": [m.to_dict() for m in (work_mount, *model_mounts)]}
                ],
            }
        ],
    }
    metadata = ObjectMeta(
        name=job_name(worker_input.job_id),
        labels=labels,
        annotations={"loraplane.dev/adapter": worker_input.spec.adapter_name},
    )
    return TrainJob(metadata=metadata, spec=spec)


class KubernetesExecutor(Executor):
    def __init__(self, settings: TrainerSettings) -> None:
        super().__init__(settings)
        self._client: AsyncClient | None = None
        self._template: WorkerTemplate | None = None
        self._cancelled: set[str] = set()

    @property
    def _api(self) -> AsyncClient:
        if self._client is None:
            server = self.settings.kubernetes_api_server
            # A bare server URL (kubectl proxy) takes no credentials: an empty user says so.
            config = (
                KubeConfig.from_one(cluster=Cluster(server=server), user=User()) if server else KubeConfig.from_env()
            )
            self._client = AsyncClient(config, namespace=self.settings.kubernetes_namespace or None)
        return self._client

    async def run(self, worker_input: WorkerInput, on_event: EventHandler) -> RunOutcome:
        job_id = worker_input.job_id
        store = open_store(self.settings.store_uri, s3_endpoint_url=self.settings.s3_endpoint_url)
        trainer_stopping = False
        try:
            if await self._worker_job(job_id) is None:
                await asyncio.to_thread(staged_input.stage, store, worker_input, POD_WORK_DIR)
                if job_id not in self._cancelled:  # a cancel while staging: nothing to start
                    manifest = trainjob_manifest if worker_input.spec.resources.multi_node else job_manifest
                    await self._api.create(manifest(self.settings, worker_input, await self._worker_template()))
                if job_id in self._cancelled:  # a cancel before the Job existed found nothing to delete
                    await self._delete(job_id)
            else:
                log.info("job %s: following its Kubernetes Job %s again", job_id, job_name(job_id))
            return await self._follow(job_id, on_event)
        except asyncio.CancelledError:  # the trainer is stopping: the Job runs on, and the next trainer follows it
            trainer_stopping = True
            raise
        except BaseException:  # nobody will follow the Job now: it must not run on and publish unseen
            with contextlib.suppress(Exception):
                await self._delete(job_id)
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
        await self._delete(job_id)  # not created yet: `run` sees the mark and deletes it once it is

    async def _delete(self, job_id: str) -> None:
        """Delete the Job or TrainJob with its pods (which get SIGTERM); nothing if there is none."""
        for kind in (KubeJob, TrainJob):
            try:
                await self._api.delete(kind, job_name(job_id), cascade=CascadeType.BACKGROUND)
            except ApiError as exc:
                if exc.status.code != 404:  # 404 also where Kubeflow Trainer is not installed
                    raise

    async def _worker_template(self) -> WorkerTemplate:
        """From the settings when they name a worker image; else the trainer's own container, read from its
        pod, so a new image or configuration rolled out to the trainer reaches its workers too (kustomize
        gives the ConfigMap a hashed name only the trainer's pod spec knows)."""
        if self._template is not None:
            return self._template
        if self.settings.kubernetes_worker_image:
            self._template = WorkerTemplate.from_settings(self.settings)
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

    async def _worker_job(self, job_id: str) -> WorkerResource | None:
        """The job's Job, or its TrainJob where the settings name a training runtime; None if it has neither."""
        async for job in self._api.list(KubeJob, labels={JOB_ID_LABEL: job_id}):
            return job
        if self.settings.kubernetes_trainjob_runtime:
            async for trainjob in self._api.list(TrainJob, labels={JOB_ID_LABEL: job_id}):
                return trainjob
        return None

    @staticmethod
    def _pod_labels(job_id: str, job: WorkerResource | None) -> dict[str, Any]:
        """The labels of the pod to follow: a Job's one pod, or a TrainJob's first node (its first rank)."""
        if isinstance(job, GenericNamespacedResource):
            return {"jobset.sigs.k8s.io/jobset-name": job_name(job_id), "batch.kubernetes.io/job-completion-index": "0"}
        return {JOB_ID_LABEL: job_id}

    async def _pod(self, job_id: str) -> Pod | RunOutcome:
        """The Job's newest pod once it has left Pending (its log can then be read); or how the job ended
        before that: cancelled, its Job failed or gone, or a pod that can never start (its Job is deleted)."""
        labels = self._pod_labels(job_id, await self._worker_job(job_id))
        while job_id not in self._cancelled:
            pods = [pod async for pod in self._api.list(Pod, labels=labels)]
            if not pods:
                job = await self._worker_job(job_id)
                if job is None:
                    return RunOutcome(exit_code=-1, cancelled=False, log_tail="the worker Job is gone")
                failed = _failed_condition(job)
                if failed:
                    return RunOutcome(exit_code=-1, cancelled=False, log_tail=f"the worker Job failed: {failed}")
            else:
                pod = max(pods, key=_created)  # one pod per Job (backoffLimit 0); the newest, were there more
                stuck = _cannot_start(pod)
                if stuck:
                    await self._delete(job_id)
                    return RunOutcome(exit_code=-1, cancelled=False, log_tail=f"the worker pod cannot start: {stuck}")
                if pod.status is not None and pod.status.phase != "Pending":
                    return pod
            await asyncio.sleep(_POLL_SECONDS)
        return RunOutcome(exit_code=-1, cancelled=True, log_tail="")

    async def _follow(self, job_id: str, on_event: EventHandler) -> RunOutcome:
        """Hand on the pod's events until it ends. A log stream that closes while the container still runs
        is opened again, skipping the lines already read."""
        pod = await self._pod(job_id)
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
