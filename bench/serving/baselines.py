"""Running the baselines (raw vLLM, peft) as worker subprocesses and turning their rows into results.

raw vLLM gets a worker per adapter count, since `max_loras` is fixed when the engine starts and
is set to exactly the count the row uses (the base row shares the 1-adapter engine). peft holds
any number of adapters at no cost to rows that do not use them, so one worker per system runs
every row.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from bench.serving.measure import failed_row, summarize
from bench.serving.traffic import RowPlan
from bench.serving.workers import WorkerJob, run_worker
from bench.serving.workspace import Workspace

log = logging.getLogger("bench.serving")

BATCH_SIZE = 32
"""Sequences per step for every system: vLLM's max_num_seqs, peft's batch, our server's default."""
STARTUP_BUDGET_S = 600.0
ROW_BUDGET_S = 1800.0


@dataclass(frozen=True)
class Baseline:
    system: str
    module: str


RAW_VLLM = Baseline("raw-vllm", "bench.serving.raw_vllm")
PEFT_MIXED = Baseline("peft-mixed", "bench.serving.peft_baseline")
PEFT_SEQUENTIAL = Baseline("peft-sequential", "bench.serving.peft_baseline")
BASELINES = {b.system: b for b in (RAW_VLLM, PEFT_MIXED, PEFT_SEQUENTIAL)}


def _worker_env() -> dict[str, str]:
    """vLLM's CPU worker binds to all cores but one unless told otherwise; give it every core, as our
    server does, so raw vLLM is not handicapped on a small machine."""
    cores = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    return {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", cores)}


def _groups(baseline: Baseline, rows: list[RowPlan]) -> list[tuple[int, list[RowPlan]]]:
    """(max_loras, rows) per worker: one per adapter count for vLLM, one in all for peft."""
    if baseline is not RAW_VLLM:
        return [(max(row.adapters for row in rows), rows)]
    ordered = sorted(rows, key=lambda row: max(row.adapters, 1))
    return [(slots, list(group)) for slots, group in groupby(ordered, key=lambda row: max(row.adapters, 1))]


def run_baseline(
    baseline: Baseline, rows: list[RowPlan], workspace: Workspace, max_tokens: int, concurrency: int, run_dir: Path
) -> list[dict[str, Any]]:
    """Every row on `baseline`; rows a worker did not finish are reported failed, with its reason."""
    summaries: list[dict[str, Any]] = []
    for max_loras, group in _groups(baseline, rows):
        names = sorted({name for row in group for name in row.adapter_names})
        job = WorkerJob(
            system=baseline.system,
            model_dir=str(workspace.model_dir),
            adapter_dirs={name: str(workspace.adapter_dirs[name]) for name in names},
            rows=group,
            max_tokens=max_tokens,
            concurrency=concurrency,
            batch_size=BATCH_SIZE,
            max_loras=max_loras,
        )
        job_dir = run_dir / f"{baseline.system}-{max_loras}"
        log.info("%s: %d rows, %d adapters loaded (log: %s)", baseline.system, len(group), len(names), job_dir)
        timeout = STARTUP_BUDGET_S + ROW_BUDGET_S * len(group)
        runs, error = run_worker(baseline.module, job, job_dir, env=_worker_env(), timeout_s=timeout)
        if error:
            log.error("%s failed: %s", baseline.system, error)
        finished = {(run.adapters, run.traffic) for run in runs}
        summaries.extend(summarize(baseline.system, run) for run in runs)
        summaries.extend(
            failed_row(baseline.system, row.adapters, row.traffic, len(row.requests), error or "row not run")
            for row in group
            if (row.adapters, row.traffic) not in finished
        )
    return summaries
