"""Sustained load on one serving replica: many streams at once for a fixed time over more adapters
than it has engine slots, every answer checked against the one its adapter gives alone, and the
server's memory watched throughout.

The server runs as deployed (`serving-svc`, authentication on, a token in the metadata), with the
default engine for the machine. An answer is greedy, so served alone or in a mixed batch it must be
the same text; any other text counts as a mismatch, any failed call as an error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.serving import processes
from bench.serving.ours import free_port, server_env, serving_svc_command, wait_serving
from bench.serving.traffic import prompt_for
from bench.serving.workspace import Workspace
from loraplane.auth import Role, add_token
from loraplane.proto import common_pb2, serving_pb2, serving_pb2_grpc

log = logging.getLogger("bench.reliability")

RSS_SAMPLE_SECONDS = 5.0


@dataclass(frozen=True)
class LoadPlan:
    streams: int
    seconds: float
    slots: int
    max_tokens: int
    seed: int = 0


@dataclass
class Tally:
    requests: int = 0
    tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


def rss_mib(pid: int) -> float:
    """Resident memory of the process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _request(adapter: str, prompt: str, max_tokens: int) -> serving_pb2.GenerateRequest:
    """The prompt as a user's chat message, as apps send it: the answer runs to max_tokens."""
    return serving_pb2.GenerateRequest(
        adapter=adapter,
        messages=serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=prompt)]),
        sampling=serving_pb2.SamplingParameters(max_tokens=max_tokens, temperature=0.0),
    )


async def _references(
    stub: serving_pb2_grpc.InferenceStub, cases: list[tuple[str, str]], max_tokens: int, metadata: Any
) -> list[str]:
    """Each (adapter, prompt) served alone, one after the other: the answers the load must reproduce."""
    answers = []
    for adapter, prompt in cases:
        reply = await stub.Generate(_request(adapter, prompt, max_tokens), metadata=metadata, timeout=300)
        answers.append(reply.text)
    return answers


async def _stream_until(
    stub: serving_pb2_grpc.InferenceStub,
    cases: list[tuple[str, str]],
    expected: list[str],
    plan: LoadPlan,
    metadata: Any,
    deadline: float,
    rng: random.Random,
    tally: Tally,
) -> None:
    while time.monotonic() < deadline:
        index = rng.randrange(len(cases))
        adapter, prompt = cases[index]
        text: list[str] = []
        try:
            async for chunk in stub.GenerateStream(
                _request(adapter, prompt, plan.max_tokens), metadata=metadata, timeout=600
            ):
                text.append(chunk.delta)
                if chunk.HasField("usage"):
                    tally.tokens += chunk.usage.completion_tokens
        except grpc.aio.AioRpcError as exc:
            tally.error(exc.code().name)
            continue
        tally.requests += 1
        if "".join(text) != expected[index]:
            tally.mismatches.append(f"{adapter or 'base'}: {''.join(text)!r} != {expected[index]!r}")


async def _sample_rss(pid: int, samples: list[tuple[float, float]], started: float) -> None:
    while True:
        samples.append((round(time.monotonic() - started, 1), round(rss_mib(pid), 1)))
        await asyncio.sleep(RSS_SAMPLE_SECONDS)


async def _drive(
    workspace: Workspace, plan: LoadPlan, port: int, token: str, process: subprocess.Popen[bytes], log_path: Path
) -> dict[str, Any]:
    pid = process.pid
    adapters = sorted(workspace.adapter_dirs)
    cases = [("", prompt_for(0)), *((name, prompt_for(i)) for i, name in enumerate(adapters, start=1))]
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await wait_serving(channel, process, log_path)
        stub = serving_pb2_grpc.InferenceStub(channel)
        log.info("reference answers: %d adapters and the base model, one request at a time", len(adapters))
        expected = await _references(stub, cases, plan.max_tokens, metadata)
        rss_before = rss_mib(pid)
        log.info("load: %d streams for %.0f s (RSS %.0f MiB)", plan.streams, plan.seconds, rss_before)
        tally = Tally()
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        sampler = asyncio.create_task(_sample_rss(pid, samples, started))
        rngs = [random.Random(plan.seed * 1000 + i) for i in range(plan.streams)]
        deadline = started + plan.seconds
        await asyncio.gather(
            *(_stream_until(stub, cases, expected, plan, metadata, deadline, rng, tally) for rng in rngs)
        )
        elapsed = time.monotonic() - started
        sampler.cancel()
        rss_after = rss_mib(pid)
    half = [rss for at, rss in samples if at >= plan.seconds / 2] or [rss_after]
    return {
        "adapters": len(adapters),
        "engine_slots": plan.slots,
        "streams": plan.streams,
        "seconds": round(elapsed, 1),
        "max_tokens": plan.max_tokens,
        "requests": tally.requests,
        "tokens": tally.tokens,
        "tokens_per_s": round(tally.tokens / elapsed, 1),
        "errors": tally.errors,
        "error_count": sum(tally.errors.values()),
        "mismatches": len(tally.mismatches),
        "mismatch_examples": tally.mismatches[:5],
        "rss_mib": {
            "before_load": round(rss_before, 1),
            "after_load": round(rss_after, 1),
            "peak": max(rss for _, rss in samples) if samples else round(rss_after, 1),
            "growth": round(rss_after - rss_before, 1),
            "growth_second_half": round(half[-1] - half[0], 1),
        },
        "rss_samples": samples,
    }


def run_load(workspace: Workspace, plan: LoadPlan, work_dir: Path) -> dict[str, Any]:
    """Start serving-svc on the workspace's store, drive it, stop it; the summary."""
    data_dir = work_dir / "reliability-data"
    token = add_token(data_dir / "tokens.json", "load", [Role.GENERATE], replace=True)
    port, http_port = free_port(), free_port()
    env = {
        **server_env("auto", workspace, data_dir, (port, http_port), plan.slots),
        "LORAPLANE_AUTH": "tokens",
        "LORAPLANE_AUTH_TOKENS_FILE": str(data_dir / "tokens.json"),
    }
    log_path = work_dir / "logs" / "reliability-serving.log"
    with processes.running([serving_svc_command()], env=env, log_path=log_path, grace_s=30.0) as process:
        return asyncio.run(_drive(workspace, plan, port, token, process, log_path))
