"""The OpenAI-compatible HTTP API: the same inference service as gRPC, behind a second door.

`/v1/chat/completions`, `/v1/completions` (both streaming with server-sent events) and
`/v1/models`, where the base model and every published adapter is a `model`; and
`/v1/releases/{adapter}`, an adapter's release (read it; change it with the admin role); `/v1/feedback`;
and `/v1/captures/{adapter}`, an adapter's capture policy and captured requests (admin role). Routes only
translate (`openai_convert`); errors leave in OpenAI's shape with the HTTP status that matches
the gRPC one (400 naming the parameter, 401 without a valid token, 403 without the generate
role, 404 for an unknown adapter, 429 with Retry-After when the replica or the caller is at its
limits). A caller that disconnects aborts its request in the engine, streaming or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ConfigDict

from loraplane.auth import Authenticator, Caller, Role
from loraplane.body_limit import BodySizeLimit
from loraplane.captures import CapturePolicy, CapturePolicyChange, in_utc
from loraplane.errors import Cancelled, LoraplaneError, NotFound
from loraplane.http_errors import ErrorShape
from loraplane.names import whole_adapter_name
from loraplane.releases import ReleaseChange
from serving_svc import convert as grpc_convert
from serving_svc import openai_convert as convert
from serving_svc.inference import GenerationChunk, InferenceService
from serving_svc.release_analysis import ReleaseReport

log = logging.getLogger(__name__)

ERRORS = ErrorShape(convert.parameter, models_looked_up=True)
_T = TypeVar("_T")


async def _unless_disconnected(request: Request, work: Awaitable[_T]) -> _T:
    """`work`'s result; cancelled (aborting the engine request) if the caller disconnects first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise Cancelled("the caller disconnected")
    return task.result()


def _event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


CallerCheck = Callable[[Request], Caller]
"""Authenticates a request's caller, or raises the error that refuses it."""


