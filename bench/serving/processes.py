"""Child processes that cannot outlive the benchmark: servers and baseline workers.

Each child starts a session of its own, so it and everything it spawns (vLLM's engine core) form
one process group that can be ended as a whole, and a Ctrl-C in the terminal reaches only the
benchmark, which then stops its children in order instead of leaving them half-dead. Every live
group is also ended at interpreter exit and on SIGTERM, whatever the benchmark was doing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

_live: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, stdout and stderr into `log_path`, tracked until `stop`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with _lock:
        _live.add(process)
    return process


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def stop(process: subprocess.Popen[bytes], *, grace_s: float = 20.0) -> int | None:
    """SIGTERM to the child itself (a graceful stop), then SIGKILL to its whole group.

    The group is killed even after a clean exit: a server's own children (vLLM's engine core)
    must not survive it. Returns the child's exit code, None if it had to be killed.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    code = process.poll()
    _signal_group(process, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5.0)
    with _lock:
        _live.discard(process)
    return code


@contextlib.contextmanager
def running(
    argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, grace_s: float = 20.0
) -> Iterator[subprocess.Popen[bytes]]:
    """`spawn` for the duration of a with-block; the child is stopped however the block ends."""
    process = spawn(argv, env=env, log_path=log_path)
    try:
        yield process
    finally:
        stop(process, grace_s=grace_s)


def wait(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The child's exit code, or None if it is still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            return code
        time.sleep(0.2)
    return process.poll()


def stop_all() -> None:
    """Kill every child group still alive: the last resort at exit."""
    with _lock:
        live = list(_live)
    for process in live:
        stop(process, grace_s=2.0)


def log_tail(path: Path, lines: int = 15) -> str:
    """The end of a child's log, to say why it failed without opening the file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through every `running` block and `finally`, as Ctrl-C does.
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """End child groups on SIGTERM and at exit (Ctrl-C already unwinds as KeyboardInterrupt)."""
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_sigterm)


def exit_with_parent(poll_s: float = 1.0) -> None:
    """In a worker: kill this process group if the benchmark that started it dies.

    A worker runs in a session of its own (see `spawn`), so a benchmark killed with SIGKILL would
    otherwise leave it, and vLLM's engine core, running.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
