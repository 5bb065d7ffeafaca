"""A service as deployed: its console script in a process of its own, settings from the environment,
killed at the end if still up. For tests that signal or kill it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def service_process(script: str, settings: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`script` (trainer-svc or serving-svc) with `settings` (LORAPLANE_* variables) over this environment;
    its output appended to `log_path`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **settings}
    command = [str(Path(sys.executable).with_name(script))]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
