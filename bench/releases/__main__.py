"""`python -m bench.releases`: what a release costs the callers, with no release, a 10% canary and a shadow.

The same server (`serving-svc`, default engine, automatic release decisions off so a trial cannot end
mid-run) is started once per setting, alternately, `--rounds` times each, with 8 adapter names of two
versions each (different weights), and driven with the same streaming traffic. Before the traffic, every
name's release is set: none (the names answer with v2), a canary of v2 on 10% of callers over stable
v1, or v2 in the shadow of v1. Prints JSON: per setting, throughput (requests/s), p50/p99 latency and
time to first token, and for shadow what became of the shadow requests (compared, or shed: busy, no_slot or
preempted) from the replica's metrics; and the ratios against no release (targets: canary throughput
within 3% of none; caller p99 with shadow within 10%). Each round's figures are kept too
(`per_round`): their spread for one setting says how large a difference the run can resolve.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families

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
from loraplane import wire
from loraplane.proto import common_pb2, serving_pb2, serving_pb2_grpc
from loraplane.releases import ReleaseAction

log = logging.getLogger("bench.releases")

ADAPTERS = 8
CANARY_SHARE = 0.1
SETTINGS = ("none", "canary", "shadow")


def _publish(workspace: Workspace, prefix: str) -> list[str]:
    """`ADAPTERS` names, each with v1 and v2 from two of the workspace's adapters."""
    sources = list(workspace.adapter_dirs.values())
    names = [f"{prefix}-{index}" for index in range(ADAPTERS)]
    for index, name in enumerate(names):
        workspace.publish(sources[index], name)
        workspace.publish(sources[index + ADAPTERS], name)
    return names


def _release(setting: str, names: list[str]) -> Callable[[serving_pb2_grpc.InferenceStub], Awaitable[None]]:
    async def start(stub: serving_pb2_grpc.InferenceStub) -> None:
        if setting == "none":
            return
        mode = common_pb2.RELEASE_MODE_SHADOW if setting == "shadow" else common_pb2.RELEASE_MODE_CANARY
        for name in names:
            request = serving_pb2.UpdateReleaseRequest(
                adapter=name,
                action=wire.RELEASE_ACTION.encode(ReleaseAction.START),
                candidate_version=2,
                stable_version=1,
                mode=mode,
                canary_share=CANARY_SHARE,
            )
            await stub.UpdateRelease(request)

    return start


def _shadow_outcomes(http_port: int) -> dict[str, float]:
    """The replica's shadow requests by outcome, summed over the adapters."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    outcomes: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "loraplane_release_shadow_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels["outcome"]
                    outcomes[outcome] = outcomes.get(outcome, 0.0) + sample.value
    return outcomes


def _run(
    workspace: Workspace, setting: str, names: list[str], load: Load, requests: int, run_dir: Path
) -> tuple[list[RequestResult], float, dict[str, float]]:
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=run_dir))
    port, http_port = free_port(), free_port()
    env = {
        **server_env("auto", workspace, data_dir, (port, http_port), ADAPTERS * 2),
        "LORAPLANE_RELEASE_AUTOMATIC": "false",
    }
    log_path = run_dir / f"serving-{setting}.log"
    with processes.running([serving_svc_command()], env=env, log_path=log_path, grace_s=30.0) as process:
        target = f"127.0.0.1:{port}"
        results, wall = asyncio.run(
            measure_traffic(
                target,
                process,
                log_path,
                names,
                load,
                requests,
                before=_release(setting, names),
                # Both versions of every name loaded and stepped once whatever the setting: no timed request
                # pays the first load of a candidate the warm-up's callers did not happen to reach.
                warm_also=[f"{name}@v{version}" for name in names for version in (1, 2)],
            )
        )
        shadow = _shadow_outcomes(http_port) if setting == "shadow" else {}
    shutil.rmtree(data_dir, ignore_errors=True)
    raise_on_failures(results, f"release {setting}")
    return results, wall, shadow


def _summary(results: list[RequestResult], wall: float) -> dict[str, Any]:
    """Latency percentiles and requests/s of `results`, sent over `wall` seconds."""
    return {**latency_summary(results), "requests_per_s": len(results) / wall if wall else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_traffic_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    processes.install_cleanup()
    workspace = prepare(cast(ModelName, args.model), args.work_dir, ADAPTERS * 2, 0)
    load = Load(max_tokens=args.max_tokens, concurrency=args.concurrency)
    run_dir = Path(tempfile.mkdtemp(prefix="releases-bench-"))
    results: dict[str, list[RequestResult]] = {setting: [] for setting in SETTINGS}
    walls: dict[str, float] = dict.fromkeys(SETTINGS, 0.0)
    per_round: dict[str, list[dict[str, Any]]] = {setting: [] for setting in SETTINGS}
    shadow: dict[str, float] = {}
    published: list[str] = []
    try:
        for round_index in range(args.rounds):
            for setting in SETTINGS:
                log.info("round %d: release %s", round_index + 1, setting)
                names = _publish(workspace, f"release-bench-{round_index}-{setting}")
                published += names
                measured, wall, outcomes = _run(workspace, setting, names, load, args.requests, run_dir)
                results[setting] += measured
                walls[setting] += wall
                per_round[setting].append(_summary(measured, wall))
                for outcome, count in outcomes.items():
                    shadow[outcome] = shadow.get(outcome, 0.0) + count
    finally:
        for name in published:
            workspace.unpublish(name)
    summaries = {setting: _summary(results[setting], walls[setting]) for setting in SETTINGS}
    none = summaries["none"]

    def ratios(setting: str) -> dict[str, float]:
        return {key: summaries[setting][key] / none[key] for key in none if key != "requests" and none[key]}

    report: dict[str, Any] = {
        "date": run_date(),
        "machine": machine(),
        "model": args.model,
        "adapters": ADAPTERS,
        "canary_share": CANARY_SHARE,
        "load": vars(load),
        "rounds": args.rounds,
        **{f"release_{setting}": summaries[setting] for setting in SETTINGS},
        "per_round": per_round,
        "shadow_requests": shadow,
        "canary_over_none": ratios("canary"),
        "shadow_over_none": ratios("shadow"),
        "logs": str(run_dir),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
