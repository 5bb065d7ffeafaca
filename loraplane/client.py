"""Typed Python client for both services, shaped like the OpenAI SDK's fine-tuning resources.

    client = LoraplaneClient()
    job = client.jobs.create(adapter_name="acme", training_file=Path("train.jsonl"),
                             training=TrainingParameters(max_steps=100))
    for event in client.jobs.watch(job.id): print(event.job.state, event.message)
    print(client.inference.generate("Hello", adapter="acme").text)

Calls take and return the typed objects of `loraplane.types` (`Job`, `JobEvent`, `Completion`,
`Adapter`, ...); each returned object keeps its protobuf message in `.proto`. Failed calls raise the
typed errors of `loraplane.errors` (NotFound, InvalidArgument, ...), with the offending request field
in `.field`.

Like the OpenAI SDK with OPENAI_API_KEY, the client reads its token from LORAPLANE_TOKEN unless
given one, and TLS files from LORAPLANE_CLIENT_CA_FILE, LORAPLANE_CLIENT_CERT_FILE and
LORAPLANE_CLIENT_KEY_FILE (any of them set = TLS) unless given a `ClientTls`.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loraplane import convert, wire
from loraplane.captures import Capture, CapturePolicy
from loraplane.grpc_errors import from_rpc_error
from loraplane.proto import common_pb2, serving_pb2, serving_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from loraplane.releases import ReleaseAction, ReleaseMode
from loraplane.training import JobState, Method, PromptFormatChoice
from loraplane.types import (
    Adapter,
    AdapterStats,
    CaptureSource,
    Completion,
    CompletionChunk,
    DpoParameters,
    Job,
    JobEvent,
    LoraParameters,
    ModelInfo,
    Release,
    ReleaseOnSuccess,
    Retrain,
    RetrainPolicy,
    SamplingParameters,
    TrainingParameters,
    WorkerResources,
)

DEFAULT_TRAINER_TARGET = "127.0.0.1:50051"
DEFAULT_SERVING_TARGET = "127.0.0.1:50052"
MAX_MESSAGE_BYTES = 64 << 20

ServiceName = Literal["trainer", "serving"]

P = ParamSpec("P")
R = TypeVar("R")


def _typed_errors(call: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return wrapper


def _stream_typed_errors(call: Callable[P, Iterator[R]]) -> Callable[P, Iterator[R]]:
    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        try:
            yield from call(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return wrapper


@dataclass(frozen=True)
class ClientTls:
    """How to check the server (ca_file; None = the system's CAs) and, for mutual TLS, who we are."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_environment(cls) -> ClientTls | None:
        files = {
            field: Path(os.environ[variable])
            for field, variable in (
                ("ca_file", "LORAPLANE_CLIENT_CA_FILE"),
                ("cert_file", "LORAPLANE_CLIENT_CERT_FILE"),
                ("key_file", "LORAPLANE_CLIENT_KEY_FILE"),
            )
            if os.environ.get(variable)
        }
        return cls(**files) if files else None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every call (on a plain or a TLS channel alike)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._with_token(client_call_details), request)


def _channel(target: str, token: str | None, tls: ClientTls | None) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    channel = (
        grpc.secure_channel(target, tls.credentials(), options=options)
        if tls is not None
        else grpc.insecure_channel(target, options=options)
    )
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel


class Jobs:
    """Fine-tuning jobs on the trainer."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = trainer_pb2_grpc.TrainerStub(channel)

    @_typed_errors
    def create(
        self,
        *,
        adapter_name: str,
        training_file: Path | None = None,
        training_uri: str | None = None,
        training_captures: CaptureSource | None = None,
        validation_file: Path | None = None,
        test_file: Path | None = None,
        base_model: str = "",
        method: Method = Method.LORA,
        prompt_format: PromptFormatChoice = "auto",
        lora: LoraParameters | None = None,
        training: TrainingParameters | None = None,
        dpo: DpoParameters | None = None,
        resources: WorkerResources | None = None,
        labels: dict[str, str] | None = None,
        refuse_leakage: bool = False,
        release: ReleaseOnSuccess | None = None,
        parent: str = "",
        request_id: str | None = None,
    ) -> Job:
        """Submit a job. A retry with the same request_id returns the first job, not a second. With
        `release`, the version it publishes starts as its adapter's release candidate; with `parent`
        (`name@vN`), it continues training that version instead of a fresh adapter."""
        if [training_file, training_uri, training_captures].count(None) != 2:
            raise ValueError("give exactly one of training_file, training_uri or training_captures")
        if training_file is not None:
            training_data = trainer_pb2.Dataset(inline_jsonl=training_file.read_text())
        elif training_captures is not None:
            training_data = trainer_pb2.Dataset(captures=convert.capture_source(training_captures))
        else:
            training_data = trainer_pb2.Dataset(uri=training_uri or "")
        spec = trainer_pb2.JobSpec(
            base_model=base_model,
            adapter_name=adapter_name,
            training_data=training_data,
            validation_data=(
                trainer_pb2.Dataset(inline_jsonl=validation_file.read_text()) if validation_file else None
            ),
            test_data=trainer_pb2.Dataset(inline_jsonl=test_file.read_text()) if test_file else None,
            refuse_leakage=refuse_leakage,
            method=wire.METHOD.encode(method),
            prompt_format=wire.PROMPT_FORMAT.encode(prompt_format),
            lora=convert.lora_parameters(lora) if lora is not None else None,
            training=convert.training_parameters(training) if training is not None else None,
            dpo=convert.dpo_parameters(dpo) if dpo is not None else None,
            resources=convert.worker_resources(resources) if resources is not None else None,
            labels=labels or {},
            release=convert.release_on_success(release) if release is not None else None,
            parent=parent,
        )
        request = trainer_pb2.CreateJobRequest(spec=spec, request_id=request_id or uuid.uuid4().hex)
        return convert.job(self._stub.CreateJob(request))

    @_typed_errors
    def retrieve(self, job_id: str) -> Job:
        return convert.job(self._stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id)))

    @_stream_typed_errors
    def list(self, *, state: JobState | None = None, adapter_name: str = "", page_size: int = 20) -> Iterator[Job]:
        """Every matching job (in `state`, when given), newest first, fetching pages as the iteration goes."""
        state_value = wire.JOB_STATE.encode_optional(state)
        token = ""
        while True:
            page = self._stub.ListJobs(
                trainer_pb2.ListJobsRequest(
                    page_size=page_size, page_token=token, state=state_value, adapter_name=adapter_name
                )
            )
            yield from (convert.job(job) for job in page.jobs)
            token = page.next_page_token
            if not token:
                return

    @_typed_errors
    def retrain(self, adapter: str, *, since: datetime | None = None) -> Retrain:
        """Start a retrain job of `adapter`: it continues the version that answers the name on the adapter's
        captures since `since` (default: since that version was published); FailedPrecondition while one
        is unfinished."""
        request = trainer_pb2.RetrainRequest(adapter=adapter)
        if since is not None:
            request.since.FromDatetime(since)
        return convert.retrain(self._stub.Retrain(request))

    @_typed_errors
    def retrain_policy(self, adapter: str) -> RetrainPolicy:
        return convert.retrain_policy(self._stub.GetRetrainPolicy(trainer_pb2.GetRetrainPolicyRequest(adapter=adapter)))

    @_typed_errors
    def update_retrain_policy(
        self,
        adapter: str,
        *,
        enabled: bool,
        cooldown_seconds: float | None = None,
        canary_share: float | None = None,
        training: TrainingParameters | None = None,
    ) -> RetrainPolicy:
        """Turn retraining on alerts on or off (admin role); figures left None stay as the policy has them,
        `training` says how retrain jobs train."""
        request = trainer_pb2.UpdateRetrainPolicyRequest(
            adapter=adapter,
            enabled=enabled,
            cooldown_seconds=cooldown_seconds,
            canary_share=canary_share,
            training=convert.training_parameters(training) if training is not None else None,
        )
        return convert.retrain_policy(self._stub.UpdateRetrainPolicy(request))

    @_typed_errors
    def cancel(self, job_id: str) -> Job:
        return convert.job(self._stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id)))

    @_stream_typed_errors
    def watch(self, job_id: str, *, after_sequence: int = 0) -> Iterator[JobEvent]:
        """The job's events, replayed from after_sequence, then live until it ends."""
        request = trainer_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        yield from (convert.job_event(event) for event in self._stub.WatchJob(request))


