"""The serving replica over real gRPC on loopback, with the real vLLM engine on the tiny model.

Adapters are made with peft (random, non-zero B weights so they change the output) and
published to a file store the way the trainer publishes them; greedy outputs are checked
against peft + transformers on the same weights.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loraplane import convert
from loraplane.artifact import ArtifactRepository
from loraplane.fingerprint import base_model_fingerprint
from loraplane.proto import common_pb2, serving_pb2, serving_pb2_grpc
from loraplane.storage import FileStore
from loraplane.types import SamplingParameters
from serving_svc.server import ServingServer, create_server
from serving_svc.settings import ServingSettings
from tests.support.adapters import RANK, make_adapter, publish_adapter
from tests.support.greedy import greedy_reference, reference_model

PROMPT = "The capital of France is"
NEW_TOKENS = 8
GREEDY = serving_pb2.SamplingParameters(temperature=0, max_tokens=NEW_TOKENS, logprobs=True)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _reference_greedy(base_dir: Path, adapter_dir: Path | None, prompt_ids: list[int]) -> list[int]:
    """Greedy continuation by transformers (+ peft when an adapter is given)."""
    return greedy_reference(reference_model(base_dir, adapter_dir), prompt_ids, NEW_TOKENS)


@dataclass
class Serving:
    server: ServingServer
    stub: serving_pb2_grpc.InferenceStub
    health: health_pb2_grpc.HealthStub
    repository: ArtifactRepository
    sources: dict[str, Path]
    health_while_loading: int

    async def health_status(self) -> int:
        return (await self.health.Check(health_pb2.HealthCheckRequest())).status

    async def generate(self, adapter: str = "", prompt: str = PROMPT) -> serving_pb2.GenerateResponse:
        return await self.stub.Generate(serving_pb2.GenerateRequest(adapter=adapter, prompt=prompt, sampling=GREEDY))


@pytest.fixture(scope="module")
def adapter_sources(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapter-sources")
    return {
        name: make_adapter(tiny_model_dir, root / name, seed)
        for name, seed in (("alpha-v1", 1), ("alpha-v2", 2), ("beta", 3), ("gamma", 4))
    } | {"delta-dora": make_adapter(tiny_model_dir, root / "delta-dora", 5, dora=True)}


@pytest.fixture(scope="module", params=["vllm", "transformers"])
async def serving(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    adapter_sources: dict[str, Path],
) -> AsyncIterator[Serving]:
    data_dir = tmp_path_factory.mktemp("serving")
    repository = ArtifactRepository(FileStore(data_dir / "store"))
    fingerprint = base_model_fingerprint(tiny_model_dir)
    publish_adapter(repository, adapter_sources["alpha-v1"], "alpha", fingerprint)
    publish_adapter(repository, adapter_sources["beta"], "beta", fingerprint)
    publish_adapter(repository, adapter_sources["gamma"], "gamma", fingerprint)
    publish_adapter(repository, adapter_sources["beta"], "foreign", "sha256:" + "0" * 64)
    publish_adapter(repository, adapter_sources["delta-dora"], "delta", fingerprint, method="dora")
    settings = ServingSettings(
        data_dir=data_dir,
        base_model=tiny_model_dir,
        base_model_name="tiny",
        serving_address="127.0.0.1:0",
        serving_metrics_port=0,
        serving_http_port=0,
        serving_engine=request.param,
        max_loaded_adapters=2,
        max_lora_rank=16,
        max_model_len=256,
        dtype="float32",
        default_max_tokens=16,
        adapter_resolve_ttl_seconds=0.5,
        drift_prompt_scoring_fraction=1.0,
        auth="off",
    )
    with pytest.MonkeyPatch.context() as env:
        # The engine core (spawned by AsyncLLM) then runs the model itself rather than in one more
        # worker process: a few seconds to start instead of many.
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        server = create_server(settings)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            starting = asyncio.create_task(server.start())
            while True:  # the port answers health checks while the model is still loading
                try:
                    status_while_loading = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            await starting
            try:
                yield Serving(
                    server=server,
                    stub=serving_pb2_grpc.InferenceStub(channel),
                    health=health,
                    repository=repository,
                    sources=adapter_sources,
                    health_while_loading=status_while_loading,
                )
            finally:
                await server.stop(1.0)


async def _expect_error(serving: Serving, call: object, code: grpc.StatusCode, field: str = "") -> str:
    """Await `call`, expect `code` (and a message naming `field`), and check the replica is still healthy."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    if field:
        assert details.startswith(f"{field}: "), details
    assert await serving.health_status() == SERVING
    return details


