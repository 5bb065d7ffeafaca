"""Run code around every call of a grpc.aio handler, whatever its kind: what server interceptors share."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Around = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]
"""What runs around one call: entered before the servicer's method, left after its last message."""


def _around_unary(behaviour: Callable[[Any, Any], Awaitable[Any]], around: Around) -> Callable[[Any, Any], Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with around(context):
            return await behaviour(request, context)

    return call


def _around_stream(behaviour: Callable[[Any, Any], AsyncIterator[Any]], around: Around) -> Callable[[Any, Any], Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with around(context):
            async for item in behaviour(request, context):
                yield item

    return call


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour inside `around`: unary responses awaited, streamed ones iterated (the
    request side, a message or an iterator, is passed through as it is)."""
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=_around_unary(handler.unary_unary, around))  # type: ignore[attr-defined,no-any-return]
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=_around_unary(handler.stream_unary, around))  # type: ignore[attr-defined,no-any-return]
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=_around_stream(handler.unary_stream, around))  # type: ignore[attr-defined,no-any-return]
    return handler._replace(stream_stream=_around_stream(handler.stream_stream, around))  # type: ignore[attr-defined,no-any-return]


class AroundEachCall(grpc.aio.ServerInterceptor, abc.ABC):
    """A server interceptor that wraps the calls it chooses in what `around` returns for them."""

    @abc.abstractmethod
    def around(self, details: grpc.HandlerCallDetails) -> Around | None:
        """What to run around this call; None leaves it as it is."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        around = None if handler is None else self.around(handler_call_details)
        return handler if around is None else wrap_handler(handler, around)
