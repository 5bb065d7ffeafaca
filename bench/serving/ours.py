"""Our server, measured from outside: `serving-svc` as a subprocess, driven over gRPC streaming.

The server runs exactly as deployed (console script, settings from LORAPLANE_* variables, a file
store the trainer's way), so what is measured includes gRPC, admission, the adapter manager and
the engine. One server process serves every row that fits its adapter slots (max(N, 8)); a row
needing more slots gets a fresh server, as does each engine. Adapters are loaded by a warm-up
before any row is timed; loading a never-seen adapter is measured on its own afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.serving import processes
from bench.serving.measure import RequestResult, RowRun, failed_row, merged, summarize
from bench.serving.traffic import PlannedRequest, RowPlan, prompt_for
from bench.serving.workers import WARMUP_ROUNDS, WARMUP_TOKENS
from bench.serving.workspace import RANK, Workspace, adapter_bytes
from loraplane.proto import common_pb2, serving_pb2, serving_pb2_grpc

log = logging.getLogger("bench.serving")

MIN_SLOTS = 8
BASE_MODEL_NAME = "bench"
MAX_MODEL_LEN = 512
COLD_LOAD_REPEATS = 3
STARTUP_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Load:
    """How a row is driven: tokens per request, requests in flight at most, and how many times each
    row is driven through each front of our server."""

    max_tokens: int
    concurrency: int
    repeats: int = 1

    def sampling(self, max_tokens: int | None = None) -> serving_pb2.SamplingParameters:
        """Greedy, and exactly `max_tokens` tokens: every system does the same amount of work."""
        tokens = max_tokens or self.max_tokens
        return serving_pb2.SamplingParameters(temperature=0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)


def slots_for(adapters: int) -> int:
    """Adapter slots of the server that runs a row with `adapters` adapters: all of them fit."""
    return max(adapters, MIN_SLOTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_svc_command() -> str:
    """The console script of the environment this benchmark runs in, not whichever is on PATH."""
    beside = Path(sys.executable).with_name("serving-svc")
    return str(beside) if beside.exists() else (shutil.which("serving-svc") or "serving-svc")


def server_env(engine: str, workspace: Workspace, data_dir: Path, ports: tuple[int, int], slots: int) -> dict[str, str]:
    """The settings of our server for a row group: gRPC and HTTP on `ports`."""
    return {
        **os.environ,
        "LORAPLANE_DATA_DIR": str(data_dir),
        "LORAPLANE_STORE_URI": workspace.store_uri,
        "LORAPLANE_BASE_MODEL": str(workspace.model_dir),
        "LORAPLANE_BASE_MODEL_NAME": BASE_MODEL_NAME,
        "LORAPLANE_SERVING_ADDRESS": f"127.0.0.1:{ports[0]}",
        "LORAPLANE_SERVING_METRICS_PORT": "0",
        "LORAPLANE_SERVING_HTTP_PORT": str(ports[1]),
        "LORAPLANE_SERVING_ENGINE": engine,
        "LORAPLANE_MAX_LOADED_ADAPTERS": str(slots),
        "LORAPLANE_MAX_LORA_RANK": str(RANK),
        "LORAPLANE_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        "LORAPLANE_AUTH": "off",  # the baselines have none either; a token check is one SHA-256 per call
    }


def _request(planned: PlannedRequest, sampling: serving_pb2.SamplingParameters) -> serving_pb2.GenerateRequest:
    messages = serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=planned.prompt)])
    return serving_pb2.GenerateRequest(adapter=planned.adapter or "", messages=messages, sampling=sampling)


async def _one(
    stub: serving_pb2_grpc.InferenceStub, planned: PlannedRequest, sampling: serving_pb2.SamplingParameters
) -> RequestResult:
    """Send one streaming request; TTFT is the first message that carries text."""
    start = time.perf_counter()
    result = RequestResult()
    try:
        async for message in stub.GenerateStream(_request(planned, sampling), timeout=REQUEST_TIMEOUT_S):
            if result.ttft_s is None and message.delta:
                result.ttft_s = time.perf_counter() - start
            if message.HasField("usage"):
                result.tokens = message.usage.completion_tokens
    except grpc.aio.AioRpcError as exc:
        result.error = f"{exc.code().name}: {exc.details()}"
        return result
    result.latency_s = time.perf_counter() - start
    return result


async def drive(
    send: Callable[[PlannedRequest], Awaitable[RequestResult]], requests: list[PlannedRequest], concurrency: int
) -> tuple[list[RequestResult], float]:
    """All requests at once, at most `concurrency` in flight; results in request order, wall time."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(planned: PlannedRequest) -> RequestResult:
        async with gate:
            return await send(planned)

    start = time.perf_counter()
    results = await asyncio.gather(*(gated(planned) for planned in requests))
    return list(results), time.perf_counter() - start