class Inference:
    """Generation and adapters on a serving replica."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = serving_pb2_grpc.InferenceStub(channel)

    @staticmethod
    def _request(
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        adapter: str,
        params: SamplingParameters | None,
        user: str,
    ) -> serving_pb2.GenerateRequest:
        if (prompt is None) == (messages is None):
            raise ValueError("give exactly one of prompt or messages")
        sampling = convert.sampling_parameters(params) if params is not None else None
        request = serving_pb2.GenerateRequest(adapter=adapter, sampling=sampling, user=user)
        if prompt is not None:
            request.prompt = prompt
        else:
            request.messages.messages.extend(common_pb2.ChatMessage(**m) for m in messages or [])
        return request

    @_typed_errors
    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        adapter: str = "",
        params: SamplingParameters | None = None,
        user: str = "",
    ) -> Completion:
        """`user` (the caller's end user or session) keeps them on one version of an adapter on trial."""
        return convert.completion(self._stub.Generate(self._request(prompt, messages, adapter, params, user)))

    @_stream_typed_errors
    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        adapter: str = "",
        params: SamplingParameters | None = None,
        user: str = "",
    ) -> Iterator[CompletionChunk]:
        """The answer as it is generated: the first chunk carries request_id and adapter, the last the
        finish reason and usage."""
        request = self._request(prompt, messages, adapter, params, user)
        yield from (convert.completion_chunk(chunk) for chunk in self._stub.GenerateStream(request))

    @_typed_errors
    def tokenize(self, prompt: str) -> list[int]:
        return list(self._stub.Tokenize(serving_pb2.TokenizeRequest(prompt=prompt)).token_ids)

    @_typed_errors
    def model_info(self) -> ModelInfo:
        return convert.model_info(self._stub.ModelInfo(serving_pb2.ModelInfoRequest()))

    @_typed_errors
    def list_adapters(self, *, loaded_only: bool = False) -> list[Adapter]:
        reply = self._stub.ListAdapters(serving_pb2.ListAdaptersRequest(loaded_only=loaded_only))
        return [convert.adapter(info) for info in reply.adapters]

    @_typed_errors
    def load_adapter(self, adapter: str, *, pin: bool = False) -> Adapter:
        """Load ahead of traffic; `pin` keeps it in the engine until unload_adapter."""
        reply = self._stub.LoadAdapter(serving_pb2.LoadAdapterRequest(adapter=adapter, pin=pin))
        return convert.adapter(reply.adapter)

    @_typed_errors
    def unload_adapter(self, adapter: str) -> None:
        """Unload and unpin, once the requests using it have finished."""
        self._stub.UnloadAdapter(serving_pb2.UnloadAdapterRequest(adapter=adapter))

    @_typed_errors
    def record_feedback(self, request_id: str, score: float, *, correction: str | None = None) -> str:
        """Score an answer from 0 (wrong) to 1 (right) by its response's request_id, with the answer it should
        have been where known (kept with the request if its adapter's requests are captured); returns its
        adapter."""
        request = serving_pb2.RecordFeedbackRequest(request_id=request_id, score=score, correction=correction)
        return self._stub.RecordFeedback(request).adapter

    @_typed_errors
    def capture_policy(self, adapter: str) -> CapturePolicy:
        """Whether the adapter's requests are captured (admin role)."""
        return convert.capture_policy(self._stub.GetCapturePolicy(serving_pb2.GetCapturePolicyRequest(adapter=adapter)))

    @_typed_errors
    def update_capture_policy(
        self,
        adapter: str,
        *,
        enabled: bool,
        sample_share: float | None = None,
        retention_days: int | None = None,
        retention_bytes: int | None = None,
    ) -> CapturePolicy:
        """Turn capture on or off; figures left None stay as the policy has them (admin role)."""
        request = serving_pb2.UpdateCapturePolicyRequest(
            adapter=adapter,
            enabled=enabled,
            sample_share=sample_share,
            retention_days=retention_days,
            retention_bytes=retention_bytes,
        )
        return convert.capture_policy(self._stub.UpdateCapturePolicy(request))

    @_stream_typed_errors
    def captures(self, adapter: str, *, since: datetime | None = None) -> Iterator[Capture]:
        """The adapter's captured requests answered since `since` (all kept: None), oldest first, each with
        the newest feedback on it (admin role)."""
        request = serving_pb2.ExportCapturesRequest(adapter=adapter)
        if since is not None:
            request.since.FromDatetime(since)
        yield from (convert.capture(message, adapter) for message in self._stub.ExportCaptures(request))

    @_typed_errors
    def adapter_stats(self, adapter: str = "") -> list[AdapterStats]:
        """Drift of one adapter, or of every adapter with a window ("")."""
        reply = self._stub.GetAdapterStats(serving_pb2.GetAdapterStatsRequest(adapter=adapter))
        return [convert.adapter_stats(entry) for entry in reply.adapters]

    @_typed_errors
    def release(self, adapter: str, *, history_limit: int = 0) -> Release:
        """The adapter's release and its newest records (history_limit 0: the server's default, 20)."""
        request = serving_pb2.GetReleaseRequest(adapter=adapter, history_limit=history_limit)
        return convert.release(self._stub.GetRelease(request))

    @_typed_errors
    def update_release(
        self,
        adapter: str,
        action: ReleaseAction,
        *,
        candidate: int = 0,
        mode: ReleaseMode = ReleaseMode.CANARY,
        canary_share: float | None = None,
        stable: int = 0,
        expected_candidate: int = 0,
        reason: str = "",
    ) -> Release:
        """Start a candidate's trial (START with `candidate`, `mode`, `canary_share`), promote it, roll it
        back, pause or resume it; the release after the change."""
        request = serving_pb2.UpdateReleaseRequest(
            adapter=adapter,
            action=wire.RELEASE_ACTION.encode(action),
            candidate_version=candidate,
            mode=wire.RELEASE_MODE.encode(mode),
            canary_share=canary_share,
            stable_version=stable,
            expected_candidate_version=expected_candidate,
            reason=reason,
        )
        return convert.release(self._stub.UpdateRelease(request))


class LoraplaneClient:
    """Both services; either may be left unused. Close it, or use it as a context manager.

    `token` None reads LORAPLANE_TOKEN ("" sends none); `tls` None reads the LORAPLANE_CLIENT_*_FILE variables.
    """

    def __init__(
        self,
        trainer: str = DEFAULT_TRAINER_TARGET,
        serving: str = DEFAULT_SERVING_TARGET,
        *,
        token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        token = os.environ.get("LORAPLANE_TOKEN", "") if token is None else token
        tls = ClientTls.from_environment() if tls is None else tls
        self._channels: dict[ServiceName, grpc.Channel] = {
            "trainer": _channel(trainer, token, tls),
            "serving": _channel(serving, token, tls),
        }
        self.jobs = Jobs(self._channels["trainer"])
        self.inference = Inference(self._channels["serving"])

    def wait_until_serving(self, service: ServiceName, timeout: float) -> bool:
        """Poll the standard gRPC health check of "trainer" or "serving" until SERVING or timeout."""
        stub = health_pb2_grpc.HealthStub(self._channels[service])
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> LoraplaneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
