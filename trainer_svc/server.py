"""Assemble the trainer: job store, executor, job service, retrainer, gRPC and HTTP servers, metrics endpoint."""

from __future__ import annotations

import asyncio
import functools

from loraplane.artifact import ArtifactRepository
from loraplane.auth import Role
from loraplane.grpc_server import EndpointsHost, ServiceEndpoints, endpoint_security, host_of
from loraplane.http_endpoint import HttpEndpoint
from loraplane.proto import trainer_pb2, trainer_pb2_grpc
from loraplane.storage import open_store
from trainer_svc.admission import JobAdmission
from trainer_svc.executors import Executor, create_executor
from trainer_svc.http_app import create_app
from trainer_svc.intake import DatasetIntake, DatasetLimits
from trainer_svc.job_store import JobStore, SqliteJobStore
from trainer_svc.metrics import TrainerMetrics
from trainer_svc.parent import ParentVersions
from trainer_svc.retrain import Retrainer
from trainer_svc.service import JobRuns, JobService
from trainer_svc.servicer import TrainerServicer
from trainer_svc.settings import TrainerSettings

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
RPC_ROLES = {
    **dict.fromkeys(
        ("CreateJob", "GetJob", "ListJobs", "CancelJob", "WatchJob", "Retrain", "GetRetrainPolicy"), Role.TRAIN
    ),
    "UpdateRetrainPolicy": Role.ADMIN,
}
"""Every call needs train (or admin, which also reads and cancels every caller's jobs); only an admin decides
whether alerts retrain an adapter."""


class TrainerServer(EndpointsHost):
    """One trainer instance. Tests start several in a process: nothing here is global."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.store = SqliteJobStore(settings.trainer_db_path)
        self.metrics = TrainerMetrics(self.store)
        self.jobs = job_service(settings, self.store, create_executor(settings), self.metrics)
        self.retrainer = Retrainer(self.jobs, functools.partial(artifact_repository, settings), self.metrics)
        security = endpoint_security(settings)
        self.endpoints = ServiceEndpoints(
            settings.trainer_address,
            SERVICE_NAME,
            RPC_ROLES,
            security,
            settings.trainer_metrics_port,
            self.metrics.registry,
        )
        servicer = TrainerServicer(self.jobs, self.retrainer)
        trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, self.endpoints.server)
        self.http = HttpEndpoint(
            create_app(self.retrainer, security.authenticator, max_body_bytes=security.max_message_bytes),
            host_of(settings.trainer_address),
            settings.trainer_http_port,
            setting="LORAPLANE_TRAINER_HTTP_PORT",
            tls=security.tls,
        )

    async def start(self) -> None:
        """Listen, queue again what a previous run left unfinished, then report SERVING."""
        await self.endpoints.open()
        await self.jobs.start()
        await self.http.start()
        await self.endpoints.set_serving(True)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls and, meanwhile, the running jobs: their workers save a checkpoint and exit, and
        the jobs are queued again for the next start."""
        await asyncio.gather(self.endpoints.close(grace), self.http.stop(), self.jobs.stop())
        self.store.close()


def job_service(settings: TrainerSettings, store: JobStore, executor: Executor, metrics: TrainerMetrics) -> JobService:
    """The job service over `store` and `executor`, each of its parts given the settings' values it uses."""
    admission = JobAdmission(
        store,
        executor.capabilities,
        base_model_path=settings.base_model_path,
        default_base_model=settings.base_model_name,
        max_unfinished_per_caller=settings.trainer_max_unfinished_jobs_per_caller,
        parents=ParentVersions(functools.partial(artifact_repository, settings), settings.base_model_path),
    )
    runs = JobRuns(
        work_dir=settings.trainer_work_dir,
        max_concurrent=settings.trainer_max_concurrent_jobs,
        base_model_path=settings.base_model_path,
        store_uri=settings.store_uri,
        s3_endpoint_url=settings.s3_endpoint_url,
    )
    return JobService(runs, store, executor, admission, dataset_intake(settings), metrics)


def artifact_repository(settings: TrainerSettings) -> ArtifactRepository:
    """The versions in the trainer's store: where jobs publish, parents and retraining policies are read."""
    return ArtifactRepository(open_store(settings.store_uri, s3_endpoint_url=settings.s3_endpoint_url))


def dataset_intake(settings: TrainerSettings) -> DatasetIntake:
    """The intake of the datasets jobs send, within the settings' limits, reading from the trainer's store."""
    limits = DatasetLimits(
        max_bytes=settings.trainer_max_dataset_bytes,
        max_rows=settings.trainer_max_dataset_rows,
        store_prefixes=tuple(settings.trainer_dataset_prefixes),
    )
    return DatasetIntake(
        limits, functools.partial(open_store, settings.store_uri, s3_endpoint_url=settings.s3_endpoint_url)
    )


def create_server(settings: TrainerSettings) -> TrainerServer:
    return TrainerServer(settings)
