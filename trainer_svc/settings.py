"""The trainer's settings: `LORAPLANE_*` environment variables, read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from loraplane.errors import InvalidArgument
from loraplane.settings import CommonSettings


class TrainerSettings(CommonSettings):
    trainer_address: str = Field("127.0.0.1:50051", description="gRPC listen address; port 0 picks a free one.")
    trainer_metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus /metrics port; 0 = free.")
    trainer_http_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="HTTP API port (retraining, and Alertmanager's webhook at /v1/alerts) on the gRPC address's "
        "host; 0 = free.",
    )
    trainer_db_path: Path = Field(Path(""), description="SQLite job store. Default: {data_dir}/trainer/jobs.sqlite3.")
    trainer_work_dir: Path = Field(Path(""), description="Per-job scratch folders. Default: {data_dir}/trainer/jobs.")
    trainer_executor: Literal["local", "kubernetes"] = Field(
        "local",
        description="Where workers run: child processes here (local), or one Kubernetes Job per training job "
        "(kubernetes; the kubernetes_* settings).",
    )
    trainer_max_concurrent_jobs: int = Field(1, ge=1, le=64, description="Jobs trained at once.")
    trainer_base_models: dict[str, Path] = Field(
        default_factory=dict,
        description="More base models jobs may name, as JSON {name: folder}; base_model is always offered.",
    )
    trainer_max_dataset_bytes: int = Field(64 << 20, ge=1024, description="Largest dataset accepted.")
    trainer_dataset_prefixes: list[str] = Field(
        default_factory=lambda: ["datasets/"],
        description="Where in the store a job's dataset URI may point, as JSON key prefixes; adapters and "
        "anything else in the store stay out of reach.",
    )
    trainer_max_dataset_rows: int = Field(
        1_000_000, ge=1, description="Most lines (examples) a dataset may have; more gets INVALID_ARGUMENT."
    )
    trainer_max_unfinished_jobs_per_caller: int = Field(
        16,
        ge=1,
        description="Jobs one token may have validating, queued or running; past this its CreateJob gets "
        "RESOURCE_EXHAUSTED. With auth off there is no such limit.",
    )
    trainer_cancel_grace_seconds: float = Field(10.0, ge=0, description="SIGTERM to SIGKILL delay on cancel.")
    trainer_stop_grace_seconds: float = Field(
        20.0,
        ge=0,
        description="When the trainer stops (SIGTERM), how long its local workers get to save a checkpoint at "
        "their current step before they are killed; their jobs are queued again and resume from it.",
    )
    kubernetes_api_server: str = Field(
        "",
        description="The Kubernetes API the kubernetes executor talks to: empty = the cluster the trainer runs "
        "in (its service account), else KUBECONFIG or ~/.kube/config; a URL = that server, without credentials "
        "(kubectl proxy).",
    )
    kubernetes_namespace: str = Field("", description="Where worker Jobs go; empty = the trainer's own namespace.")
    kubernetes_worker_image: str = Field(
        "",
        description="The image worker Jobs run; empty = the trainer's own, read from its pod, so both run the "
        "same code.",
    )
    kubernetes_worker_cpu: str = Field("2", description="CPU each worker pod requests.")
    kubernetes_worker_memory: str = Field("8Gi", description="Memory each worker pod requests (and may use).")
    kubernetes_worker_gpus: int = Field(0, ge=0, le=16, description="nvidia.com/gpu each worker pod asks for.")
    kubernetes_trainjob_runtime: str = Field(
        "",
        description="The Kubeflow Trainer ClusterTrainingRuntime that multi-node jobs (spec.resources.nodes > 1) "
        "run on as TrainJobs, e.g. torch-distributed; empty = the cluster has no Kubeflow Trainer, and such "
        "jobs are refused.",
    )
    kubernetes_job_deadline_seconds: int = Field(
        86_400, ge=60, description="activeDeadlineSeconds of a worker Job: past it, Kubernetes stops the job."
    )
    kubernetes_job_ttl_seconds: int = Field(
        3600, ge=0, description="How long a finished worker Job (and its pod's log) stays for inspection."
    )
    kubernetes_config_map: str = Field(
        "loraplane-config",
        description="With kubernetes_worker_image set: the ConfigMap whose LORAPLANE_* variables worker pods get. "
        "Otherwise workers get the trainer pod's own environment.",
    )
    kubernetes_s3_secret: str = Field(
        "loraplane-s3",
        description="With kubernetes_worker_image set: the Secret with the S3 keys (access-key-id, "
        "secret-access-key) worker pods get; empty = none.",
    )

    @model_validator(mode="after")
    def _fill_trainer_paths(self) -> TrainerSettings:
        if self.trainer_db_path == Path(""):
            self.trainer_db_path = self.data_dir / "trainer" / "jobs.sqlite3"
        if self.trainer_work_dir == Path(""):
            self.trainer_work_dir = self.data_dir / "trainer" / "jobs"
        return self

    @property
    def offered_base_models(self) -> dict[str, Path]:
        return {self.base_model_name: self.base_model, **self.trainer_base_models}

    def base_model_path(self, name: str) -> Path:
        """The folder of the base model a job names ('' = the default); InvalidArgument if not offered."""
        offered = self.offered_base_models
        if not name:
            return self.base_model
        if name not in offered:
            raise InvalidArgument(
                f"base model {name!r} is not offered here; choose one of {sorted(offered)}",
                field="spec.base_model",
            )
        return offered[name]
