"""Assemble a serving replica: engine, adapter manager, gRPC server and metrics endpoint."""

from __future__ import annotations

import logging

from loraplane.artifact import ArtifactRepository
from loraplane.fingerprint import base_model_fingerprint
from loraplane.grpc_server import GrpcServer, MetricsEndpoint, build_grpc_server, start_metrics_endpoint
from loraplane.proto import serving_pb2, serving_pb2_grpc
from loraplane.storage import open_store
from serving_svc.adapters import AdapterManager, AdapterPolicy
from serving_svc.engines import create_engine
from serving_svc.metrics import ServingMetrics
from serving_svc.servicer import InferenceServicer
from serving_svc.settings import ServingSettings

log = logging.getLogger(__name__)

SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


def _host(address: str) -> str:
    """The host part of host:port ("[::]:50052" -> "::"), where the metrics endpoint listens too."""
    return address.rsplit(":", 1)[0].strip("[]")


class ServingServer:
    """One replica. Tests start several in a process: nothing here is global."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.engine = create_engine(settings)
        policy = AdapterPolicy(
            base_model_name=settings.base_model_name,
            base_model_fingerprint=base_model_fingerprint(settings.base_model),
            max_loaded=settings.max_loaded_adapters,
            max_rank=settings.max_lora_rank,
            resolve_ttl_seconds=settings.adapter_resolve_ttl_seconds,
        )
        repository = ArtifactRepository(open_store(settings.store_uri, s3_endpoint_url=settings.s3_endpoint_url))
        self.adapters = AdapterManager(repository, self.engine, settings.adapter_cache_dir, policy, self.metrics)
        self.grpc: GrpcServer = build_grpc_server(settings.serving_address, [SERVICE_NAME])
        servicer = InferenceServicer(
            self.engine, self.adapters, self.metrics, default_max_tokens=settings.default_max_tokens
        )
        serving_pb2_grpc.add_InferenceServicer_to_server(servicer, self.grpc.server)
        self.port = self.grpc.port
        self.metrics_endpoint: MetricsEndpoint | None = None

    @property
    def metrics_port(self) -> int:
        assert self.metrics_endpoint is not None, "start() the server first"
        return self.metrics_endpoint.port

    async def start(self) -> None:
        """Listen at once (health says NOT_SERVING), load the base model, then report SERVING."""
        # grpc's health servicer starts out SERVING; a probe must not see that before the model loads.
        await self.grpc.set_serving(False)
        self.metrics_endpoint = start_metrics_endpoint(
            self.settings.serving_metrics_port,
            self.metrics.registry,
            host=_host(self.settings.serving_address),
        )
        await self.grpc.server.start()
        try:
            await self.engine.start()
        except BaseException:
            await self.stop(0)
            raise
        await self.grpc.set_serving(True)
        log.info("serving %s with the %s engine", self.settings.base_model_name, self.engine.name)

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let calls in flight finish for `grace` seconds, then release the engine."""
        await self.grpc.stop(grace)
        await self.engine.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None


def create_server(settings: ServingSettings) -> ServingServer:
    return ServingServer(settings)