def grpc_sender(
    stub: serving_pb2_grpc.InferenceStub, sampling: serving_pb2.SamplingParameters
) -> Callable[[PlannedRequest], Awaitable[RequestResult]]:
    return lambda planned: _one(stub, planned, sampling)


def http_sender(
    session: aiohttp.ClientSession, base_url: str, max_tokens: int
) -> Callable[[PlannedRequest], Awaitable[RequestResult]]:
    """Streamed chat completions on the OpenAI-compatible API, the same work as the gRPC requests."""

    async def one(planned: PlannedRequest) -> RequestResult:
        body = {
            "model": planned.adapter or BASE_MODEL_NAME,
            "messages": [{"role": "user", "content": planned.prompt}],
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        result = RequestResult()
        async with session.post(f"{base_url}/v1/chat/completions", json=body) as reply:
            if reply.status != 200:
                result.error = f"HTTP {reply.status}: {(await reply.text())[:200]}"
                return result
            async for line in reply.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[len(b"data: ") :])
                if result.ttft_s is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                    result.ttft_s = time.perf_counter() - start
                if event.get("usage"):
                    result.tokens = event["usage"]["completion_tokens"]
        result.latency_s = time.perf_counter() - start
        return result

    return one


async def wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the server reports SERVING; fail at once if it exits, as a bad setting makes it do."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serving-svc exited with code {process.returncode}: {processes.log_tail(log_path, 6)}")
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.25)
    raise RuntimeError(f"serving-svc was not SERVING after {STARTUP_TIMEOUT_S:.0f} s")


async def warm_up(stub: serving_pb2_grpc.InferenceStub, adapters: list[str], load: Load) -> None:
    """Load every adapter and run each once more, so no timed request pays a load or a first step."""
    requests = [PlannedRequest(name, prompt_for(i)) for i, name in enumerate([None, *adapters])]
    send = grpc_sender(stub, load.sampling(min(WARMUP_TOKENS, load.max_tokens)))
    for _ in range(WARMUP_ROUNDS):
        results, _ = await drive(send, requests, load.concurrency)
        failures = [r.error for r in results if r.error]
        if failures:
            raise RuntimeError(f"warm-up failed for {len(failures)} of {len(results)} requests: {failures[0]}")