def create_app(
    service: InferenceService,
    base_model: str,
    metrics: CollectorRegistry,
    authenticator: Authenticator,
    *,
    max_body_bytes: int,
) -> FastAPI:
    """The OpenAI-compatible API, every /v1 route for callers with the generate role (the `openai` client's
    api_key is the token). `/metrics` serves `metrics` here too, as vLLM does on its API port, since an
    inference gateway's endpoint picker scrapes the port it routes to; it and /health stay open."""

    def generating_caller(request: Request) -> Caller:
        return authenticator.caller(request.headers.get("authorization"), {Role.GENERATE, Role.ADMIN})

    app = FastAPI(title="loraplane serving", docs_url=None, redoc_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    _add_open_routes(app, metrics)
    ERRORS.install(app)

    def admin_caller(request: Request) -> Caller:
        return authenticator.caller(request.headers.get("authorization"), {Role.ADMIN})

    _add_model_routes(app, service, generating_caller)
    _add_completion_routes(app, service, base_model, generating_caller)
    _add_release_routes(app, service, generating_caller, admin_caller)
    _add_capture_routes(app, service, generating_caller, admin_caller)
    return app


def _add_open_routes(app: FastAPI, metrics: CollectorRegistry) -> None:
    """The routes that need no token: Prometheus' scrape and the health probe."""

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Up means serving: this port opens only once the base model is loaded."""
        return {"status": "ok"}


def _add_model_routes(app: FastAPI, service: InferenceService, generating_caller: CallerCheck) -> None:
    """`/v1/models`: the base model and every published adapter, each a model card."""
    generating = Depends(generating_caller)

    async def models() -> list[dict[str, Any]]:
        info = service.model_info()
        listed = await service.list_adapters(loaded_only=False)
        started = int(time.time())
        return [
            convert.model_card(info.base_model, started),
            *convert.adapter_cards([status.adapter for status in listed], info.base_model),
        ]

    @app.get("/v1/models", dependencies=[generating])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": await models()}

    @app.get("/v1/models/{model:path}", dependencies=[generating])
    async def get_model(model: str) -> dict[str, Any]:
        for card in await models():
            if model in (card["id"], card["root"]):
                return card
        raise NotFound(f"no model or adapter named {model!r}; GET /v1/models lists them", field="model")


class ReleaseUpdate(ReleaseChange):
    """The body of `POST /v1/releases/{adapter}`: a release change, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str = ""


def _add_release_routes(
    app: FastAPI, service: InferenceService, generating_caller: CallerCheck, admin_caller: CallerCheck
) -> None:
    """`/v1/releases/{adapter}`: the release as the gRPC API's Release message in its JSON form; changes
    need the admin role, as UpdateRelease does."""

    administering = Depends(admin_caller)

    def shown(report: ReleaseReport) -> dict[str, Any]:
        return MessageToDict(grpc_convert.release(report), preserving_proto_field_name=True)

    @app.get("/v1/releases/{adapter}", dependencies=[Depends(generating_caller)])
    async def get_release(adapter: str, history_limit: int = 0) -> dict[str, Any]:
        name = grpc_convert.release_name(adapter)
        return shown(await service.release(name, grpc_convert.history_limit(max(history_limit, 0))))

    @app.post("/v1/releases/{adapter}")
    async def update_release(adapter: str, body: ReleaseUpdate, caller: Caller = administering) -> dict[str, Any]:
        name = grpc_convert.release_name(adapter)
        change = ReleaseChange(**body.model_dump(exclude={"reason"}))
        await service.change_release(name, change, actor=caller.name, reason=body.reason)
        return shown(await service.release(name, grpc_convert.DEFAULT_RELEASE_HISTORY))


def _add_capture_routes(
    app: FastAPI, service: InferenceService, generating_caller: CallerCheck, admin_caller: CallerCheck
) -> None:
    """`/v1/feedback` (RecordFeedback), and `/v1/captures/{adapter}`: an adapter's capture policy and its
    captured requests, as the gRPC API's messages in their JSON form, for admins only."""

    administering = Depends(admin_caller)

    def shown(name: str, policy: CapturePolicy) -> dict[str, Any]:
        return MessageToDict(grpc_convert.capture_policy(name, policy), preserving_proto_field_name=True)

    @app.post("/v1/feedback", dependencies=[Depends(generating_caller)])
    async def record_feedback(body: convert.FeedbackRequest) -> dict[str, str]:
        return {"adapter": service.record_feedback(body.request_id, body.outcome(), body.correction)}

    @app.get("/v1/captures/{adapter}/policy", dependencies=[administering])
    async def get_capture_policy(adapter: str) -> dict[str, Any]:
        name = whole_adapter_name(adapter, "capture policy")
        return shown(name, await service.capture_policy(name))

    @app.put("/v1/captures/{adapter}/policy")
    async def update_capture_policy(
        adapter: str, body: CapturePolicyChange, caller: Caller = administering
    ) -> dict[str, Any]:
        name = whole_adapter_name(adapter, "capture policy")
        return shown(name, await service.change_capture_policy(name, body, actor=caller.name))

    @app.get("/v1/captures/{adapter}", dependencies=[administering])
    async def export_captures(adapter: str, since: datetime | None = None) -> Response:
        """One captured request per line (JSON Lines), oldest first."""
        name = whole_adapter_name(adapter, "captures")
        moment = in_utc(since)
        lines = [
            json.dumps(MessageToDict(grpc_convert.captured_request(capture), preserving_proto_field_name=True))
            for capture in await service.captures(name, moment)
        ]
        return Response("".join(line + "\n" for line in lines), media_type="application/jsonl")


def _add_completion_routes(
    app: FastAPI, service: InferenceService, base_model: str, generating_caller: CallerCheck
) -> None:
    """`/v1/chat/completions` and `/v1/completions`, whole or streamed."""
    generating = Depends(generating_caller)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: convert.ChatCompletionRequest, request: Request, caller: Caller = generating
    ) -> JSONResponse | StreamingResponse:
        if body.stream:
            return await _stream(service, base_model, request, body, caller, _chat_events)
        parse = partial(body.generation_input, base_model)
        completion = await _unless_disconnected(request, service.complete(parse, "ChatCompletions", caller.name))
        model = convert.served_model(completion.adapter, body.model)
        return JSONResponse(
            convert.chat_completion(completion, model, logprobs=body.logprobs),
            headers=convert.served_headers(completion.adapter),
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: convert.CompletionRequest, request: Request, caller: Caller = generating
    ) -> JSONResponse | StreamingResponse:
        if body.stream:
            return await _stream(service, base_model, request, body, caller, _completion_events)
        parse = partial(body.generation_input, base_model)
        completion = await _unless_disconnected(request, service.complete(parse, "Completions", caller.name))
        model = convert.served_model(completion.adapter, body.model)
        return JSONResponse(
            convert.text_completion(completion, model, logprobs=body.logprobs is not None),
            headers=convert.served_headers(completion.adapter),
        )


