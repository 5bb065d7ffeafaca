"""Assemble a serving replica: engine, adapter manager, gRPC server and metrics endpoint."""

from __future__ import annotations

import asyncio
import logging

from loraplane.artifact import ArtifactRepository
from loraplane.auth import Role
from loraplane.captures import CaptureStore
from loraplane.drift import template_frame
from loraplane.drift_statistics import Verdicts
from loraplane.errors import FailedPrecondition, InvalidArgument, StartupError
from loraplane.fingerprint import base_model_fingerprint
from loraplane.grpc_server import EndpointsHost, ServiceEndpoints, endpoint_security, host_of
from loraplane.http_endpoint import HttpEndpoint
from loraplane.proto import serving_pb2, serving_pb2_grpc
from loraplane.redaction import Redactor
from loraplane.releases import ReleaseLog
from loraplane.storage import open_store
from serving_svc.adapters import AdapterManager, AdapterPolicy
from serving_svc.admission import Admission
from serving_svc.capture import CaptureLimits, CaptureWriter
from serving_svc.drift_metrics import DriftCollector
from serving_svc.drift_monitor import DriftMonitor, DriftPolicy
from serving_svc.engine_config import engine_config
from serving_svc.engines import create_engine
from serving_svc.inference import InferenceService, RequestLimits
from serving_svc.metrics import ServingMetrics
from serving_svc.openai_app import create_app
from serving_svc.release_analysis import AnalysisPolicy, ReleaseAnalysis, RollbackCollector
from serving_svc.release_metrics import ReleaseCollector
from serving_svc.releases import ReleaseRouter
from serving_svc.routing_metrics import RoutingCollector
from serving_svc.servicer import InferenceServicer
from serving_svc.settings import ServingSettings
from serving_svc.shadow import ShadowCollector, ShadowRunner

log = logging.getLogger(__name__)

DRIFT_REFRESH_SECONDS = 1.0
SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
RPC_ROLES = {
    "Generate": Role.GENERATE,
    "GenerateStream": Role.GENERATE,
    "Tokenize": Role.GENERATE,
    "ModelInfo": Role.GENERATE,
    "ListAdapters": Role.GENERATE,
    "RecordFeedback": Role.GENERATE,
    "GetAdapterStats": Role.GENERATE,
    "GetRelease": Role.GENERATE,
    "LoadAdapter": Role.ADMIN,
    "UnloadAdapter": Role.ADMIN,
    "UpdateRelease": Role.ADMIN,
    "GetCapturePolicy": Role.ADMIN,
    "UpdateCapturePolicy": Role.ADMIN,
    "ExportCaptures": Role.ADMIN,
}
"""The role each call needs besides admin, which may call them all; the HTTP API needs generate."""


