"""How the benchmark hands a baseline to a worker subprocess and gets its rows back.

A worker gets a job file (model, adapters, planned rows) and appends one JSON line per finished
row to a results file. Rows finished before a crash, a timeout or an out-of-memory kill are kept,
and the rest are reported as failed with the end of the worker's log, rather than losing the run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serving import processes
from bench.serving.measure import RowRun
from bench.serving.traffic import RowPlan

WARMUP_TOKENS = 4
"""Tokens per warm-up request: enough to run prefill and decode once per adapter, no more."""
WARMUP_ROUNDS = 2
"""Warm-up requests per adapter: the first loads it, the second runs with it already loaded."""


@dataclass
class WorkerJob:
    """Everything a baseline worker needs; plain data, written as JSON."""

    system: str
    model_dir: str
    adapter_dirs: dict[str, str]
    rows: list[RowPlan]
    max_tokens: int
    concurrency: int
    batch_size: int
    max_loras: int

    def to_json(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["rows"] = [row.to_json() for row in self.rows]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerJob:
        data = dict(data)
        data["rows"] = [RowPlan.from_json(row) for row in data["rows"]]
        return cls(**data)

    @property
    def adapters_needed(self) -> list[str]:
        """Adapters any row names, in name order: what a worker loads before measuring."""
        names = {name for row in self.rows for name in row.adapter_names}
        return sorted(names)


def run_worker(
    module: str, job: WorkerJob, job_dir: Path, *, env: dict[str, str], timeout_s: float
) -> tuple[list[RowRun], str | None]:
    """Run `python -m module` on `job`; the rows it finished, and why it stopped early if it did."""
    job_dir.mkdir(parents=True, exist_ok=True)
    job_path, results_path, log_path = job_dir / "job.json", job_dir / "rows.jsonl", job_dir / "worker.log"
    job_path.write_text(json.dumps(job.to_json()))
    results_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", module, str(job_path), str(results_path)]
    error = None
    with processes.running(argv, env=env, log_path=log_path, grace_s=10.0) as process:
        code = processes.wait(process, timeout_s)
        if code is None:
            error = f"timed out after {timeout_s:.0f} s (log: {log_path})"
        elif code != 0:
            error = f"worker exited with code {code}: {processes.log_tail(log_path, 6)} (log: {log_path})"
    rows = []
    if results_path.exists():
        rows = [RowRun.from_json(json.loads(line)) for line in results_path.read_text().splitlines() if line]
    return rows, error


def worker_args() -> tuple[WorkerJob, Path]:
    """In a worker's `__main__`: the job and the results file from argv, and die with the parent."""
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m {sys.argv[0]} JOB.json RESULTS.jsonl")
    processes.exit_with_parent()
    job = WorkerJob.from_json(json.loads(Path(sys.argv[1]).read_text()))
    return job, Path(sys.argv[2])


def append_row(results_path: Path, run: RowRun) -> None:
    """Record one finished row at once, so it survives a later failure of the worker."""
    with results_path.open("a") as f:
        f.write(json.dumps(run.to_json()) + "\n")
        f.flush()
        os.fsync(f.fileno())
