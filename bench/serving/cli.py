"""Command line and run order: prepare inputs, run each system in turn, print the report.

Systems run one after another, never two at once, so none steals cores from another; each runs
in subprocesses of its own, and a system that fails is reported in the JSON with its reason
while the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

from bench.machine import machine, run_date
from bench.serving import processes
from bench.serving.baselines import BASELINES, BATCH_SIZE, run_baseline
from bench.serving.ours import COLD_LOAD_REPEATS, Load, run_ours
from bench.serving.report import markdown, ratios
from bench.serving.traffic import TRAFFICS, Traffic, plan_rows
from bench.serving.workspace import ModelName, prepare

log = logging.getLogger("bench.serving")

OURS = ("ours-transformers", "ours-transformers-http", "ours-vllm", "ours-vllm-http")
"""Our server over gRPC, and over the OpenAI-compatible HTTP API (measured in the same server session)."""
SYSTEMS = (*OURS, "raw-vllm", "peft-mixed", "peft-sequential")
DEFAULT_WORK_DIR = Path("~/.cache/loraplane-bench")


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("give adapter counts of at least 1, comma-separated (the base row is added)")
    return values


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [v for v in values if v not in allowed]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (got {text!r})")
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description="Serving benchmark: our server against raw vLLM and peft, measured in one run. JSON on "
        "stdout, a markdown table on stderr.",
    )
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--adapters", type=_int_list, default=[1, 8, 32, 64], help="adapter counts, e.g. 1,8,32,64")
    parser.add_argument("--traffic", type=_choices(TRAFFICS), default=list(TRAFFICS), help="uniform,zipf")
    parser.add_argument("--requests", type=int, default=128, help="requests per row")
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight at most")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request, exactly")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="times each row is driven through each front of our server (gRPC, HTTP), interleaved; "
        "tokens/s is over them all",
    )
    parser.add_argument("--systems", type=_choices(SYSTEMS), default=list(SYSTEMS), help=",".join(SYSTEMS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the adapter draw")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache of model, adapters, logs")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "max_tokens", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def auto_system() -> str:
    """The system our server's `auto` engine is on this machine (vLLM on a GPU, else transformers)."""
    import torch

    from serving_svc.engines import resolve_engine

    return f"ours-{resolve_engine('auto', bool(torch.cuda.is_available()))}"


def _order(row: dict[str, Any]) -> tuple[int, int, str]:
    return (SYSTEMS.index(row["system"]), row["adapters"], row["traffic"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare inputs, run every chosen system in turn, and assemble the JSON document."""
    started = time.time()
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5 * len(os.sched_getaffinity(0)):
        log.warning("load average %.1f before the run: other work here will skew every number", load_at_start[0])
    work_dir = args.work_dir.expanduser().resolve()
    run_dir = work_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    cold_count = COLD_LOAD_REPEATS if any(system in OURS for system in args.systems) else 0
    workspace = prepare(cast(ModelName, args.model), work_dir, max(args.adapters), cold_count)
    rows = plan_rows(args.adapters, cast(list[Traffic], args.traffic), args.requests, args.seed)
    load = Load(args.max_tokens, args.concurrency, args.repeats)
    results: list[dict[str, Any]] = []
    cold_load: dict[str, Any] = {}
    for system in args.systems:
        engine = system.removeprefix("ours-").removesuffix("-http")
        if system in OURS and system != f"ours-{engine}" and f"ours-{engine}" in args.systems:
            continue  # measured in the gRPC system's session
        log.info("== %s", system)
        system_start = time.perf_counter()
        if system in OURS:
            fronts = [s for s in (f"ours-{engine}", f"ours-{engine}-http") if s in args.systems]
            summaries, cold = run_ours(engine, fronts, rows, workspace, load, run_dir)
            cold_load[f"ours-{engine}"] = cold
        else:
            summaries = run_baseline(BASELINES[system], rows, workspace, args.max_tokens, args.concurrency, run_dir)
        results.extend(summaries)
        log.info("== %s done in %.0f s", system, time.perf_counter() - system_start)
    results.sort(key=_order)
    return {
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "batch_size": BATCH_SIZE,
        "adapters": sorted(set(args.adapters)),
        "traffic": args.traffic,
        "systems": args.systems,
        "date": run_date(),
        "machine": {
            **machine(),
            "load_average_at_start": [round(x, 2) for x in load_at_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "results": results,
        "cold_load": cold_load,
        "ratios": ratios(results, auto_system()),
        "duration_s": round(time.time() - started, 1),
        "logs": str(run_dir),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    processes.install_cleanup()
    try:
        document = run(args)
    except KeyboardInterrupt:
        log.error("interrupted; child processes stopped")
        sys.exit(130)
    finally:
        processes.stop_all()
    text = json.dumps(document, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(markdown(document), file=sys.stderr)
    print(text)
