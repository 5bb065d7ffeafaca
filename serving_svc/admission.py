"""Back-pressure: how many generation requests reach the engine at once, how many may wait, and how
many one caller may have in flight.

Past the bounds a request is refused at once with RESOURCE_EXHAUSTED (retryable) instead of
joining a queue it would time out in. A request that waits and is cancelled (its caller left,
its deadline passed) leaves the queue without ever reaching the engine. The per-caller bound
keeps one token from taking every place: its further requests are refused while others' go on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from loraplane.errors import ResourceExhausted


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int, max_per_caller: int) -> None:
        self._max_concurrent = max_concurrent
        self._max_queued = max_queued
        self._max_per_caller = max_per_caller
        self._places = asyncio.Semaphore(max_concurrent)
        self._in_flight: Counter[str] = Counter()
        self.queued = 0

    @asynccontextmanager
    async def place(self, caller: str = "") -> AsyncIterator[None]:
        """Hold one of the engine's places for the duration of the block, waiting for one if allowed.

        `caller` is the token's name; "" (authentication off) is held to the replica's limits only.
        """
        if caller and self._in_flight[caller] >= self._max_per_caller:
            raise ResourceExhausted(
                f"caller {caller!r} already has {self._in_flight[caller]} requests in flight, its limit "
                "(LORAPLANE_MAX_REQUESTS_PER_CALLER); wait for some to finish"
            )
        self._in_flight[caller] += 1
        try:
            async with self._engine_place():
                yield
        finally:
            self._in_flight[caller] -= 1
            if not self._in_flight[caller]:
                del self._in_flight[caller]

    @asynccontextmanager
    async def _engine_place(self) -> AsyncIterator[None]:
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
