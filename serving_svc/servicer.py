"""The Inference gRPC servicer: translation between protobuf and the inference service, nothing more.

The caller (authenticated by the interceptor) is passed on for its per-caller limit.
Errors are raised as loraplane.errors types (by the service, or by `convert` for malformed
messages) and leave as gRPC statuses through DomainErrorInterceptor. A caller that cancels or
passes its deadline cancels the handler, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from loraplane.auth import current_caller
from loraplane.names import whole_adapter_name
from loraplane.proto import serving_pb2, serving_pb2_grpc
from serving_svc import convert
from serving_svc.inference import InferenceService


class InferenceServicer(serving_pb2_grpc.InferenceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def Generate(
        self, request: serving_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.GenerateResponse:
        completion = await self._service.complete(
            lambda: convert.generation_input(request), caller=current_caller().name
        )
        return convert.generate_response(completion)

    async def GenerateStream(
        self, request: serving_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.GenerateStreamResponse]:
        first = True
        chunks = self._service.stream(lambda: convert.generation_input(request), caller=current_caller().name)
        async with aclosing(chunks):
            async for chunk in chunks:
                delta = chunk.delta
                if not (first or delta.usage or delta.text or delta.logprobs):
                    continue  # a step that produced no visible text (e.g. half a UTF-8 character)
                yield convert.stream_response(chunk, first=first)
                first = False

    async def Tokenize(
        self, request: serving_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.TokenizeResponse:
        return serving_pb2.TokenizeResponse(token_ids=await self._service.tokenize(convert.prompt(request)))

    async def ModelInfo(
        self, request: serving_pb2.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.ModelInfoResponse:
        return convert.model_info(self._service.model_info())

    async def ListAdapters(
        self, request: serving_pb2.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.ListAdaptersResponse:
        listed = await self._service.list_adapters(loaded_only=request.loaded_only)
        return serving_pb2.ListAdaptersResponse(adapters=[convert.adapter_info(status) for status in listed])

    async def LoadAdapter(
        self, request: serving_pb2.LoadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.LoadAdapterResponse:
        status = await self._service.load_adapter(convert.required_adapter_spec(request.adapter), pin=request.pin)
        return serving_pb2.LoadAdapterResponse(adapter=convert.adapter_info(status))

    async def UnloadAdapter(
        self, request: serving_pb2.UnloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.UnloadAdapterResponse:
        await self._service.unload_adapter(convert.required_adapter_spec(request.adapter))
        return serving_pb2.UnloadAdapterResponse()

    async def RecordFeedback(
        self, request: serving_pb2.RecordFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.RecordFeedbackResponse:
        score, correction = convert.feedback_score(request), convert.feedback_correction(request)
        adapter = self._service.record_feedback(request.request_id, score, correction)
        return serving_pb2.RecordFeedbackResponse(adapter=adapter)

    async def GetAdapterStats(
        self, request: serving_pb2.GetAdapterStatsRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.GetAdapterStatsResponse:
        stats = await asyncio.to_thread(self._service.adapter_stats, request.adapter or None)
        return serving_pb2.GetAdapterStatsResponse(adapters=[convert.adapter_stats(entry) for entry in stats])

    async def GetRelease(
        self, request: serving_pb2.GetReleaseRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.Release:
        name = convert.release_name(request.adapter)
        view = await self._service.release(name, convert.history_limit(request.history_limit))
        return convert.release(view)

    async def UpdateRelease(
        self, request: serving_pb2.UpdateReleaseRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.Release:
        name, change = convert.release_change(request)
        await self._service.change_release(name, change, actor=current_caller().name, reason=request.reason)
        return convert.release(await self._service.release(name, convert.DEFAULT_RELEASE_HISTORY))

    async def GetCapturePolicy(
        self, request: serving_pb2.GetCapturePolicyRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.CapturePolicy:
        name = whole_adapter_name(request.adapter, "capture policy")
        return convert.capture_policy(name, await self._service.capture_policy(name))

    async def UpdateCapturePolicy(
        self, request: serving_pb2.UpdateCapturePolicyRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.CapturePolicy:
        name, change = convert.capture_policy_change(request)
        policy = await self._service.change_capture_policy(name, change, actor=current_caller().name)
        return convert.capture_policy(name, policy)

    async def ExportCaptures(
        self, request: serving_pb2.ExportCapturesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.CapturedRequest]:
        for capture in await self._service.captures(*convert.captures_since(request)):
            yield convert.captured_request(capture)
