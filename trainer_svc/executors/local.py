"""Run each worker as a child process of the trainer and read its events from stdout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from trainer_svc.executors.base import EventHandler, Executor, RunOutcome
from trainer_svc.executors.config import ExecutorCapabilities, LocalConfig
from trainer_svc.progress import parse_event
from trainer_svc.worker_input import PARENT_PID_ENV, PREEMPT_SIGNAL, WorkerInput

_LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 16 << 10
# An event line (an error message with a long traceback text) may exceed asyncio's 64 KiB default.
_MAX_EVENT_LINE_BYTES = 16 << 20


class LocalExecutor(Executor):
    """`python -m trainer_svc.worker input.json`; stderr (library logs) goes to worker.log beside it."""

    def __init__(self, config: LocalConfig) -> None:
        self._config = config
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._cancelled: set[str] = set()
        self._preempted: set[str] = set()

    @property
    def capabilities(self) -> ExecutorCapabilities:
        """Every worker runs on this machine, as the trainer's child: a job cannot ask for more."""
        return ExecutorCapabilities(per_job_resources=False, multi_node=False)

    async def run(self, worker_input: WorkerInput, on_event: EventHandler) -> RunOutcome:
        job_id = worker_input.job_id
        if job_id in self._cancelled:  # cancelled between RUNNING being recorded and this call
            self._cancelled.discard(job_id)
            return RunOutcome(exit_code=-signal.SIGTERM, cancelled=True, log_tail="")
        input_path = worker_input.work_dir / "worker-input.json"
        await asyncio.to_thread(input_path.write_text, worker_input.model_dump_json(indent=2))
        log_path = worker_input.work_dir / "worker.log"
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "trainer_svc.worker",
                str(input_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
                limit=_MAX_EVENT_LINE_BYTES,
            )
            self._processes[job_id] = process
            stopping = asyncio.create_task(self._cancel(process)) if job_id in self._cancelled else None
            try:
                assert process.stdout is not None
                async for raw in process.stdout:
                    event = parse_event(raw.decode(errors="replace"))
                    if event is not None:
                        await on_event(event)
                exit_code = await process.wait()
            finally:
                self._processes.pop(job_id, None)
                if process.returncode is None:  # the trainer itself is stopping: take the child down
                    process.kill()
                    await process.wait()
                if stopping is not None:
                    await stopping
        cancelled, preempted = job_id in self._cancelled, job_id in self._preempted
        self._cancelled.discard(job_id)
        self._preempted.discard(job_id)
        log_tail = await asyncio.to_thread(_tail, log_path)
        return RunOutcome(exit_code=exit_code, cancelled=cancelled, log_tail=log_tail, preempted=preempted)

    async def cancel(self, job_id: str) -> None:
        """Stop the job's worker; a worker still being started is stopped as soon as it exists."""
        self._cancelled.add(job_id)
        process = self._processes.get(job_id)
        if process is not None:
            await self._cancel(process)

    async def preempt_all(self) -> set[str]:
        """PREEMPT_SIGNAL to every worker (each saves a checkpoint at its current step and exits), SIGKILL to
        those still running after the stop grace period."""
        preempted = set(self._processes)
        self._preempted.update(preempted)
        processes = list(self._processes.values())
        grace = self._config.stop_grace_seconds
        await asyncio.gather(*(self._stop(process, PREEMPT_SIGNAL, grace) for process in processes))
        return preempted

    async def _cancel(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM (the worker exits without publishing), then SIGKILL after the cancel grace period."""
        await self._stop(process, signal.SIGTERM, self._config.cancel_grace_seconds)

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process, sent: signal.Signals, grace: float) -> None:
        """`sent`, then SIGKILL if the worker still runs after `grace` seconds."""
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sent)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()


def _tail(path: Path) -> str:
    """The last lines of the worker's log, reading only its end (the log can be large)."""
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
        lines = f.read().decode(errors="replace").splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:]).strip()
