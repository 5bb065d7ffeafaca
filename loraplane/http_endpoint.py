"""An ASGI app served by uvicorn inside the replica's own event loop, beside the gRPC server.

The socket is bound at construction, so the port (0 = a free one) is known before start and a
port in use fails the replica at start-up with the setting to change. Signals stay the
replica's: uvicorn would otherwise take SIGTERM and SIGINT for itself and re-raise them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from loraplane.errors import StartupError
from loraplane.tls import ServerTls


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the replica's own handlers stop it, and stop this server with it


class HttpEndpoint:
    def __init__(self, app: ASGIApp, host: str, port: int, *, setting: str, tls: ServerTls | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP on {host}:{port} ({exc.strerror}); change {setting}") from None
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            **(tls.uvicorn_options() if tls else {}),
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # serve() failed: raise its error
                raise StartupError("the HTTP server stopped as it started; the log says why")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, let responses in flight finish (at most 5 s), close."""
        if self._task is not None:
            self._server.should_exit = True
            await self._task
            self._task = None
        self._socket.close()