class ServingServer(EndpointsHost):
    """One replica. Tests start several in a process: nothing here is global."""

    def __init__(self, settings: ServingSettings) -> None:
        self.base_model_name = settings.base_model_name
        self.metrics = ServingMetrics(settings.metrics_adapter_labels)
        self.engine = create_engine(engine_config(settings), settings.serving_engine, self.metrics.engine_step)
        self.metrics.watch_engine(self.engine.stats)
        repository = ArtifactRepository(open_store(settings.store_uri, s3_endpoint_url=settings.s3_endpoint_url))
        self.adapters = self._adapter_manager(settings, repository)
        self.releases = ReleaseRouter(ReleaseLog(repository), settings.adapter_resolve_ttl_seconds)
        security = endpoint_security(settings)
        self.endpoints = ServiceEndpoints(
            settings.serving_address,
            SERVICE_NAME,
            RPC_ROLES,
            security,
            settings.serving_metrics_port,
            self.metrics.registry,
        )
        self.admission = Admission(
            settings.max_concurrent_requests, settings.max_queued_requests, settings.max_requests_per_caller
        )
        self._register_routing_metrics(settings)
        self.metrics.registry.register(ReleaseCollector(self.releases, self.metrics.owns_label))
        self.drift = self._drift_monitor(settings)
        self.shadow = ShadowRunner(
            self.engine,
            self.adapters,
            self.drift,
            self.admission,
            max_in_flight=settings.shadow_max_in_flight,
            batch_capacity=settings.max_batch_size,
        )
        self.metrics.registry.register(ShadowCollector(self.shadow, self.metrics.owns_label))
        self.analysis = ReleaseAnalysis(
            self.releases,
            self.shadow,
            self.drift,
            AnalysisPolicy(
                margins=settings.release_margins,
                min_requests=settings.release_min_requests,
                min_seconds=settings.release_min_seconds,
                automatic=settings.release_automatic,
            ),
        )
        self.metrics.registry.register(RollbackCollector(self.analysis, self.metrics.owns_label))
        self._release_check_seconds = settings.release_check_seconds
        self._release_checker: asyncio.Task[None] | None = None
        self._drift_refresher: asyncio.Task[None] | None = None
        self.capture = CaptureWriter(
            CaptureStore(repository.store),
            self._redactor(settings),
            self.metrics,
            CaptureLimits(
                queue_records=settings.capture_queue_records,
                flush_seconds=settings.capture_flush_seconds,
                pause_seconds=settings.capture_pause_seconds,
                policy_ttl_seconds=settings.adapter_resolve_ttl_seconds,
            ),
        )
        self._capture_writer: asyncio.Task[None] | None = None
        self.inference = InferenceService(
            self.engine,
            self.adapters,
            self.metrics,
            self.admission,
            self.drift,
            self.releases,
            self.shadow,
            self.analysis,
            self.capture,
            limits=RequestLimits(
                default_max_tokens=settings.default_max_tokens,
                max_tokens=settings.max_tokens_limit,
                max_prompt_tokens=settings.max_prompt_tokens,
            ),
        )
        serving_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(self.inference), self.endpoints.server)
        self.http = HttpEndpoint(
            create_app(
                self.inference,
                settings.base_model_name,
                self.metrics.registry,
                security.authenticator,
                max_body_bytes=security.max_message_bytes,
            ),
            host_of(settings.serving_address),
            settings.serving_http_port,
            setting="LORAPLANE_SERVING_HTTP_PORT",
            tls=security.tls,
        )

    def _adapter_manager(self, settings: ServingSettings, repository: ArtifactRepository) -> AdapterManager:
        try:
            fingerprint = base_model_fingerprint(settings.base_model)
        except FailedPrecondition as exc:
            raise StartupError(f"{exc}, or set LORAPLANE_BASE_MODEL to one") from None
        policy = AdapterPolicy(
            base_model_name=settings.base_model_name,
            base_model_fingerprint=fingerprint,
            max_loaded=settings.max_loaded_adapters,
            max_rank=settings.max_lora_rank,
            resolve_ttl_seconds=settings.adapter_resolve_ttl_seconds,
            max_cache_bytes=settings.adapter_cache_max_bytes,
            max_cpu=self._host_tier_size(settings.max_cpu_adapters),
        )
        return AdapterManager(repository, self.engine, settings.adapter_cache_dir, policy, self.metrics)

    @staticmethod
    def _redactor(settings: ServingSettings) -> Redactor:
        try:
            return Redactor(settings.capture_redaction_patterns, settings.capture_redaction_hook)
        except InvalidArgument as exc:
            message = f"{exc}: fix LORAPLANE_CAPTURE_REDACTION_PATTERNS or LORAPLANE_CAPTURE_REDACTION_HOOK"
            raise StartupError(message) from None

    def _register_routing_metrics(self, settings: ServingSettings) -> None:
        """Export the load figures an inference gateway picks a replica by, under vLLM's names."""
        self.metrics.registry.register(
            RoutingCollector(
                engine_stats=self.engine.stats,
                queued=lambda: self.admission.queued,
                running_adapters=self.adapters.loaded,
                waiting_adapters=self.adapters.waiting,
                newest_version=self.adapters.newest_version,
                max_lora=settings.max_loaded_adapters,
                max_batch_size=settings.max_batch_size,
            )
        )

    def _host_tier_size(self, max_cpu_adapters: int) -> int:
        """How many offloaded adapters this replica keeps in host memory: none where the engine cannot."""
        if max_cpu_adapters and not self.engine.keeps_host_copies:
            log.warning(
                "the %s engine keeps no adapters in host memory here, so LORAPLANE_MAX_CPU_ADAPTERS=%d is "
                "ignored: an adapter leaving the engine is removed, and loading it again reads its files",
                self.engine.name,
                max_cpu_adapters,
            )
            return 0
        return max_cpu_adapters

    def _drift_monitor(self, settings: ServingSettings) -> DriftMonitor | None:
        if not settings.drift_monitoring:
            return None
        monitor = DriftMonitor(
            DriftPolicy(
                window_requests=settings.drift_window_requests,
                window_seconds=settings.drift_window_seconds,
                min_samples=settings.drift_min_samples,
                prompt_scoring_fraction=settings.drift_prompt_scoring_fraction,
                verdicts=Verdicts(settings.drift_false_alarm_rate, settings.drift_thresholds),
                feedback_score_floor=settings.feedback_score_floor,
            ),
            prompt_frame=lambda: template_frame(self.engine.tokenizer),
        )
        self.metrics.registry.register(DriftCollector(monitor, self.metrics.owns_label))
        return monitor

    async def start(self) -> None:
        """Listen at once (health says NOT_SERVING), load the base model, then report SERVING."""
        await self.endpoints.open()
        try:
            await self.engine.start()
        except BaseException:
            await self.stop(0)
            raise
        if self.drift is not None:
            self._drift_refresher = asyncio.create_task(self._refresh_drift(self.drift))
        self._release_checker = asyncio.create_task(self._check_releases())
        self._capture_writer = asyncio.create_task(self.capture.run())
        await self.http.start()
        await self.endpoints.set_serving(True)
        log.info(
            "serving %s with the %s engine; gRPC on port %d, OpenAI-compatible HTTP on port %d",
            self.base_model_name,
            self.engine.name,
            self.port,
            self.http.port,
        )

    @staticmethod
    async def _refresh_drift(monitor: DriftMonitor) -> None:
        """Fold recorded requests into the drift windows every second, on a worker thread."""
        while True:
            await asyncio.sleep(DRIFT_REFRESH_SECONDS)
            await asyncio.to_thread(monitor.refresh)

    async def _check_releases(self) -> None:
        """Judge the candidates this replica routes to, and promote or roll back those the figures decide."""
        while True:
            await asyncio.sleep(self._release_check_seconds)
            try:
                await self.analysis.decide()
            except Exception:  # a failed check must not end the checking: the next one may succeed
                log.exception("the release check failed")

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let calls in flight finish for `grace` seconds, then release the engine."""
        await asyncio.gather(self.endpoints.close(grace), self.http.stop())
        for task in (self._drift_refresher, self._release_checker):
            if task is not None:
                task.cancel()
        if self._capture_writer is not None:  # what is captured by now is written before the replica goes
            self._capture_writer.cancel()
            await asyncio.gather(self._capture_writer, return_exceptions=True)
        await self.shadow.close()
        await self.engine.close()


def create_server(settings: ServingSettings) -> ServingServer:
    return ServingServer(settings)