async def test_health_goes_from_not_serving_to_serving(serving: Serving) -> None:
    assert serving.health_while_loading == NOT_SERVING
    assert await serving.health_status() == SERVING
    service = await serving.health.Check(health_pb2.HealthCheckRequest(service="loraplane.v1.Inference"))
    assert service.status == SERVING


async def test_model_info(serving: Serving, tiny_model_dir: Path) -> None:
    info = await serving.stub.ModelInfo(serving_pb2.ModelInfoRequest())
    assert (info.base_model, info.engine, info.max_model_length) == ("tiny", serving.server.engine.name, 256)
    assert info.base_model_fingerprint == base_model_fingerprint(tiny_model_dir)
    assert (info.max_loaded_adapters, info.max_lora_rank) == (2, 16)
    assert info.max_cpu_adapters == (16 if serving.server.engine.keeps_host_copies else 0)


async def test_tokenize_matches_the_tokenizer(serving: Serving, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reply = await serving.stub.Tokenize(serving_pb2.TokenizeRequest(prompt=PROMPT))
    assert list(reply.token_ids) == tokenizer.encode(PROMPT)

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    messages = serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(**t) for t in turns])
    reply = await serving.stub.Tokenize(serving_pb2.TokenizeRequest(messages=messages))
    encoding: Any = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    assert list(reply.token_ids) == encoding["input_ids"]


async def test_greedy_generation_matches_peft_and_the_adapter_changes_it(
    serving: Serving, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    prompt_ids = AutoTokenizer.from_pretrained(tiny_model_dir).encode(PROMPT)
    base = await serving.generate()
    adapted = await serving.generate("alpha@v1")

    base_ids = [entry.token_id for entry in base.logprobs]
    adapted_ids = [entry.token_id for entry in adapted.logprobs]
    assert base_ids == _reference_greedy(tiny_model_dir, None, prompt_ids)
    assert adapted_ids == _reference_greedy(tiny_model_dir, serving.sources["alpha-v1"], prompt_ids)
    assert adapted_ids != base_ids
    assert adapted.text != base.text
    assert (adapted.adapter.name, adapted.adapter.version) == ("alpha", 1)
    assert adapted.adapter.manifest_sha256 and adapted.adapter.uri.endswith("adapters/alpha/v1")
    assert not base.HasField("adapter")
    assert adapted.usage.prompt_tokens == len(prompt_ids)
    assert adapted.usage.completion_tokens == len(adapted_ids)
    expected_reason = (
        serving_pb2.FINISH_REASON_LENGTH if len(adapted_ids) == NEW_TOKENS else serving_pb2.FINISH_REASON_STOP
    )
    assert adapted.finish_reason == expected_reason


async def test_stream_deltas_join_to_the_generated_text(serving: Serving) -> None:
    whole = await serving.generate("alpha@v1")
    request = serving_pb2.GenerateRequest(adapter="alpha@v1", prompt=PROMPT, sampling=GREEDY)
    messages = [message async for message in serving.stub.GenerateStream(request)]

    assert "".join(m.delta for m in messages) == whole.text
    assert [e.token_id for m in messages for e in m.logprobs] == [e.token_id for e in whole.logprobs]
    first, last = messages[0], messages[-1]
    assert (first.adapter.name, first.adapter.version) == ("alpha", 1)
    assert not any(m.HasField("adapter") for m in messages[1:])
    assert last.finish_reason == whole.finish_reason != serving_pb2.FINISH_REASON_UNSPECIFIED
    assert last.usage == whole.usage
    assert all(m.finish_reason == serving_pb2.FINISH_REASON_UNSPECIFIED for m in messages[:-1])


async def test_chat_messages_generate_from_the_rendered_chat_template(serving: Serving, tiny_model_dir: Path) -> None:
    """The answer to chat turns is the model's greedy answer to the template's rendering of them, not to
    their bare text."""
    from transformers import AutoTokenizer

    turns = [{"role": "user", "content": "Hello"}]
    messages = serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(**turn) for turn in turns])
    reply = await serving.stub.Generate(serving_pb2.GenerateRequest(messages=messages, sampling=GREEDY))

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    templated_ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert len(templated_ids) > len(tokenizer.encode("Hello")), "the template adds its markup"
    tokenized = await serving.stub.Tokenize(serving_pb2.TokenizeRequest(messages=messages))
    assert list(tokenized.token_ids) == templated_ids
    assert reply.usage.prompt_tokens == len(templated_ids)
    answer_ids = [entry.token_id for entry in reply.logprobs]
    assert answer_ids == _reference_greedy(tiny_model_dir, None, templated_ids)
    assert reply.usage.completion_tokens == len(answer_ids) >= 1


