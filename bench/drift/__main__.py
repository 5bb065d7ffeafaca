"""`python -m bench.drift`: what live drift monitoring costs a request, with it on and off, in one run.

The same server (`serving-svc`, default engine, its documented defaults otherwise) is started with
LORAPLANE_DRIFT_MONITORING off and on, alternately, `--rounds` times each, and driven with the
same streaming traffic over 8 adapters that have a real drift reference. Alternating spreads the
machine's noise over both settings. Prints JSON: p50/p99 latency and time to first token per
setting, and on / off ratios (the target: p50 latency on <= 1.02x off).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import cast

from bench.machine import emit, machine, run_date
from bench.serving import processes
from bench.serving.measure import RequestResult, latency_summary
from bench.serving.ours import (
    Load,
    add_traffic_arguments,
    free_port,
    measure_traffic,
    raise_on_failures,
    server_env,
    serving_svc_command,
)
from bench.serving.workspace import ModelName, Workspace, prepare
from loraplane.artifact import ADAPTER_FILES, PROFILE_FILE
from loraplane.drift import Profile, PromptFrame, Sample, observe

log = logging.getLogger("bench.drift")

ADAPTERS = 8


def _publish_with_reference(workspace: Workspace, scratch: Path) -> list[str]:
    """The workspace's adapters published again under new names, each with a non-empty drift reference
    (prompts and answers shaped like the benchmark's), so every request is profiled and compared."""
    records = [
        observe(Sample(list(range(index, index + 40)), list(range(32)), -1.5 * 32, -4.0 * 39), PromptFrame(), None)
        for index in range(64)
    ]
    reference = Profile(prompts=[record.prompt for record in records], answers=records)
    names = []
    for index, source in enumerate(list(workspace.adapter_dirs.values())[:ADAPTERS]):
        folder = scratch / f"drift-{index}"
        folder.mkdir()
        for name in ADAPTER_FILES:
            if name != PROFILE_FILE:
                shutil.copy(source / name, folder / name)
        reference.save(folder / PROFILE_FILE)
        names.append(f"drift-bench-{index}")
        workspace.publish(folder, names[-1])
    return names


def _run(
    workspace: Workspace, adapters: list[str], drift: bool, load: Load, requests: int, run_dir: Path
) -> list[RequestResult]:
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=run_dir))
    port = free_port()
    env = {
        **server_env("auto", workspace, data_dir, (port, free_port()), ADAPTERS),
        "LORAPLANE_DRIFT_MONITORING": str(drift).lower(),
    }
    log_path = run_dir / f"serving-drift-{'on' if drift else 'off'}.log"
    with processes.running([serving_svc_command()], env=env, log_path=log_path, grace_s=30.0) as process:
        results, _ = asyncio.run(measure_traffic(f"127.0.0.1:{port}", process, log_path, adapters, load, requests))
    shutil.rmtree(data_dir, ignore_errors=True)
    raise_on_failures(results, f"drift {'on' if drift else 'off'}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_traffic_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    processes.install_cleanup()
    workspace = prepare(cast(ModelName, args.model), args.work_dir, ADAPTERS, 0)
    load = Load(max_tokens=args.max_tokens, concurrency=args.concurrency)
    run_dir = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    adapters = _publish_with_reference(workspace, run_dir)
    measured: dict[bool, list[RequestResult]] = {False: [], True: []}
    try:
        for round_index in range(args.rounds):
            for drift in (False, True):
                log.info("round %d: drift monitoring %s", round_index + 1, "on" if drift else "off")
                measured[drift] += _run(workspace, adapters, drift, load, args.requests, run_dir)
    finally:
        for name in adapters:
            workspace.unpublish(name)
    off, on = latency_summary(measured[False]), latency_summary(measured[True])
    ratios = {key: on[key] / off[key] for key in off if key != "requests" and off[key]}
    report = {
        "date": run_date(),
        "machine": machine(),
        "model": args.model,
        "adapters": ADAPTERS,
        "load": vars(load),
        "rounds": args.rounds,
        "drift_off": off,
    }
    report |= {"drift_on": on, "on_over_off": ratios, "logs": str(run_dir)}
    emit(report, args.out)


if __name__ == "__main__":
    main()