def add_traffic_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark that drives one server per setting with the same streamed traffic."""
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--rounds", type=int, default=2, help="servers started per setting, alternating")
    parser.add_argument("--requests", type=int, default=64, help="requests per server")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=Path("~/.cache/loraplane-bench"))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")


def raise_on_failures(results: list[RequestResult], setting: str) -> None:
    """A run with failed requests measures nothing: stop, naming the setting and the first error."""
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed with {setting}: {failed[0]}")


async def measure_traffic(
    target: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    adapters: list[str],
    load: Load,
    requests: int,
    before: Callable[[serving_pb2_grpc.InferenceStub], Awaitable[None]] | None = None,
    warm_also: Sequence[str] = (),
) -> tuple[list[RequestResult], float]:
    """Once the server at `target` is serving (and `before` has run on it) and warm, `requests` streamed
    requests spread over `adapters`; their results and wall time. `warm_also`: more adapters (pinned
    versions) the timed requests may reach, warmed with the rest."""
    async with grpc.aio.insecure_channel(target) as channel:
        await wait_serving(channel, process, log_path)
        stub = serving_pb2_grpc.InferenceStub(channel)
        if before is not None:
            await before(stub)
        await warm_up(stub, [*adapters, *warm_also], load)
        planned = [PlannedRequest(adapters[i % len(adapters)], prompt_for(i)) for i in range(requests)]
        return await drive(grpc_sender(stub, load.sampling()), planned, load.concurrency)


async def _cold_load(
    stub: serving_pb2_grpc.InferenceStub, workspace: Workspace, engine: str, warm_adapter: str | None, load: Load
) -> dict[str, Any]:
    """For each cold-adapter shape: TTFT of a just-published adapter against a loaded one, one
    request at a time, 3 times over."""
    measured: dict[str, Any] = {}
    run_id = uuid.uuid4().hex[:8]
    for shape, sources in workspace.cold_dirs.items():
        warm: list[float] = []
        cold: list[float] = []
        for index, source in enumerate(sources[:COLD_LOAD_REPEATS]):
            name = f"cold-{engine}-{run_id}-{shape.replace(',', '-')}-{index}"
            await asyncio.to_thread(workspace.publish, source, name)
            try:
                for adapter, into in ((warm_adapter, warm), (name, cold)):
                    result = await _one(stub, PlannedRequest(adapter, prompt_for(index)), load.sampling())
                    if result.error is not None or result.ttft_s is None:
                        raise RuntimeError(f"cold-load request to {adapter or 'the base model'} failed: {result.error}")
                    into.append(result.ttft_s)
            finally:
                workspace.unpublish(name)
        warm_median, cold_median = statistics.median(warm), statistics.median(cold)
        measured[shape] = {
            "adapter_bytes": adapter_bytes(sources[0]),
            "warm_adapter": warm_adapter,
            "warm_ttft_s": [round(t, 4) for t in warm],
            "cold_ttft_s": [round(t, 4) for t in cold],
            "warm_ttft_median_s": round(warm_median, 4),
            "cold_ttft_median_s": round(cold_median, 4),
            "cold_load_ms": round((cold_median - warm_median) * 1000, 1),
        }
    return measured


async def _session(
    ports: tuple[int, int],
    process: subprocess.Popen[bytes],
    log_path: Path,
    workspace: Workspace,
    engine: str,
    rows: list[RowPlan],
    load: Load,
    on_row: Callable[[tuple[str, RowRun]], None],
    systems: list[str],
    measure_cold: bool,
) -> dict[str, Any] | None:
    """Warm up, then drive every row through each of `systems` (gRPC, HTTP) in turn, first one then
    the other leading, so the two fronts share the same server and the same moments of the machine;
    `load.repeats` sweeps over all the rows, so the rows share them too (adapters against the base
    model is a ratio of two rows)."""
    grpc_port, http_port = ports
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S), connector=aiohttp.TCPConnector(limit=0)
        ) as session,
    ):
        await wait_serving(channel, process, log_path)
        stub = serving_pb2_grpc.InferenceStub(channel)
        senders = {
            f"ours-{engine}": grpc_sender(stub, load.sampling()),
            f"ours-{engine}-http": http_sender(session, f"http://127.0.0.1:{http_port}", load.max_tokens),
        }
        adapters = sorted({name for row in rows for name in row.adapter_names})
        await warm_up(stub, adapters, load)
        for repeat in range(load.repeats):  # sweeps: a slow spell of the machine falls on every row alike
            for index, row in enumerate(rows):
                for system in systems if (repeat + index) % 2 == 0 else systems[::-1]:  # each front leads a row in turn
                    log.info("  %s: %d adapters, %s traffic (run %d)", system, row.adapters, row.traffic, repeat + 1)
                    results, wall = await drive(senders[system], list(row.requests), load.concurrency)
                    on_row((system, RowRun(row.adapters, row.traffic, wall, results)))
        if not measure_cold:
            return None
        return await _cold_load(stub, workspace, engine, adapters[0] if adapters else None, load)


def _serve_group(
    engine: str,
    slots: int,
    rows: list[RowPlan],
    workspace: Workspace,
    load: Load,
    run_dir: Path,
    on_row: Callable[[tuple[str, RowRun]], None],
    systems: list[str],
    measure_cold: bool,
) -> dict[str, Any] | None:
    """One server process for `rows`: start, wait until SERVING, warm up, measure, SIGTERM."""
    log_path = run_dir / f"ours-{engine}-{slots}-slots.log"
    data_dir = Path(tempfile.mkdtemp(prefix=f"data-{engine}-", dir=run_dir))
    ports = (free_port(), free_port())
    env = server_env(engine, workspace, data_dir, ports, slots)
    log.info("ours-%s: starting serving-svc with %d adapter slots (log: %s)", engine, slots, log_path)
    try:
        with processes.running([serving_svc_command()], env=env, log_path=log_path, grace_s=30.0) as process:
            return asyncio.run(
                _session(ports, process, log_path, workspace, engine, rows, load, on_row, systems, measure_cold)
            )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run_ours(
    engine: str, systems: list[str], rows: list[RowPlan], workspace: Workspace, load: Load, run_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every row on `engine` through each of `systems` (`ours-ENGINE` over gRPC, `ours-ENGINE-http`
    over the OpenAI-compatible API), a server per slot count, then cold load on the last server.

    A failing server fails only its own rows (and the cold-load measurement if it was the last);
    the returned rows say why, and the next server is still tried.
    """
    summaries: list[dict[str, Any]] = []
    cold: dict[str, Any] = {"error": "not measured"}
    ordered = sorted(rows, key=lambda row: slots_for(row.adapters))
    groups = [(slots, list(group)) for slots, group in groupby(ordered, key=lambda row: slots_for(row.adapters))]
    for index, (slots, group) in enumerate(groups):
        done: list[tuple[str, RowRun]] = []
        last = index == len(groups) - 1
        try:
            measured = _serve_group(engine, slots, group, workspace, load, run_dir, done.append, systems, last)
            if measured is not None:
                cold = {"slots": slots, **measured}
        except Exception as exc:  # noqa: BLE001 - any failure is this system's result, not the benchmark's end
            log.error("ours-%s with %d slots failed: %s", engine, slots, exc)
            error = f"{type(exc).__name__}: {exc}"
            if last:
                cold = {"slots": slots, "error": error}
            finished = {(system, run.adapters, run.traffic) for system, run in done}
            summaries.extend(
                failed_row(system, row.adapters, row.traffic, len(row.requests), error)
                for row in group
                for system in systems
                if (system, row.adapters, row.traffic) not in finished
            )
        summaries.extend(_summarize_repeats(done))
    return summaries, cold


def _summarize_repeats(done: list[tuple[str, RowRun]]) -> list[dict[str, Any]]:
    """One result row per system and row, over all its repeats, with each repeat's tokens/s beside."""
    runs: dict[tuple[str, int, str], list[RowRun]] = {}
    for system, run in done:
        runs.setdefault((system, run.adapters, run.traffic), []).append(run)
    summaries = []
    for (system, _, _), repeats in runs.items():
        summary = summarize(system, merged(repeats))
        if len(repeats) > 1:
            summary["tokens_per_s_runs"] = [summarize(system, run)["tokens_per_s"] for run in repeats]
        summaries.append(summary)
    return summaries
