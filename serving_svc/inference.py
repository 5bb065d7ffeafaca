"""The inference service: what a request to the serving replica does, whichever transport brought it.

The gRPC servicer (and any other front) translates its messages into the value objects here and
back; everything else lives in this one place: the model-dependent checks, tokenization,
back-pressure, pinning the adapter against eviction, the engine request, the per-adapter
metrics (time to first token, inter-token latency, end-to-end latency, tokens), and each
answered request handed to the drift monitor with the feedback callers send about it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from loraplane.captures import Capture, CapturePolicy, CapturePolicyChange
from loraplane.errors import ErrorCode, FailedPrecondition, InvalidArgument, LoraplaneError
from loraplane.names import AdapterSpec
from loraplane.releases import ReleaseChange, ReleaseRecord, VersionRole
from serving_svc.adapters import AdapterManager, AdapterStatus, ResolvedAdapter
from serving_svc.admission import Admission
from serving_svc.capture import CaptureWriter
from serving_svc.drift_monitor import AdapterDrift, DriftMonitor
from serving_svc.engines.base import (
    Engine,
    FinishReason,
    GenerationDelta,
    Prompt,
    SamplingOptions,
    TokenLogprob,
    Usage,
)
from serving_svc.generation import AnswerTrace, as_trained, engine_request, record_drift
from serving_svc.metrics import BASE_MODEL, NO_ADAPTER_LABEL, RequestRecord, ServingMetrics
from serving_svc.release_analysis import ReleaseAnalysis, ReleaseReport
from serving_svc.releases import ReleaseRouter, Route
from serving_svc.shadow import ShadowRunner

NOT_THE_VERSIONS_FAULT = frozenset(
    {
        ErrorCode.UNAVAILABLE,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.OUT_OF_RANGE,
        ErrorCode.RESOURCE_EXHAUSTED,
        ErrorCode.CANCELLED,
        ErrorCode.DEADLINE_EXCEEDED,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.UNAUTHENTICATED,
    }
)
"""Failures that are not the version's: a malformed request, load shedding, a caller who left, a store or
replica that cannot be reached. Every other failure of a request the release routed counts against its
version (an engine error, a version whose files do not verify or that this replica cannot serve)."""


@dataclass(frozen=True)
class GenerationInput:
    adapter: AdapterSpec | None
    """None: the base model."""
    prompt: Prompt
    sampling: SamplingOptions
    """max_tokens 0 takes the replica's default."""
    input_field: str = "prompt"
    """The request field that holds the prompt, named in errors about it."""
    user: str = ""
    """The caller's end user or session, which keeps them on one version of an adapter on trial;
    empty: the request is split on its own id."""


@dataclass(frozen=True)
class GenerationChunk:
    request_id: str
    adapter: ResolvedAdapter | None
    delta: GenerationDelta