async def test_a_plain_prompt_reaches_a_chat_trained_adapter_as_its_training_did(
    serving: Serving, tiny_model_dir: Path
) -> None:
    """The rule: to an adapter trained in chat format, a plain prompt is the user turn of the chat
    template; to a raw-trained one, and to the base model, it goes as it is."""
    publish_adapter(
        serving.repository,
        serving.sources["beta"],
        "chatty",
        base_model_fingerprint(tiny_model_dir),
        prompt_format="chat",
    )
    listed = await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest())
    formats = {info.ref.name: info.prompt_format for info in listed.adapters}
    assert (formats["chatty"], formats["beta"]) == ("chat", "raw")

    as_message = common_pb2.ChatMessage(role="user", content=PROMPT)
    plain = await serving.generate("chatty")
    chat = await serving.stub.Generate(
        serving_pb2.GenerateRequest(
            adapter="chatty", messages=serving_pb2.ChatMessages(messages=[as_message]), sampling=GREEDY
        )
    )
    assert [t.token_id for t in plain.logprobs] == [t.token_id for t in chat.logprobs]
    assert plain.usage.prompt_tokens == chat.usage.prompt_tokens > len(PROMPT.split())  # the template's markup

    raw_trained = await serving.generate("beta")
    same_weights_as_chat = await serving.stub.Generate(
        serving_pb2.GenerateRequest(
            adapter="beta", messages=serving_pb2.ChatMessages(messages=[as_message]), sampling=GREEDY
        )
    )
    assert raw_trained.usage.prompt_tokens < same_weights_as_chat.usage.prompt_tokens


async def test_concurrent_first_requests_load_an_adapter_once(serving: Serving, tiny_model_dir: Path) -> None:
    """Under a name of its own, published here, so no other test on this replica has loaded it before."""
    fingerprint = base_model_fingerprint(tiny_model_dir)
    publish_adapter(serving.repository, serving.sources["gamma"], "first-use", fingerprint)
    loads_total = "loraplane_serving_adapter_loads_total"
    assert _metric(await _metrics_text(serving), loads_total, adapter="first-use") == 0
    replies = await asyncio.gather(*(serving.generate("first-use") for _ in range(10)))
    assert len({reply.text for reply in replies}) == 1
    assert _metric(await _metrics_text(serving), loads_total, adapter="first-use") == 1


async def test_list_load_unload_and_lru_eviction(serving: Serving) -> None:
    await serving.stub.LoadAdapter(serving_pb2.LoadAdapterRequest(adapter="alpha@v1"))
    loaded = await serving.stub.LoadAdapter(serving_pb2.LoadAdapterRequest(adapter="beta"))
    assert loaded.adapter.loaded and loaded.adapter.ref.name == "beta" and loaded.adapter.rank == RANK

    listed = {a.ref.name: a for a in (await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest())).adapters}
    assert {"alpha", "beta", "gamma", "foreign"} <= set(listed)
    assert listed["beta"].loaded and listed["alpha"].loaded and not listed["gamma"].loaded
    assert listed["foreign"].base_model == "tiny" and listed["beta"].method == "lora"

    # Two slots: loading gamma evicts the least recently used (alpha@v1, loaded first).
    await serving.stub.LoadAdapter(serving_pb2.LoadAdapterRequest(adapter="gamma"))
    only_loaded = await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest(loaded_only=True))
    assert sorted(a.ref.name for a in only_loaded.adapters) == ["beta", "gamma"]

    await serving.stub.UnloadAdapter(serving_pb2.UnloadAdapterRequest(adapter="beta"))
    only_loaded = await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest(loaded_only=True))
    assert [a.ref.name for a in only_loaded.adapters] == ["gamma"]
    assert (await serving.generate("beta")).adapter.name == "beta", "an unloaded adapter loads again on use"


