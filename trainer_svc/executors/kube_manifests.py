"""The Kubernetes objects a training job's worker runs as, built from the job alone: pure functions.

One `batch/v1` Job per training job, running the same worker entry point in the same image. Its
input travels through the store (`staged_input.py`), so the pod mounts no folder of the trainer's
but the volume its base model is on. Jobs carry the training job's id as a label, by which a
trainer that restarts finds them again (`kube_pods.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

from trainer_svc.executors.config import KubernetesConfig, PodDefaults, WorkerImage
from trainer_svc.worker_input import WorkerInput

JOB_ID_LABEL = "loraplane.dev/job-id"
WORKER_LABELS = {
    "app.kubernetes.io/name": "loraplane-worker",
    "app.kubernetes.io/part-of": "loraplane",
    "app.kubernetes.io/managed-by": "loraplane-trainer",
}
POD_WORK_DIR = Path("/var/lib/loraplane/job")
"""Where a worker pod keeps its input, checkpoints and adapter: an emptyDir, gone with the pod."""


def job_name(job_id: str) -> str:
    return f"loraplane-{job_id}"


def worker_labels(job_id: str) -> dict[str, str]:
    return {**WORKER_LABELS, JOB_ID_LABEL: job_id}


def worker_metadata(worker_input: WorkerInput) -> ObjectMeta:
    """The name, labels and annotations of the Job or TrainJob of `worker_input`'s job."""
    return ObjectMeta(
        name=job_name(worker_input.job_id),
        labels=worker_labels(worker_input.job_id),
        annotations={"loraplane.dev/adapter": worker_input.spec.adapter_name},
    )


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
    def from_image(cls, worker: WorkerImage) -> WorkerTemplate:
        """For a trainer outside the cluster (or one that pins the worker image): the names its settings give."""
        env = [
            EnvVar(
                name=variable, valueFrom=EnvVarSource(secretKeyRef=SecretKeySelector(name=worker.s3_secret, key=key))
            )
            for variable, key in (
                ("AWS_ACCESS_KEY_ID", "access-key-id"),
                ("AWS_SECRET_ACCESS_KEY", "secret-access-key"),
            )
            if worker.s3_secret
        ]
        config_map = EnvFromSource(configMapRef=ConfigMapEnvSource(name=worker.config_map))
        return cls(image=worker.image, env_from=[config_map], env=env)


@dataclass(frozen=True)
class PodResources:
    """What each worker pod asks for: the job's own requests, else the trainer's defaults."""

    cpu: str
    memory: str
    gpus: int

    @classmethod
    def of(cls, defaults: PodDefaults, worker_input: WorkerInput) -> PodResources:
        asked = worker_input.spec.resources
        return cls(
            cpu=asked.cpu or defaults.cpu,
            memory=asked.memory or defaults.memory,
            gpus=asked.gpus if asked.gpus is not None else defaults.gpus,
        )

    def requirements(self) -> ResourceRequirements:
        limits = {"memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        return ResourceRequirements(requests={"cpu": self.cpu, "memory": self.memory}, limits=limits)


def worker_args(worker_input: WorkerInput) -> list[str]:
    """The worker's arguments after its launcher: it fetches the input staged for its job from the store."""
    return ["-m", "trainer_svc.worker", "--from-store", worker_input.store_uri, worker_input.job_id]


def work_volume() -> tuple[Volume, VolumeMount]:
    return Volume(name="work", emptyDir=EmptyDirVolumeSource()), VolumeMount(name="work", mountPath=str(POD_WORK_DIR))


def job_manifest(config: KubernetesConfig, worker_input: WorkerInput, template: WorkerTemplate) -> KubeJob:
    """The Job that trains `worker_input`'s job: the worker fetches its staged input from the store."""
    resources = PodResources.of(config.pods, worker_input)
    model_volumes, model_mounts = template.model_volumes(worker_input.base_model_path)
    volume, mount = work_volume()
    worker = Container(
        name="worker",
        image=template.image,
        command=[*_launcher(resources.gpus), *worker_args(worker_input)],
        envFrom=template.env_from,
        env=template.env,
        resources=resources.requirements(),
        volumeMounts=[mount, *model_mounts],
        securityContext=SecurityContext(allowPrivilegeEscalation=False, runAsNonRoot=True),
    )
    return KubeJob(
        metadata=worker_metadata(worker_input),
        spec=KubeJobSpec(
            # No retried pods: a retry would start over from nothing (checkpoints live in the pod), and the
            # trainer follows one pod per job; a job that fails is failed with the pod's reason.
            backoffLimit=0,
            activeDeadlineSeconds=config.pods.deadline_seconds,
            ttlSecondsAfterFinished=config.pods.ttl_seconds,
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=worker_labels(worker_input.job_id)),
                spec=PodSpec(restartPolicy="Never", containers=[worker], volumes=[volume, *model_volumes]),
            ),
        ),
    )
