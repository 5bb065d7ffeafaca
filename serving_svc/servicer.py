"""The Inference gRPC servicer: a thin translator between protobuf and the engine and adapter manager.

It never knows which engine it has. Errors are raised as loraplane.errors types and leave as
gRPC statuses through DomainErrorInterceptor.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import grpc

from loraplane.proto import serving_pb2, serving_pb2_grpc
from serving_svc import convert
from serving_svc.adapters import AdapterManager, ResolvedAdapter
from serving_svc.engines.base import Engine, GenerationDelta, GenerationRequest
from serving_svc.metrics import BASE_MODEL_LABEL, NO_ADAPTER_LABEL, RequestRecord, ServingMetrics


class InferenceServicer(serving_pb2_grpc.InferenceServicer):
    def __init__(
        self, engine: Engine, adapters: AdapterManager, metrics: ServingMetrics, *, default_max_tokens: int
    ) -> None:
        self._engine = engine
        self._adapters = adapters
        self._metrics = metrics
        self._default_max_tokens = default_max_tokens

    async def _generate(
        self, request: serving_pb2.GenerateRequest, record: RequestRecord
    ) -> AsyncGenerator[tuple[ResolvedAdapter | None, GenerationDelta], None]:
        """Validate, tokenize, pin the adapter and stream the engine's deltas, counting tokens."""
        received = time.perf_counter()
        spec = convert.adapter_spec(request.adapter)
        max_model_len = self._engine.max_model_len
        sampling = convert.sampling(
            request.sampling, max_model_len=max_model_len, default_max_tokens=self._default_max_tokens
        )
        token_ids = await self._engine.tokenize(convert.prompt(request))
        convert.check_prompt_length(len(token_ids), max_model_len=max_model_len, field=convert.input_field(request))
        async with self._adapters.use(spec) as adapter:
            record.adapter = adapter.manifest.name if adapter else BASE_MODEL_LABEL
            self._metrics.prompt_tokens.labels(record.adapter).inc(len(token_ids))
            generation = GenerationRequest(
                request_id=uuid.uuid4().hex,
                prompt_token_ids=tuple(token_ids),
                sampling=sampling,
                adapter_key=adapter.key if adapter else None,
            )
            first_token_seen = False
            async with aclosing(self._engine.generate(generation)) as deltas:
                async for delta in deltas:
                    if delta.token_ids and not first_token_seen:
                        first_token_seen = True
                        self._metrics.time_to_first_token.observe(time.perf_counter() - received)
                    self._metrics.generated_tokens.labels(record.adapter).inc(len(delta.token_ids))
                    yield adapter, delta

    async def Generate(
        self, request: serving_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.GenerateResponse:
        with self._metrics.track("Generate") as record:
            response = serving_pb2.GenerateResponse()
            text: list[str] = []
            async with aclosing(self._generate(request, record)) as stream:
                async for adapter, delta in stream:
                    text.append(delta.text)
                    response.logprobs.extend(convert.logprobs(delta.logprobs))
                    if adapter is not None and not response.HasField("adapter"):
                        response.adapter.CopyFrom(convert.adapter_ref(adapter))
                    if delta.usage is not None:
                        response.finish_reason = convert.finish_reason(delta.finish_reason)
                        response.usage.prompt_tokens = delta.usage.prompt_tokens
                        response.usage.completion_tokens = delta.usage.completion_tokens
            response.text = "".join(text)
            return response

    async def GenerateStream(
        self, request: serving_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.GenerateStreamResponse]:
        with self._metrics.track("GenerateStream") as record:
            first = True
            async with aclosing(self._generate(request, record)) as stream:
                async for adapter, delta in stream:
                    usage = delta.usage
                    if not (first or usage or delta.text or delta.logprobs):
                        continue  # a step that produced no visible text (e.g. half a UTF-8 character)
                    message = serving_pb2.GenerateStreamResponse(
                        delta=delta.text, logprobs=convert.logprobs(delta.logprobs)
                    )
                    if first and adapter is not None:
                        message.adapter.CopyFrom(convert.adapter_ref(adapter))
                    if usage is not None:
                        message.finish_reason = convert.finish_reason(delta.finish_reason)
                        message.usage.prompt_tokens = usage.prompt_tokens
                        message.usage.completion_tokens = usage.completion_tokens
                    first = False
                    yield message

    async def Tokenize(
        self, request: serving_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.TokenizeResponse:
        with self._metrics.track("Tokenize") as record:
            record.adapter = NO_ADAPTER_LABEL
            token_ids = await self._engine.tokenize(convert.prompt(request))
            return serving_pb2.TokenizeResponse(token_ids=token_ids)

    async def ModelInfo(
        self, request: serving_pb2.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.ModelInfoResponse:
        with self._metrics.track("ModelInfo") as record:
            record.adapter = NO_ADAPTER_LABEL
            policy = self._adapters.policy
            return serving_pb2.ModelInfoResponse(
                base_model=policy.base_model_name,
                base_model_fingerprint=policy.base_model_fingerprint,
                engine=self._engine.name,
                max_model_length=self._engine.max_model_len,
                max_loaded_adapters=policy.max_loaded,
                max_lora_rank=policy.max_rank,
            )

    async def ListAdapters(
        self, request: serving_pb2.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.ListAdaptersResponse:
        with self._metrics.track("ListAdapters") as record:
            record.adapter = NO_ADAPTER_LABEL
            listed = [] if request.loaded_only else await self._adapters.published()
            listed_keys = {adapter.key for adapter in listed}
            listed += [adapter for adapter in self._adapters.loaded() if adapter.key not in listed_keys]
            return serving_pb2.ListAdaptersResponse(
                adapters=[convert.adapter_info(a, loaded=self._adapters.is_loaded(a.key)) for a in listed]
            )

    async def LoadAdapter(
        self, request: serving_pb2.LoadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.LoadAdapterResponse:
        with self._metrics.track("LoadAdapter") as record:
            adapter = await self._adapters.load(convert.required_adapter_spec(request.adapter))
            record.adapter = adapter.manifest.name
            return serving_pb2.LoadAdapterResponse(adapter=convert.adapter_info(adapter, loaded=True))

    async def UnloadAdapter(
        self, request: serving_pb2.UnloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.UnloadAdapterResponse:
        with self._metrics.track("UnloadAdapter") as record:
            spec = convert.required_adapter_spec(request.adapter)
            await self._adapters.unload(spec)
            record.adapter = spec.name
            return serving_pb2.UnloadAdapterResponse()
