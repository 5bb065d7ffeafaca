"""Assemble the trainer: job store, executor, job service, gRPC server and metrics endpoint."""

from __future__ import annotations

from loraplane.grpc_server import GrpcServer, MetricsEndpoint, build_grpc_server, start_metrics_endpoint
from loraplane.proto import trainer_pb2, trainer_pb2_grpc
from trainer_svc.executors import create_executor
from trainer_svc.job_store import SqliteJobStore
from trainer_svc.metrics import TrainerMetrics
from trainer_svc.service import JobService
from trainer_svc.servicer import TrainerServicer
from trainer_svc.settings import TrainerSettings


class TrainerServer:
    """One trainer instance. Tests start several in a process: nothing here is global."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.store = SqliteJobStore(settings.trainer_db_path)
        self.metrics = TrainerMetrics(self.store)
        self.jobs = JobService(settings, self.store, create_executor(settings), self.metrics)
        self.grpc: GrpcServer = build_grpc_server(
            settings.trainer_address, [trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name]
        )
        trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(self.jobs), self.grpc.server)
        self.metrics_endpoint: MetricsEndpoint | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def metrics_port(self) -> int:
        assert self.metrics_endpoint is not None, "start() the server first"
        return self.metrics_endpoint.port

    async def start(self) -> None:
        await self.grpc.set_serving(False)
        self.metrics_endpoint = start_metrics_endpoint(self.settings.trainer_metrics_port, self.metrics.registry)
        await self.grpc.server.start()
        await self.jobs.start()
        await self.grpc.set_serving(True)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, stop the runners (their workers are killed; jobs re-run on restart)."""
        await self.grpc.stop(grace)
        await self.jobs.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        self.store.close()


def create_server(settings: TrainerSettings) -> TrainerServer:
    return TrainerServer(settings)