async def test_a_pinned_adapter_stays_in_the_engine_and_lists_its_tier_and_use(serving: Serving) -> None:
    pinned = await serving.stub.LoadAdapter(serving_pb2.LoadAdapterRequest(adapter="gamma", pin=True))
    assert pinned.adapter.pinned and pinned.adapter.tier == serving_pb2.ADAPTER_TIER_ENGINE
    try:
        for adapter in ("alpha@v1", "beta", "alpha@v1", "beta"):  # two slots: these evict each other, not gamma
            await serving.generate(adapter)
        await serving.generate("gamma")
        listed = {
            a.ref.name: a
            for a in (await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest(loaded_only=True))).adapters
        }
        gamma = listed["gamma"]
        assert gamma.pinned and gamma.tier == serving_pb2.ADAPTER_TIER_ENGINE and gamma.requests >= 1
        assert gamma.size_bytes > 0 and gamma.HasField("last_used_at")
        assert set(listed) == {"gamma", "beta"}
    finally:
        await serving.stub.UnloadAdapter(serving_pb2.UnloadAdapterRequest(adapter="gamma"))
    everything = (await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest())).adapters
    gamma = next(a for a in everything if a.ref.name == "gamma")
    assert not gamma.pinned and gamma.tier == serving_pb2.ADAPTER_TIER_DISK


async def test_new_version_is_served_without_restart_and_a_pin_holds(serving: Serving) -> None:
    v1 = await serving.generate("alpha")
    assert v1.adapter.version == 1
    await asyncio.to_thread(
        publish_adapter,
        serving.repository,
        serving.sources["alpha-v2"],
        "alpha",
        serving.server.adapters.policy.base_model_fingerprint,
    )
    deadline = time.monotonic() + 10
    latest = v1
    while latest.adapter.version != 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        latest = await serving.generate("alpha")
    assert latest.adapter.version == 2
    assert latest.text != v1.text
    pinned = await serving.generate("alpha@v1")
    assert (pinned.adapter.version, pinned.text) == (1, v1.text)


@pytest.mark.parametrize(
    ("adapter", "field"),
    [("../x", "adapter"), ("name@", "adapter"), ("name@vX", "adapter"), ("Alpha", "adapter")],
)
async def test_malformed_adapter_names_are_invalid_argument(serving: Serving, adapter: str, field: str) -> None:
    await _expect_error(serving, serving.generate(adapter), grpc.StatusCode.INVALID_ARGUMENT, field)


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (serving_pb2.SamplingParameters(temperature=-0.5), "sampling.temperature"),
        (serving_pb2.SamplingParameters(top_p=0), "sampling.top_p"),
        (serving_pb2.SamplingParameters(top_p=1.5), "sampling.top_p"),
        (serving_pb2.SamplingParameters(top_k=-1), "sampling.top_k"),
        (serving_pb2.SamplingParameters(max_tokens=100_000), "sampling.max_tokens"),
        (serving_pb2.SamplingParameters(stop=[""]), "sampling.stop"),
        (serving_pb2.SamplingParameters(max_tokens=4, min_tokens=8), "sampling.min_tokens"),
        (serving_pb2.SamplingParameters(json_schema="{not json"), "sampling.json_schema"),
        (serving_pb2.SamplingParameters(json_schema="[1]"), "sampling.json_schema"),
        (serving_pb2.SamplingParameters(regex=""), "sampling.regex"),
        (serving_pb2.SamplingParameters(choice=serving_pb2.Choices()), "sampling.choice"),
    ],
)
async def test_bad_sampling_is_invalid_argument_naming_the_field(
    serving: Serving, sampling: serving_pb2.SamplingParameters, field: str
) -> None:
    request = serving_pb2.GenerateRequest(prompt=PROMPT, sampling=sampling)
    await _expect_error(serving, serving.stub.Generate(request), grpc.StatusCode.INVALID_ARGUMENT, field)


