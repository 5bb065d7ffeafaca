"""The worker's event stream: JSON lines on the real stdout, kept apart from library output."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

from pydantic import BaseModel

from trainer_svc.progress import format_event

Emit = Callable[[BaseModel], None]


class EventStream:
    """Writes one event per line and flushes it, so the reader sees progress as it happens."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def emit(self, event: BaseModel) -> None:
        self._out.write(format_event(event))
        self._out.flush()


def claim_stdout(*, reports: bool = True) -> EventStream:
    """Keep the process's stdout for events and point fd 1 at stderr.

    Libraries print to stdout (progress bars, warnings, C++ logging); after this, whatever they
    print lands in stderr, and only events reach the stream the executor parses. A process that
    does not `report` (every rank of a distributed run but the first, which speaks for all) emits
    into nothing.
    """
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    if not reports:
        os.close(events_fd)
        return EventStream(open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
    return EventStream(os.fdopen(events_fd, "w", encoding="utf-8", buffering=1))
