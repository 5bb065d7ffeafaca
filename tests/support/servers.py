"""Run a real gRPC service (trainer or serving) on loopback in a thread with its own event loop,
so tests can call it with the ordinary blocking client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar


class AsyncService(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float = ...) -> None: ...


S = TypeVar("S", bound=AsyncService)


@contextmanager
def running(factory: Callable[[], S], start_timeout: float = 300) -> Iterator[S]:
    """Build the service with `factory` inside the loop's thread, start it, yield it, stop it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-service-loop", daemon=True)
    thread.start()

    async def build_and_start() -> S:
        service = factory()
        await service.start()
        return service

    try:
        service = asyncio.run_coroutine_threadsafe(build_and_start(), loop).result(start_timeout)
        try:
            yield service
        finally:
            asyncio.run_coroutine_threadsafe(service.stop(1.0), loop).result(120)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