async def test_missing_or_oversized_input_is_invalid_argument(serving: Serving) -> None:
    await _expect_error(
        serving,
        serving.stub.Generate(serving_pb2.GenerateRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt",
    )
    await _expect_error(
        serving,
        serving.stub.Tokenize(serving_pb2.TokenizeRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt",
    )
    await _expect_error(
        serving,
        serving.stub.Generate(serving_pb2.GenerateRequest(prompt="fox " * 400)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt",
    )
    bad_role = serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="wizard", content="hi")])
    await _expect_error(
        serving,
        serving.stub.Generate(serving_pb2.GenerateRequest(messages=bad_role)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages.messages[0].role",
    )


async def test_unknown_adapter_is_not_found(serving: Serving) -> None:
    await _expect_error(serving, serving.generate("nobody"), grpc.StatusCode.NOT_FOUND)
    await _expect_error(serving, serving.generate("alpha@v99"), grpc.StatusCode.NOT_FOUND)
    request = serving_pb2.LoadAdapterRequest(adapter="nobody")
    await _expect_error(serving, serving.stub.LoadAdapter(request), grpc.StatusCode.NOT_FOUND)


async def test_adapter_for_another_base_model_is_failed_precondition(serving: Serving) -> None:
    details = await _expect_error(serving, serving.generate("foreign"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "needs base model 'tiny' (fingerprint sha256:000" in details
    loaded = await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest(loaded_only=True))
    assert "foreign" not in {a.ref.name for a in loaded.adapters}


async def _metrics_text(serving: Serving) -> str:
    url = f"http://127.0.0.1:{serving.server.metrics_port}/metrics"
    return await asyncio.to_thread(lambda: urlopen(url, timeout=10).read().decode())


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


async def test_metrics_count_requests_by_adapter_and_status(serving: Serving) -> None:
    await serving.generate("beta")
    await serving.generate("")
    await _expect_error(serving, serving.generate("nobody"), grpc.StatusCode.NOT_FOUND)
    text = await _metrics_text(serving)
    requests = "loraplane_serving_requests_total"
    assert _metric(text, requests, rpc="Generate", adapter="beta", status="OK") >= 1
    assert _metric(text, requests, rpc="Generate", adapter="_unresolved", status="NOT_FOUND") >= 1
    assert _metric(text, requests, rpc="Generate", adapter="_base", status="OK") >= 1
    assert 'adapter="nobody"' not in text, "request text must not become a label"
    assert _metric(text, "loraplane_serving_generated_tokens_total", adapter="beta") >= 1
    assert _metric(text, "loraplane_serving_time_to_first_token_seconds_count") >= 1
    resident = _metric(text, "loraplane_serving_adapters_resident", tier="engine")
    assert resident == len(serving.server.adapters.loaded())


async def test_concurrent_mixed_adapter_answers_equal_each_served_alone(serving: Serving) -> None:
    prompts = [PROMPT, "Water boils at", "The quick brown fox"]
    adapters = ["", "beta", "gamma"]  # two adapter slots in this replica, both busy at once
    alone = {(a, p): (await serving.generate(a, p)).text for a in adapters for p in prompts}
    calls = [(adapters[i % 3], prompts[(i // 3) % 3]) for i in range(18)]
    together = await asyncio.gather(*(serving.generate(a, p) for a, p in calls))
    mismatched = [
        (call, reply.text, alone[call])
        for call, reply in zip(calls, together, strict=True)
        if reply.text != alone[call]
    ]
    assert not mismatched, mismatched
    assert len(set(alone.values())) > 3, "the adapters must change the answers for this test to mean anything"


async def test_min_tokens_and_ignore_eos_generate_exactly_that_many_tokens(serving: Serving) -> None:
    sampling = serving_pb2.SamplingParameters(temperature=0, max_tokens=40, min_tokens=40, ignore_eos=True)
    reply = await serving.stub.Generate(serving_pb2.GenerateRequest(adapter="beta", prompt=PROMPT, sampling=sampling))
    assert reply.usage.completion_tokens == 40
    assert reply.finish_reason == serving_pb2.FINISH_REASON_LENGTH


async def test_dora_adapter_is_served_by_the_transformers_engine_only(serving: Serving, tiny_model_dir: Path) -> None:
    if serving.server.engine.name == "vllm":
        details = await _expect_error(serving, serving.generate("delta"), grpc.StatusCode.FAILED_PRECONDITION)
        assert "dora adapter" in details and "cannot serve" in details
        return
    from transformers import AutoTokenizer

    prompt_ids = AutoTokenizer.from_pretrained(tiny_model_dir).encode(PROMPT)
    expected = _reference_greedy(tiny_model_dir, serving.sources["delta-dora"], prompt_ids)
    # DoRA decodes in a batch of its own, stepped beside the mixed LoRA batch: run both at once.
    replies = await asyncio.gather(*(serving.generate(a) for a in ("delta", "beta", "delta", "")))
    assert [entry.token_id for entry in replies[0].logprobs] == expected
    assert replies[0].text == replies[2].text
    assert replies[1].text == (await serving.generate("beta")).text
    assert replies[0].text != replies[3].text

    for other in ("alpha@v1", "gamma"):  # two slots: delta leaves the engine, and stays resident in peft
        await serving.stub.LoadAdapter(serving_pb2.LoadAdapterRequest(adapter=other))
    listed = {a.ref.name: a for a in (await serving.stub.ListAdapters(serving_pb2.ListAdaptersRequest())).adapters}
    assert listed["delta"].tier == serving_pb2.ADAPTER_TIER_CPU
    assert [entry.token_id for entry in (await serving.generate("delta")).logprobs] == expected


async def _engine_idle(serving: Serving, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        stats = serving.server.engine.stats()
        if stats.running == stats.waiting == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_deadline_and_cancel_stop_the_engine_work(serving: Serving) -> None:
    long = serving_pb2.SamplingParameters(temperature=0, max_tokens=200, min_tokens=200, ignore_eos=True)
    request = serving_pb2.GenerateRequest(adapter="beta", prompt=PROMPT, sampling=long)
    await serving.generate("beta")  # loaded, so the deadline cuts generation rather than the load

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await serving.stub.Generate(request, timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await _engine_idle(serving)

    call = serving.stub.GenerateStream(request)
    first = await call.read()
    assert isinstance(first, serving_pb2.GenerateStreamResponse)
    call.cancel()
    assert await _engine_idle(serving)
    generated = _metric(await _metrics_text(serving), "loraplane_serving_generated_tokens_total", adapter="beta")
    await asyncio.sleep(0.3)
    assert (
        _metric(await _metrics_text(serving), "loraplane_serving_generated_tokens_total", adapter="beta") == generated
    )


async def test_per_adapter_latency_and_engine_metrics(serving: Serving) -> None:
    # Whatever ran before on this replica: three adapters copied to disk, and gamma's second use an engine hit.
    for adapter in ("alpha@v1", "beta", "gamma", "gamma"):
        await serving.generate(adapter)
    text = await _metrics_text(serving)
    for histogram in ("time_to_first_token", "inter_token_latency", "generation_latency"):
        assert _metric(text, f"loraplane_serving_{histogram}_seconds_count", adapter="gamma") >= 1, histogram
    assert _metric(text, "loraplane_serving_adapter_cache_lookups_total", tier="engine", result="hit") >= 1
    assert _metric(text, "loraplane_serving_adapter_cache_lookups_total", tier="disk", result="miss") >= 1
    assert _metric(text, "loraplane_serving_adapter_load_duration_seconds_count", source="store") >= 1
    assert _metric(text, "loraplane_serving_adapters_resident", tier="disk") >= 3
    assert _metric(text, "loraplane_serving_adapter_cache_bytes") > 0
    assert "loraplane_serving_engine_requests_running " in text
    assert "loraplane_serving_engine_requests_waiting " in text
    if serving.server.engine.name == "transformers":
        assert _metric(text, "loraplane_serving_engine_batch_size_count") >= 1


async def test_live_drift_figures_equal_the_trainers_reference_on_the_same_prompts(
    serving: Serving, tiny_model_dir: Path
) -> None:
    """The trainer's reference (trainer_svc.worker.reference) and the engine's live figures are one measure:
    the same prompts, raw and as chat turns, answered greedily, give the same histograms (of the
    content, the template's frame stripped on both sides), output confidence and (where the engine
    scores prompts) prompt surprise, and whether answers were cut or refused."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplane.drift import Profile, template_frame
    from trainer_svc.worker.reference import reference_profile
    from trainer_svc.worker.tokenization import TokenizedExample

    prompts = [PROMPT, "Once upon a time there was", "def add(a, b):"]
    chats = ["What is the capital of France?", "Tell me a story"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert template_frame(tokenizer).prefix, "the tiny model's template has a frame to strip"
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), serving.sources["gamma"]
    )
    held_out = []
    rendered = [
        tokenizer.apply_chat_template([{"role": "user", "content": chat}], tokenize=False, add_generation_prompt=True)
        for chat in chats
    ]
    encoded = [tokenizer.encode(prompt) for prompt in prompts]
    encoded += [tokenizer.encode(text, add_special_tokens=False) for text in rendered]
    for ids in encoded:  # a one-token answer: the reference generates up to 2 * 1 + 8 tokens
        held_out.append(TokenizedExample(input_ids=[*ids, 5], labels=[], prompt_length=len(ids)))
    reference = reference_profile(model, tokenizer, held_out, held_out, None, batch_size=2, generation_batch_size=2)

    publish_adapter(serving.repository, serving.sources["gamma"], "scored", base_model_fingerprint(tiny_model_dir))
    params = serving_pb2.SamplingParameters(temperature=0, max_tokens=10)
    for prompt in prompts:
        await serving.stub.Generate(serving_pb2.GenerateRequest(adapter="scored", prompt=prompt, sampling=params))
    for chat in chats:
        messages = serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=chat)])
        await serving.stub.Generate(serving_pb2.GenerateRequest(adapter="scored", messages=messages, sampling=params))
    assert serving.server.drift is not None
    live = serving.server.drift.adapter("scored")[0].live
    assert live.sample_count == reference.sample_count == len(prompts) + len(chats)

    def content(profile: Profile) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
        return sorted((record.length, record.buckets, record.counts) for record in profile.prompts)

    assert content(live) == content(reference), "the same content: length and token buckets"
    assert live.response_length_histogram() == reference.response_length_histogram()
    assert [r.truncated for r in live.answers] == [r.truncated for r in reference.answers]
    assert [r.refused for r in live.answers] == [r.refused for r in reference.answers]
    assert live.output_confidence == pytest.approx(reference.output_confidence, rel=1e-3)
    if serving.server.engine.embeds_prompts:  # the semantic statistic's input: one measure on both sides
        embedded = [
            [r.embedding for r in sorted(p.prompts, key=lambda r: (r.length, r.buckets))] for p in (live, reference)
        ]
        assert all(e is not None for side in embedded for e in side)
        assert np.asarray(embedded[0]) == pytest.approx(np.asarray(embedded[1]), abs=2e-3)
    else:  # vLLM gives no hidden states of a generation request
        assert all(r.embedding is None for r in live.prompts)
    if serving.server.engine.scores_prompts:
        scored = [sorted((r.length, r.scored_tokens) for r in p.prompts) for p in (live, reference)]
        assert scored[0] == scored[1]
        assert live.prompt_surprise == pytest.approx(reference.prompt_surprise, rel=1e-3)
    else:  # vLLM: prompt log-probabilities with LoRA kill its engine (see VllmEngine.scores_prompts)
        assert live.prompt_surprise is None


SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "size": {"enum": ["S", "M", "L"]},
        "ok": {"type": "boolean"},
    },
    "required": ["colour", "size", "ok"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("adapter", ["", "beta", "delta"], ids=["base", "lora", "dora"])
async def test_structured_output_matches_its_schema_regex_or_choices(serving: Serving, adapter: str) -> None:
    """The tiny model is random: whatever it would say, the answer takes the form asked for."""
    import jsonschema

    if adapter == "delta" and serving.server.engine.name == "vllm":
        pytest.skip("vLLM cannot apply DoRA (test_dora_adapter_is_served_by_the_transformers_engine_only)")

    async def answer(**structured: object) -> serving_pb2.GenerateResponse:
        params = convert.sampling_parameters(SamplingParameters(max_tokens=48, temperature=0, **structured))  # type: ignore[arg-type]
        return await serving.stub.Generate(serving_pb2.GenerateRequest(adapter=adapter, prompt=PROMPT, sampling=params))

    as_json = await answer(json_schema=SCHEMA)
    assert as_json.finish_reason == serving_pb2.FINISH_REASON_STOP, as_json.text
    jsonschema.validate(json.loads(as_json.text), SCHEMA)
    coded = await answer(regex=r"[a-c]{3}-[0-9]{2}")
    assert re.fullmatch(r"[a-c]{3}-[0-9]{2}", coded.text), coded.text
    chosen = await answer(choices=["yes", "no", "not sure"])
    assert chosen.text in {"yes", "no", "not sure"}
    free = await answer()
    assert free.text != as_json.text and not re.fullmatch(r"[a-c]{3}-[0-9]{2}", free.text)


async def test_a_regex_that_does_not_compile_is_invalid_argument(serving: Serving) -> None:
    request = serving_pb2.GenerateRequest(
        prompt=PROMPT, sampling=convert.sampling_parameters(SamplingParameters(max_tokens=4, regex="[a-"))
    )
    await _expect_error(serving, serving.stub.Generate(request), grpc.StatusCode.INVALID_ARGUMENT, "sampling.regex")
