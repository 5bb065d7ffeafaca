"""What each executor reads, as small frozen values: built from the settings once, at the entry point.

An executor sees only the values it acts on, so a test builds one from a handful of fields and a
new setting reaches only the executor that uses it. No lightkube here: the trainer builds the
Kubernetes values without loading the client unless it runs that executor.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplane.errors import FailedPrecondition, InvalidArgument
from trainer_svc.spec import WorkerResources


@dataclass(frozen=True)
class ExecutorCapabilities:
    """What an executor can give a job beyond running its worker; the job service refuses a spec that
    asks for more, so adding an executor needs no change there."""

    per_job_resources: bool
    """A job may name its own CPU, memory and GPUs (spec.resources)."""
    multi_node: bool
    """A job may train on several nodes (spec.resources.nodes > 1)."""

    def check(self, resources: WorkerResources) -> None:
        """Refuse what a job asks for that the executor cannot give, naming what would give it."""
        if resources.requested and not self.per_job_resources:
            raise InvalidArgument(
                "this trainer runs every worker alike (on its own machine), so a job cannot ask for resources; "
                "leave spec.resources empty, or send the job to a trainer that runs Kubernetes Jobs",
                field="spec.resources",
            )
        if resources.multi_node and not self.multi_node:
            raise FailedPrecondition(
                "this trainer has no Kubeflow Trainer runtime for jobs on several nodes; ask for one node (with "
                "several GPUs), or set LORAPLANE_KUBERNETES_TRAINJOB_RUNTIME where the operator is installed",
                field="spec.resources.nodes",
            )


@dataclass(frozen=True)
class LocalConfig:
    """The grace periods of a local worker, a child process of the trainer."""

    cancel_grace_seconds: float
    """SIGTERM to SIGKILL on cancel."""
    stop_grace_seconds: float
    """The trainer's preemption signal to SIGKILL when the trainer stops: the time to save a checkpoint."""


@dataclass(frozen=True)
class PodDefaults:
    """What each worker pod gets where its job asks for nothing, and how long Kubernetes keeps its Job."""

    cpu: str
    memory: str
    gpus: int
    deadline_seconds: int
    """activeDeadlineSeconds: past it, Kubernetes stops the job."""
    ttl_seconds: int
    """ttlSecondsAfterFinished: how long a finished Job and its pod's log stay for inspection."""


@dataclass(frozen=True)
class WorkerImage:
    """The image and configuration worker pods run when the settings pin them; image "" = the trainer's own,
    read from its pod (the ConfigMap and Secret named here then go unused)."""

    image: str
    config_map: str
    s3_secret: str
    """The Secret with the S3 keys; "" = none."""


@dataclass(frozen=True)
class KubernetesConfig:
    """Where the Kubernetes executor sends worker Jobs and what they look like."""

    api_server: str
    """"" = the cluster the trainer runs in (or KUBECONFIG); a URL = that server, without credentials."""
    namespace: str
    """"" = the trainer's own."""
    store_uri: str
    """The store a worker pod fetches its staged input from and publishes to: one it reaches."""
    s3_endpoint_url: str | None
    worker: WorkerImage
    pods: PodDefaults
    trainjob_runtime: str
    """The Kubeflow Trainer ClusterTrainingRuntime of multi-node jobs; "" = none (such jobs are refused)."""
