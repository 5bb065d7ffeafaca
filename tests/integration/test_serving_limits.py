"""Limits a replica enforces at the edges: back-pressure past its request bounds, and settings it
cannot start with (a clear message naming the setting, no stack trace)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from loraplane.errors import StartupError
from loraplane.proto import serving_pb2, serving_pb2_grpc
from serving_svc.server import ServingServer, create_server
from tests.support.serving_settings import tiny_serving_settings


@pytest.fixture(scope="module")
async def narrow_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServingServer]:
    """One request generating and one waiting, at most."""
    settings = tiny_serving_settings(
        tiny_model_dir,
        tmp_path_factory.mktemp("narrow"),
        max_concurrent_requests=1,
        max_queued_requests=1,
        max_model_len=512,
    )
    server = create_server(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(1.0)


async def test_requests_past_the_limits_are_resource_exhausted(narrow_server: ServingServer) -> None:
    # As long as the tiny model's context allows: the first request must still hold its place when
    # the third arrives, even on a loaded machine.
    long = serving_pb2.SamplingParameters(temperature=0, max_tokens=480, min_tokens=480, ignore_eos=True)
    request = serving_pb2.GenerateRequest(prompt="The capital of France is", sampling=long)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{narrow_server.port}") as channel:
        stub = serving_pb2_grpc.InferenceStub(channel)
        generating = stub.GenerateStream(request)
        await generating.read()  # holds the one place in the engine
        waiting = asyncio.ensure_future(stub.Generate(request))
        while narrow_server.admission.queued == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(request)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "LORAPLANE_MAX_QUEUED_REQUESTS" in (info.value.details() or "")
        generating.cancel()
        reply = await waiting  # the queued request gets the place once the first leaves
        assert reply.usage.completion_tokens == 480


async def test_a_context_longer_than_the_model_fails_at_start_naming_the_setting(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = create_server(
        tiny_serving_settings(tiny_model_dir, tmp_path, max_model_len=100_000, default_max_tokens=16)
    )
    with pytest.raises(StartupError, match="LORAPLANE_MAX_MODEL_LEN=100000 exceeds the model's context length"):
        await server.start()


async def test_vllm_without_room_for_its_cache_fails_at_start_naming_the_setting(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    server = create_server(
        tiny_serving_settings(
            tiny_model_dir, tmp_path, serving_engine="vllm", dtype="float32", gpu_memory_utilization=0.001
        )
    )
    with pytest.raises(StartupError, match="raise LORAPLANE_GPU_MEMORY_UTILIZATION \\(now 0.001\\)"):
        await server.start()


def test_the_entry_point_reports_a_bad_setting_without_a_stack_trace(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LORAPLANE_DATA_DIR": str(tmp_path),
        "LORAPLANE_BASE_MODEL": str(tmp_path / "no-such-model"),
        "LORAPLANE_SERVING_ADDRESS": "127.0.0.1:0",
        "LORAPLANE_SERVING_METRICS_PORT": "0",
        "LORAPLANE_SERVING_HTTP_PORT": "0",
        "LORAPLANE_SERVING_ENGINE": "transformers",
    }
    done = subprocess.run(
        [sys.executable, "-m", "serving_svc.main"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "no-such-model needs config.json" in done.stderr and "set LORAPLANE_BASE_MODEL" in done.stderr
    assert "Traceback" not in done.stderr
