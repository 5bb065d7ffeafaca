"""Assemble the trainer: job store, executor, job service, gRPC server and metrics endpoint."""

from __future__ import annotations

import asyncio
import functools

from loraplane.auth import Role
from loraplane.grpc_server import EndpointsHost, ServiceEndpoints, endpoint_security
from loraplane.proto import trainer_pb2, trainer_pb2_grpc
from loraplane.storage import open_store
from trainer_svc.executors import create_executor
from trainer_svc.intake import DatasetIntake, DatasetLimits
from trainer_svc.job_store import SqliteJobStore
from trainer_svc.metrics import TrainerMetrics
from trainer_svc.service import JobService
from trainer_svc.servicer import TrainerServicer
from trainer_svc.settings import TrainerSettings

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
RPC_ROLES = dict.fromkeys(("CreateJob", "GetJob", "ListJobs", "CancelJob", "WatchJob"), Role.TRAIN)
"""Every call needs train (or admin, which also reads and cancels every caller's jobs)."""


class TrainerServer(EndpointsHost):
    """One trainer instance. Tests start several in a process: nothing here is global."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.store = SqliteJobStore(settings.trainer_db_path)
        self.metrics = TrainerMetrics(self.store)
        self.jobs = JobService(settings, self.store, create_executor(settings), dataset_intake(settings), self.metrics)
        self.endpoints = ServiceEndpoints(
            settings.trainer_address,
            SERVICE_NAME,
            RPC_ROLES,
            endpoint_security(settings),
            settings.trainer_metrics_port,
            self.metrics.registry,
        )
        trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(self.jobs), self.endpoints.server)

    async def start(self) -> None:
        """Listen, queue again what a previous run left unfinished, then report SERVING."""
        await self.endpoints.open()
        await self.jobs.start()
        await self.endpoints.set_serving(True)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls and, meanwhile, the running jobs: their workers save a checkpoint and exit, and
        the jobs are queued again for the next start."""
        await asyncio.gather(self.endpoints.close(grace), self.jobs.stop())
        self.store.close()


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
