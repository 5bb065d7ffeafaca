"""Run a service until SIGTERM or SIGINT, then stop it gracefully: shared by both entry points."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from loraplane.errors import StartupError


class Service(Protocol):
    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self, grace: float = ...) -> None: ...


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve_until_signalled(build: Callable[[], Service], name: str, grace: float = 10.0) -> None:
    """Build the service inside the running loop (grpc.aio binds to it), serve, stop on a signal."""
    log = logging.getLogger(name)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        service = build()
        await service.start()
    except StartupError as exc:
        log.error("%s cannot start: %s", name, exc)
        raise SystemExit(2) from None
    log.info("%s listening on port %d", name, service.port)
    await stopping.wait()
    log.info("%s stopping", name)
    await service.stop(grace)
