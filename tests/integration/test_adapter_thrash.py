"""Forty adapters through two engine slots and four host-memory copies under concurrent load, on
both engines: requests wait for a slot rather than fail, adapters are evicted, offloaded and loaded
again and again, and every answer is the one its adapter gives when served alone."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest

from loraplane.artifact import ArtifactRepository
from loraplane.fingerprint import base_model_fingerprint
from loraplane.proto import serving_pb2, serving_pb2_grpc
from loraplane.storage import FileStore
from serving_svc.server import create_server
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.serving_settings import tiny_serving_settings

ADAPTERS = 40
SLOTS = 2
HOST_COPIES = 4
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def store_with_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("thrash")
    repository = ArtifactRepository(FileStore(data_dir / "store"))
    fingerprint = base_model_fingerprint(tiny_model_dir)
    sources = tmp_path_factory.mktemp("thrash-sources")
    for index in range(ADAPTERS):
        source = make_adapter(tiny_model_dir, sources / f"a{index}", seed=100 + index)
        publish_adapter(repository, source, f"a{index}", fingerprint)
    return data_dir / "store"


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
async def test_forty_adapters_through_two_slots_answer_as_each_does_alone(
    engine: str, tiny_model_dir: Path, store_with_adapters: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    settings = tiny_serving_settings(
        tiny_model_dir,
        tmp_path,
        store_uri=f"file://{store_with_adapters}",
        serving_engine=engine,
        dtype="float32",
        max_loaded_adapters=SLOTS,
        max_cpu_adapters=HOST_COPIES,
    )
    server = create_server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = serving_pb2_grpc.InferenceStub(channel)

            async def answer(adapter: str) -> str:
                request = serving_pb2.GenerateRequest(
                    adapter=adapter, prompt=PROMPT, sampling=serving_pb2.SamplingParameters(max_tokens=6, temperature=0)
                )
                return (await stub.Generate(request, timeout=300)).text

            alone = {f"a{i}": await answer(f"a{i}") for i in range(ADAPTERS)}
            assert len(set(alone.values())) > ADAPTERS // 2, "the adapters must answer differently"
            order = [f"a{i}" for i in range(ADAPTERS)] * 2
            random.Random(0).shuffle(order)
            together = await asyncio.gather(*(answer(adapter) for adapter in order))
            assert [alone[adapter] for adapter in order] == together

            registry = server.metrics.registry

            def metric(name: str, **labels: str) -> float:
                return registry.get_sample_value(name, labels) or 0.0

            # Each pass loads every adapter but the SLOTS it starts with, and each such load evicts one;
            # the concurrent pass may serve both requests for an adapter with one load.
            assert metric("loraplane_serving_adapter_evictions_total", tier="engine") >= 2 * (ADAPTERS - SLOTS)
            assert len(server.adapters.loaded()) == SLOTS
            listed = (await stub.ListAdapters(serving_pb2.ListAdaptersRequest())).adapters
            in_host = [info.ref.name for info in listed if info.tier == serving_pb2.ADAPTER_TIER_CPU]
            restored = metric("loraplane_serving_adapter_load_duration_seconds_count", source="cpu")
            if not server.engine.keeps_host_copies:  # vLLM on a CPU (VllmEngine.keeps_host_copies)
                assert server.adapters.policy.max_cpu == 0 and not in_host and not restored
                return
            assert len(in_host) == HOST_COPIES
            assert await answer(in_host[0]) == alone[in_host[0]], "same answer after host memory"
            assert metric("loraplane_serving_adapter_load_duration_seconds_count", source="cpu") == restored + 1
    finally:
        await server.stop(1.0)