ChunkEvents = Callable[[GenerationChunk, Any, int, int], list[dict[str, Any]]]
"""The SSE events of one chunk (`_chat_events`, `_completion_events`)."""


async def _stream(
    service: InferenceService,
    base_model: str,
    request: Request,
    body: convert.ChatCompletionRequest | convert.CompletionRequest,
    caller: Caller,
    events: ChunkEvents,
) -> StreamingResponse:
    """Wait for the first chunk before answering, so that a refused request (unknown adapter, over
    the limits) gets its HTTP status; after that, errors travel as an `error` event."""
    rpc = "ChatCompletionsStream" if isinstance(body, convert.ChatCompletionRequest) else "CompletionsStream"
    chunks = service.stream(partial(body.generation_input, base_model), rpc, caller.name)
    try:
        first = await _unless_disconnected(request, anext(chunks))
    except BaseException:
        await chunks.aclose()
        raise
    sse = _server_sent_events(first, chunks, body, events)
    headers = {"Cache-Control": "no-cache", **convert.served_headers(first.adapter)}
    return StreamingResponse(sse, media_type="text/event-stream", headers=headers)


async def _server_sent_events(
    first: GenerationChunk,
    chunks: AsyncGenerator[GenerationChunk, None],
    body: convert.ChatCompletionRequest | convert.CompletionRequest,
    events: ChunkEvents,
) -> AsyncIterator[str]:
    """The stream's events from its first chunk on, then [DONE]; an error after the first chunk ends it as
    an `error` event."""
    created = int(time.time())
    sent = 0  # characters of the tokens sent so far (what text offsets count); -1 before the first chunk
    async with aclosing(chunks):
        try:
            for event in events(first, body, created, -1):
                yield _event(event)
            sent = _token_chars(first)
            async for chunk in chunks:
                for event in events(chunk, body, created, sent):
                    yield _event(event)
                sent += _token_chars(chunk)
        except LoraplaneError as error:
            yield _event(ERRORS.body(error)[1])
            return
    yield _event("[DONE]")


def _token_chars(chunk: GenerationChunk) -> int:
    """Characters of the chunk's tokens: a chunk's text can lag its tokens (half a UTF-8 character)."""
    return sum(len(entry.token) for entry in chunk.delta.logprobs)


def _chat_events(chunk: GenerationChunk, body: Any, created: int, sent: int) -> list[dict[str, Any]]:
    """The SSE events of one chunk; `sent`: characters of the tokens sent before it, -1 on the first chunk."""
    delta, model = chunk.delta, convert.served_model(chunk.adapter, body.model)
    events = []
    if sent < 0:
        events.append(convert.chat_chunk(chunk.request_id, model, created, {"role": "assistant", "content": ""}))
    if delta.text or (delta.logprobs and body.logprobs):
        event = convert.chat_chunk(chunk.request_id, model, created, {"content": delta.text})
        if body.logprobs:
            event["choices"][0]["logprobs"] = convert.chat_logprobs(delta.logprobs)
        events.append(event)
    events.extend(_final_events(chunk, body, created, convert.chat_chunk(chunk.request_id, model, created, {})))
    return events


def _completion_events(chunk: GenerationChunk, body: Any, created: int, sent: int) -> list[dict[str, Any]]:
    """The SSE events of one chunk; `sent`: characters of the tokens sent before it, -1 on the first chunk."""
    delta, model = chunk.delta, convert.served_model(chunk.adapter, body.model)
    events = []
    if delta.text or (delta.logprobs and body.logprobs is not None):
        event = convert.completion_chunk(chunk.request_id, model, created, delta.text)
        if body.logprobs is not None:  # text offsets count from the start of the whole answer
            event["choices"][0]["logprobs"] = convert.completion_logprobs(delta.logprobs, max(sent, 0))
        events.append(event)
    events.extend(_final_events(chunk, body, created, convert.completion_chunk(chunk.request_id, model, created, "")))
    return events


def _final_events(chunk: GenerationChunk, body: Any, created: int, last: dict[str, Any]) -> list[dict[str, Any]]:
    """On the last chunk: the finish reason, then (with stream_options.include_usage) the usage."""
    delta = chunk.delta
    if delta.finish_reason is None:
        return []
    last["choices"][0]["finish_reason"] = delta.finish_reason
    events = [last]
    if body.include_usage_in_stream():
        events.append({**last, "choices": [], "usage": convert.usage(delta.usage)})
    return events