@dataclass
class Completion:
    request_id: str = ""
    adapter: ResolvedAdapter | None = None
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class ModelInfo:
    base_model: str
    base_model_fingerprint: str
    engine: str
    max_model_len: int
    max_loaded_adapters: int
    max_lora_rank: int
    max_cpu_adapters: int


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for, within the model length; 0 = as much as the model length allows."""

    default_max_tokens: int
    max_tokens: int = 0
    max_prompt_tokens: int = 0


class InferenceService:
    def __init__(
        self,
        engine: Engine,
        adapters: AdapterManager,
        metrics: ServingMetrics,
        admission: Admission,
        drift: DriftMonitor | None,
        releases: ReleaseRouter,
        shadow: ShadowRunner,
        analysis: ReleaseAnalysis,
        capture: CaptureWriter,
        *,
        limits: RequestLimits,
    ) -> None:
        self._engine = engine
        self._capture = capture
        self._adapters = adapters
        self._releases = releases
        self._shadow = shadow
        self._analysis = analysis
        self._metrics = metrics
        self._admission = admission
        self._drift = drift
        self._limits = limits
        metrics.watch_queue(lambda: admission.queued)

    # -- generation -------------------------------------------------------------------------

    async def stream(
        self, parse: Callable[[], GenerationInput], rpc: str = "GenerateStream", caller: str = ""
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The answer as deltas; the last carries finish reason and usage. Closing it early aborts the request.

        `parse` turns the transport's message into the input inside the tracked scope, so a
        malformed request is counted with its status like any other. `caller` (the token's name)
        is held to its own limit of requests in flight.
        """
        with self._metrics.track(rpc) as record:
            async with aclosing(self._generate(parse(), record, caller)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def complete(
        self, parse: Callable[[], GenerationInput], rpc: str = "Generate", caller: str = ""
    ) -> Completion:
        """The whole answer at once."""
        completion = Completion()
        text: list[str] = []
        async with aclosing(self.stream(parse, rpc, caller)) as chunks:
            async for chunk in chunks:
                completion.request_id, completion.adapter = chunk.request_id, chunk.adapter
                text.append(chunk.delta.text)
                completion.logprobs.extend(chunk.delta.logprobs)
                if chunk.delta.usage is not None:
                    completion.finish_reason = chunk.delta.finish_reason
                    completion.usage = chunk.delta.usage
        completion.text = "".join(text)
        return completion

    def _checked_sampling(self, request: GenerationInput, prompt_tokens: int) -> SamplingOptions:
        max_model_len = self._engine.max_model_len
        limits = self._limits
        sampling = request.sampling
        if sampling.max_tokens > max_model_len:
            raise InvalidArgument(
                f"max_tokens {sampling.max_tokens} exceeds the model length {max_model_len}",
                field="sampling.max_tokens",
            )
        if limits.max_tokens and sampling.max_tokens > limits.max_tokens:
            raise InvalidArgument(
                f"max_tokens {sampling.max_tokens} exceeds this server's limit of {limits.max_tokens}",
                field="sampling.max_tokens",
            )
        if prompt_tokens == 0:
            raise InvalidArgument("the input is empty", field=request.input_field)
        if prompt_tokens >= max_model_len:
            raise InvalidArgument(
                f"the input has {prompt_tokens} tokens; this model takes at most {max_model_len - 1}",
                field=request.input_field,
            )
        if limits.max_prompt_tokens and prompt_tokens > limits.max_prompt_tokens:
            raise InvalidArgument(
                f"the input has {prompt_tokens} tokens; this server's limit is {limits.max_prompt_tokens}",
                field=request.input_field,
            )
        max_tokens = sampling.max_tokens or min(limits.default_max_tokens, limits.max_tokens or max_model_len)
        if sampling.min_tokens > max_tokens:
            raise InvalidArgument(
                f"min_tokens {sampling.min_tokens} exceeds max_tokens {max_tokens}", field="sampling.min_tokens"
            )
        return replace(sampling, max_tokens=max_tokens)

    async def _generate(
        self, request: GenerationInput, record: RequestRecord, caller: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        received = time.perf_counter()
        request_id = uuid.uuid4().hex
        route = await self._releases.route(request.adapter, request.user or request_id) if request.adapter else None
        trial = route if route is not None and route.role in (VersionRole.STABLE, VersionRole.CANDIDATE) else None
        first_token: float | None = None
        with self._version_failures_of(trial):
            resolved = await self._adapters.resolve(route.spec) if route is not None else None
            token_ids = await self._engine.tokenize(as_trained(request.prompt, resolved))
            sampling = self._checked_sampling(request, len(token_ids))
            async with self._admission.place(caller), self._adapters.hold(resolved) as adapter:
                manifest = adapter.manifest if adapter else None
                label = self._metrics.version_labels(manifest.name, manifest.version) if manifest else BASE_MODEL
                record.adapter, record.version = label
                metrics = self._metrics
                metrics.prompt_tokens(label, len(token_ids))
                generation = engine_request(self._engine, self._drift, request_id, token_ids, sampling, adapter)
                answer = AnswerTrace()
                last_token_at: float | None = None
                async with aclosing(self._engine.generate(generation)) as deltas:
                    async for delta in deltas:
                        if delta.token_ids:
                            now = time.perf_counter()
                            if last_token_at is None:
                                first_token = now - received
                                metrics.first_token(label, first_token)
                            else:
                                tokens = len(delta.token_ids)
                                metrics.inter_token(label, (now - last_token_at) / tokens, tokens)
                            last_token_at = now
                            metrics.tokens_generated(label, len(delta.token_ids))
                        answer.add(delta)
                        if delta.finish_reason is not None:
                            latency = time.perf_counter() - received
                            metrics.generation_finished(label, latency)
                            record_drift(self._drift, self._adapters, adapter, generation, answer, delta)
                            if trial is not None:
                                self._analysis.observe(trial, first_token=first_token, latency=latency, failed=False)
                            if route is not None and route.shadow is not None and route.trial is not None:
                                self._shadow.offer(route.shadow, route.trial, request.prompt, sampling, answer.text)
                            if manifest is not None:
                                self._capture.offer_request(
                                    generation.request_id,
                                    manifest.name,
                                    manifest.version,
                                    request.prompt,
                                    answer.text,
                                    delta.finish_reason,
                                )
                        yield GenerationChunk(generation.request_id, adapter, delta)

    @contextmanager
    def _version_failures_of(self, trial: Route | None) -> Iterator[None]:
        """Count a request that failed against the version of a release that was to answer it, unless the
        failure was not the version's (NOT_THE_VERSIONS_FAULT)."""
        try:
            yield
        except LoraplaneError as error:
            if error.error_code not in NOT_THE_VERSIONS_FAULT:
                self._observe_failure(trial)
            raise
        except Exception:
            self._observe_failure(trial)
            raise

    def _observe_failure(self, trial: Route | None) -> None:
        if trial is not None:
            self._analysis.observe(trial, first_token=None, latency=None, failed=True)

    # -- outcomes and drift ----------------------------------------------------------------

    def record_feedback(self, request_id: str, score: float, correction: str | None = None) -> str:
        """Count a caller's score in [0, 1] for an answer, and keep it with the `correction` where the request
        was captured; returns the adapter that gave it."""
        with self._metrics.track("RecordFeedback") as record:
            if self._drift is None:
                raise FailedPrecondition("drift monitoring is off on this replica (LORAPLANE_DRIFT_MONITORING)")
            if not 0.0 <= score <= 1.0:
                raise InvalidArgument(f"score must be in [0, 1], got {score}", field="score")
            adapter, version = self._drift.record_feedback(request_id, score)
            served = self._metrics.version_labels(adapter, version)
            record.adapter, record.version = served
            self._metrics.feedback(served)
            self._capture.offer_feedback(request_id, adapter, version, score, correction)
            return adapter

    def adapter_stats(self, name: str | None) -> list[AdapterDrift]:
        """Drift of adapter `name`, or of every adapter with a window (None)."""
        with self._metrics.track("GetAdapterStats") as record:
            record.adapter = NO_ADAPTER_LABEL
            if self._drift is None:
                raise FailedPrecondition("drift monitoring is off on this replica (LORAPLANE_DRIFT_MONITORING)")
            return self._drift.adapters() if name is None else self._drift.adapter(name)

    # -- releases ---------------------------------------------------------------------------

    async def release(self, name: str, history_limit: int) -> ReleaseReport:
        with self._metrics.track("GetRelease") as record:
            record.adapter = NO_ADAPTER_LABEL
            return await self._analysis.report(await self._releases.view(name, history_limit))

    async def change_release(self, name: str, change: ReleaseChange, *, actor: str, reason: str) -> ReleaseRecord:
        with self._metrics.track("UpdateRelease") as record:
            record.adapter = NO_ADAPTER_LABEL
            return await self._releases.change(name, change, actor=actor, reason=reason)

    # -- captured traffic -------------------------------------------------------------------------

    async def capture_policy(self, name: str) -> CapturePolicy:
        """`name`'s capture policy as the store has it."""
        with self._metrics.track("GetCapturePolicy") as record:
            record.adapter = NO_ADAPTER_LABEL
            return await asyncio.to_thread(self._capture.policy, name, fresh=True)

    async def change_capture_policy(self, name: str, change: CapturePolicyChange, *, actor: str) -> CapturePolicy:
        with self._metrics.track("UpdateCapturePolicy") as record:
            record.adapter = NO_ADAPTER_LABEL
            return await asyncio.to_thread(self._capture.change_policy, name, change, actor=actor)

    async def captures(self, name: str, since: datetime | None) -> list[Capture]:
        """`name`'s captured requests answered since `since` (every one kept: None), with their feedback."""
        with self._metrics.track("ExportCaptures") as record:
            record.adapter = NO_ADAPTER_LABEL
            return await asyncio.to_thread(self._capture.captures, name, since)

    # -- the replica and its adapters -------------------------------------------------------

    async def tokenize(self, prompt: Prompt) -> list[int]:
        with self._metrics.track("Tokenize") as record:
            record.adapter = NO_ADAPTER_LABEL
            return await self._engine.tokenize(prompt)

    def model_info(self) -> ModelInfo:
        with self._metrics.track("ModelInfo") as record:
            record.adapter = NO_ADAPTER_LABEL
            policy = self._adapters.policy
            return ModelInfo(
                base_model=policy.base_model_name,
                base_model_fingerprint=policy.base_model_fingerprint,
                engine=self._engine.name,
                max_model_len=self._engine.max_model_len,
                max_loaded_adapters=policy.max_loaded,
                max_lora_rank=policy.max_rank,
                max_cpu_adapters=policy.max_cpu,
            )

    async def list_adapters(self, *, loaded_only: bool) -> list[AdapterStatus]:
        """The newest version of every published adapter (unless loaded_only) and every loaded version,
        each with where this replica holds it and what it has served."""
        with self._metrics.track("ListAdapters") as record:
            record.adapter = NO_ADAPTER_LABEL
            listed = [] if loaded_only else await self._adapters.published()
            listed_keys = {adapter.key for adapter in listed}
            listed += [adapter for adapter in self._adapters.loaded() if adapter.key not in listed_keys]
            return await asyncio.to_thread(lambda: [self._adapters.status(adapter) for adapter in listed])

    async def load_adapter(self, spec: AdapterSpec, *, pin: bool = False) -> AdapterStatus:
        with self._metrics.track("LoadAdapter") as record:
            adapter = await self._adapters.load(spec, pin=pin)
            record.adapter = self._metrics.adapter_label(adapter.manifest.name)
            return self._adapters.status(adapter)

    async def unload_adapter(self, spec: AdapterSpec) -> None:
        with self._metrics.track("UnloadAdapter") as record:
            await self._adapters.unload(spec)
            record.adapter = self._metrics.adapter_label(spec.name)
