"""Back-pressure: how many generation requests reach the engine at once, and how many may wait.

Past both bounds a request is refused at once with RESOURCE_EXHAUSTED (retryable) instead of
joining a queue it would time out in. A request that waits and is cancelled (its caller left,
its deadline passed) leaves the queue without ever reaching the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from loraplane.errors import ResourceExhausted


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self._max_concurrent = max_concurrent
        self._max_queued = max_queued
        self._places = asyncio.Semaphore(max_concurrent)
        self.queued = 0

    @asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """Hold one of the engine's places for the duration of the block, waiting for one if allowed."""
        if self._places.locked() and self.queued >= self._max_queued:
            raise ResourceExhausted(
                f"this replica is at its limit of {self._max_concurrent} requests generating and "
                f"{self._max_queued} waiting; retry shortly, or run more replicas "
                "(LORAPLANE_MAX_CONCURRENT_REQUESTS, LORAPLANE_MAX_QUEUED_REQUESTS)"
            )
        self.queued += 1
        try:
            await self._places.acquire()
        finally:
            self.queued -= 1
        try:
            yield
        finally:
            self._places.release()
