"""InferenceService over a fake engine: validation, the engine request, streaming, back-pressure, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from loraplane.captures import CaptureStore
from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from loraplane.names import AdapterSpec
from loraplane.redaction import Redactor
from loraplane.releases import DEFAULT_MARGINS, ReleaseAction, ReleaseChange, ReleaseLog, ReleaseMode
from loraplane.storage.base import ObjectStore
from serving_svc.admission import Admission
from serving_svc.capture import CaptureLimits, CaptureWriter
from serving_svc.drift_monitor import DriftMonitor
from serving_svc.engines.base import ChatMessage, Prompt, SamplingOptions, TokenLogprob, Usage
from serving_svc.inference import GenerationInput, InferenceService, RequestLimits
from serving_svc.metrics import ServingMetrics
from serving_svc.release_analysis import AnalysisPolicy, ReleaseAnalysis
from serving_svc.releases import ReleaseRouter
from serving_svc.shadow import ShadowCollector, ShadowOutcome, ShadowRunner
from tests.support.fake_engine import FIRST_TOKEN_ID, AdapterParts, FakeEngine, build_adapter_manager, sample, until

MAX_MODEL_LEN = 32
DEFAULT_MAX_TOKENS = 8
ANALYSIS_POLICY = AnalysisPolicy(margins=DEFAULT_MARGINS, min_requests=20, min_seconds=0.0, automatic=True)
TIMEOUT = 5.0
"""Seconds a test waits for what should happen at once, so a regression fails instead of hanging."""


@dataclass
class Replica:
    parts: AdapterParts
    admission: Admission
    service: InferenceService
    shadow: ShadowRunner
    analysis: ReleaseAnalysis
    capture: CaptureWriter

    @property
    def engine(self) -> FakeEngine:
        return self.parts.engine

    @property
    def metrics(self) -> ServingMetrics:
        return self.parts.metrics


def _replica(
    tmp_path: Path,
    *,
    max_concurrent: int = 1,
    max_queued: int = 1,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    adapter_labels: int = 8,
    drift: DriftMonitor | None = None,
    shadow_max_in_flight: int = 2,
    max_loaded: int = 2,
    capture_store: ObjectStore | None = None,
) -> Replica:
    engine = FakeEngine(max_model_len=MAX_MODEL_LEN)
    parts = build_adapter_manager(tmp_path, engine, max_loaded=max_loaded, adapter_labels=adapter_labels)
    parts.publish("alpha")
    admission = Admission(max_concurrent, max_queued, max_per_caller=100)
    releases = ReleaseRouter(ReleaseLog(parts.repository), ttl_seconds=0.0)
    shadow = ShadowRunner(engine, parts.manager, drift, admission, max_in_flight=shadow_max_in_flight, batch_capacity=8)
    analysis = ReleaseAnalysis(releases, shadow, drift, ANALYSIS_POLICY)
    capture = CaptureWriter(
        CaptureStore(capture_store or parts.repository.store),
        Redactor(),
        parts.metrics,
        CaptureLimits(policy_ttl_seconds=0.0),
    )
    service = InferenceService(
        engine,
        parts.manager,
        parts.metrics,
        admission,
        drift,
        releases,
        shadow,
        analysis,
        capture,
        limits=RequestLimits(default_max_tokens),
    )
    return Replica(parts, admission, service, shadow, analysis, capture)


@pytest.fixture
def replica(tmp_path: Path) -> Replica:
    return _replica(tmp_path)


def _input(
    adapter: str | None = "alpha", prompt: Prompt = "hi", input_field: str = "prompt", user: str = "", **sampling: Any
) -> GenerationInput:
    sampling.setdefault("max_tokens", 4)
    spec = None
    if adapter:
        name, _, version = adapter.partition("@v")
        spec = AdapterSpec(name, int(version) if version else None)
    return GenerationInput(
        adapter=spec, prompt=prompt, sampling=SamplingOptions(**sampling), input_field=input_field, user=user
    )


def _requests(
    metrics: ServingMetrics, rpc: str, status: str, adapter: str | None = None, version: str | None = None
) -> float:
    """RPCs counted with this method and status (under `adapter` and `version`, or summed over those left None)."""
    wanted = {"rpc": rpc, "status": status, "adapter": adapter, "version": version}
    return sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "loraplane_serving_requests_total"
        and all(value in (None, s.labels[label]) for label, value in wanted.items())
    )


@pytest.mark.parametrize(
    ("request_input", "field", "message"),
    [
        (_input(max_tokens=MAX_MODEL_LEN + 1), "sampling.max_tokens", "exceeds the model length 32"),
        (_input(prompt=""), "prompt", "empty"),
        (_input(prompt="", input_field="text"), "text", "empty"),
        (_input(prompt="x" * MAX_MODEL_LEN), "prompt", "32 tokens; this model takes at most 31"),
        (_input(prompt="x" * 100, input_field="messages"), "messages", "100 tokens"),
        (_input(max_tokens=4, min_tokens=5), "sampling.min_tokens", "min_tokens 5 exceeds max_tokens 4"),
        (_input(max_tokens=0, min_tokens=9), "sampling.min_tokens", "exceeds max_tokens 8"),
        (_input(prompt="", max_tokens=MAX_MODEL_LEN + 1), "sampling.max_tokens", "model length"),
    ],
    ids=[
        "max-tokens-over-model",
        "empty-prompt",
        "empty-named-field",
        "prompt-fills-model",
        "prompt-too-long-named-field",
        "min-over-max",
        "min-over-default-max",
        "max-tokens-checked-first",
    ],
)
async def test_invalid_request_is_refused_before_the_adapter_and_engine(
    replica: Replica, request_input: GenerationInput, field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        await replica.service.complete(lambda: request_input)
    assert info.value.field == field
    assert replica.engine.requests == []
    assert replica.engine.add_calls == []
    assert _requests(replica.metrics, "Generate", "INVALID_ARGUMENT") == 1


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "min_tokens", "default_max_tokens", "sent_max_tokens"),
    [
        (1, 5, 0, DEFAULT_MAX_TOKENS, 5),
        (1, 0, 0, DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS),
        (1, 0, DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS),
        (1, 0, 0, 100, MAX_MODEL_LEN),
        (MAX_MODEL_LEN - 1, MAX_MODEL_LEN, MAX_MODEL_LEN, DEFAULT_MAX_TOKENS, MAX_MODEL_LEN),
    ],
    ids=["explicit", "default", "min-equals-default", "default-capped-by-model", "limits-inclusive"],
)
async def test_accepted_request_reaches_the_engine_with_its_max_tokens(
    tmp_path: Path, prompt_tokens: int, max_tokens: int, min_tokens: int, default_max_tokens: int, sent_max_tokens: int
) -> None:
    replica = _replica(tmp_path, default_max_tokens=default_max_tokens)
    request_input = _input(prompt="x" * prompt_tokens, max_tokens=max_tokens, min_tokens=min_tokens, top_k=3)
    await replica.service.complete(lambda: request_input)
    [sent] = replica.engine.requests
    assert sent.sampling == SamplingOptions(max_tokens=sent_max_tokens, min_tokens=min_tokens, top_k=3)


@pytest.mark.parametrize(
    ("adapter", "adapter_key"),
    [("alpha", "alpha@v1"), (None, None)],
)
async def test_engine_request_carries_the_adapter_key_and_token_ids(
    replica: Replica, adapter: str | None, adapter_key: str | None
) -> None:
    completion = await replica.service.complete(lambda: _input(adapter, prompt="abc"))
    [sent] = replica.engine.requests
    assert sent.adapter_key == adapter_key
    assert sent.prompt_token_ids == (ord("a"), ord("b"), ord("c"))
    assert sent.request_id
    assert (completion.adapter.key if completion.adapter else None) == adapter_key
    if adapter_key:
        assert replica.engine.adapters == {adapter_key}


async def test_chat_messages_are_rendered_and_tokenized(replica: Replica) -> None:
    messages = [ChatMessage("user", "hi")]
    await replica.service.complete(lambda: _input(prompt=messages, input_field="messages"))
    assert replica.engine.requests[0].prompt_token_ids == tuple(ord(c) for c in "<user>hi<assistant>")
    assert await replica.service.tokenize(messages) == [ord(c) for c in "<user>hi<assistant>"]


async def test_complete_joins_text_logprobs_finish_reason_and_usage(replica: Replica) -> None:
    completion = await replica.service.complete(lambda: _input(prompt="abcd", logprobs=True))
    assert completion.text == "Hello!"
    assert completion.logprobs == [
        TokenLogprob(FIRST_TOKEN_ID, "Hel", -0.1),
        TokenLogprob(FIRST_TOKEN_ID + 1, "lo", -0.2),
        TokenLogprob(FIRST_TOKEN_ID + 2, "!", pytest.approx(-0.3)),  # type: ignore[arg-type]
    ]
    assert completion.finish_reason == "stop"
    assert completion.usage == Usage(prompt_tokens=4, completion_tokens=3)
    assert completion.adapter is not None and completion.adapter.key == "alpha@v1"
    assert replica.engine.finished == [replica.engine.requests[0].request_id]


async def test_stream_yields_each_delta_with_its_adapter(replica: Replica) -> None:
    replica.engine.finish_reason = "length"
    chunks = [chunk async for chunk in replica.service.stream(lambda: _input())]
    assert [c.delta.text for c in chunks] == ["Hel", "lo", "!"]
    assert [c.delta.finish_reason for c in chunks] == [None, None, "length"]
    assert {c.adapter.key for c in chunks if c.adapter} == {"alpha@v1"}
    assert _requests(replica.metrics, "GenerateStream", "OK", adapter="alpha") == 1


async def test_closing_the_stream_early_aborts_the_engine_request_and_frees_everything(replica: Replica) -> None:
    stream = replica.service.stream(lambda: _input())
    first = await anext(stream)
    assert first.delta.text == "Hel"
    await stream.aclose()

    [sent] = replica.engine.requests
    assert replica.engine.aborted == [sent.request_id]
    assert replica.engine.finished == []
    assert _requests(replica.metrics, "GenerateStream", "CANCELLED", adapter="alpha") == 1
    await replica.parts.manager.unload(AdapterSpec("alpha"))  # no longer in use
    assert (await replica.service.complete(lambda: _input())).text == "Hello!"  # the place was given back


async def test_past_both_bounds_a_request_is_refused_and_a_cancelled_waiter_leaves_the_queue(
    replica: Replica,
) -> None:
    gate = replica.engine.generation_gate = asyncio.Event()
    running = asyncio.create_task(replica.service.complete(lambda: _input()))
    await asyncio.wait_for(replica.engine.generation_started.wait(), TIMEOUT)
    waiting = asyncio.create_task(replica.service.complete(lambda: _input()))
    await until(lambda: replica.admission.queued == 1)
    assert sample(replica.metrics, "loraplane_serving_requests_queued") == 1

    with pytest.raises(ResourceExhausted, match="1 requests generating and 1 waiting"):
        await asyncio.wait_for(replica.service.complete(lambda: _input()), TIMEOUT)
    assert _requests(replica.metrics, "Generate", "RESOURCE_EXHAUSTED") == 1

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert replica.admission.queued == 0
    assert sample(replica.metrics, "loraplane_serving_requests_queued") == 0
    assert _requests(replica.metrics, "Generate", "CANCELLED") == 1

    gate.set()
    assert (await asyncio.wait_for(running, TIMEOUT)).text == "Hello!"
    assert len(replica.engine.requests) == 1  # the cancelled request never reached the engine
    assert (await replica.service.complete(lambda: _input())).text == "Hello!"


async def test_a_queued_request_runs_once_a_place_frees(replica: Replica) -> None:
    gate = replica.engine.generation_gate = asyncio.Event()
    first = asyncio.create_task(replica.service.complete(lambda: _input()))
    await asyncio.wait_for(replica.engine.generation_started.wait(), TIMEOUT)
    second = asyncio.create_task(replica.service.complete(lambda: _input()))
    await until(lambda: replica.admission.queued == 1)
    assert len(replica.engine.requests) == 1
    gate.set()
    assert [c.text for c in await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT)] == ["Hello!", "Hello!"]
    assert replica.engine.max_running == 1
    assert replica.admission.queued == 0


async def test_unknown_adapter_is_not_found_and_gives_its_place_back(replica: Replica) -> None:
    for _ in range(3):
        with pytest.raises(NotFound):
            await replica.service.complete(lambda: _input("nope"))
    assert _requests(replica.metrics, "Generate", "NOT_FOUND", adapter="_unresolved") == 3
    assert replica.engine.requests == []
    assert (await replica.service.complete(lambda: _input())).text == "Hello!"


async def test_a_malformed_request_is_counted_with_its_status(replica: Replica) -> None:
    def parse() -> GenerationInput:
        raise InvalidArgument("bad", field="adapter")

    with pytest.raises(InvalidArgument):
        await replica.service.complete(parse, rpc="Custom")
    assert _requests(replica.metrics, "Custom", "INVALID_ARGUMENT", adapter="_unresolved") == 1


async def test_per_adapter_metrics_count_tokens_and_observe_ttft_once_per_request(replica: Replica) -> None:
    for _ in range(2):
        await replica.service.complete(lambda: _input(prompt="abcde"))
    await replica.service.complete(lambda: _input(None, prompt="ab"))

    def value(name: str, adapter: str) -> float | None:
        return sample(replica.metrics, name, adapter=adapter, version="1" if adapter == "alpha" else "")

    for adapter, requests, prompt_tokens in (("alpha", 2, 5), ("_base", 1, 2)):
        assert _requests(replica.metrics, "Generate", "OK", adapter=adapter) == requests
        assert value("loraplane_serving_prompt_tokens_total", adapter) == requests * prompt_tokens
        assert value("loraplane_serving_generated_tokens_total", adapter) == requests * 3
        assert value("loraplane_serving_time_to_first_token_seconds_count", adapter) == requests
        assert value("loraplane_serving_inter_token_latency_seconds_count", adapter) == requests * 2
        assert value("loraplane_serving_generation_latency_seconds_count", adapter) == requests
    assert sample(replica.metrics, "loraplane_serving_request_duration_seconds_count", rpc="Generate") == 3


async def test_adapter_rpcs_and_model_info(replica: Replica) -> None:
    replica.parts.publish("alpha")
    replica.parts.publish("beta")
    loaded = await replica.service.load_adapter(AdapterSpec("alpha", 1), pin=True)
    assert (loaded.adapter.key, loaded.tier, loaded.pinned) == ("alpha@v1", "engine", True)

    listed = await replica.service.list_adapters(loaded_only=False)
    assert sorted((s.adapter.key, s.tier) for s in listed) == [
        ("alpha@v1", "engine"),
        ("alpha@v2", "store"),
        ("beta@v1", "store"),
    ]
    assert [(s.adapter.key, s.tier) for s in await replica.service.list_adapters(loaded_only=True)] == [
        ("alpha@v1", "engine")
    ]

    await replica.service.unload_adapter(AdapterSpec("alpha"))
    assert replica.engine.remove_calls == ["alpha@v1"]
    with pytest.raises(NotFound):
        await replica.service.unload_adapter(AdapterSpec("nope"))

    info = replica.service.model_info()
    assert (info.base_model, info.engine, info.max_model_len, info.max_loaded_adapters, info.max_lora_rank) == (
        "tiny",
        "fake",
        MAX_MODEL_LEN,
        2,
        16,
    )
    assert _requests(replica.metrics, "LoadAdapter", "OK", adapter="alpha") == 1
    assert _requests(replica.metrics, "UnloadAdapter", "OK", adapter="alpha") == 1
    assert _requests(replica.metrics, "UnloadAdapter", "NOT_FOUND", adapter="_unresolved") == 1
    assert _requests(replica.metrics, "ListAdapters", "OK", adapter="_none") == 2
    assert _requests(replica.metrics, "ModelInfo", "OK", adapter="_none") == 1


async def test_adapter_demoted_mid_stream_keeps_no_series(tmp_path: Path) -> None:
    replica = _replica(tmp_path, adapter_labels=1)
    replica.parts.publish("beta")
    stream = replica.service.stream(lambda: _input("alpha"))
    await anext(stream)

    def alphas_tokens() -> float | None:
        return sample(replica.metrics, "loraplane_serving_generated_tokens_total", adapter="alpha", version="1")

    if alphas_tokens() != 1:
        pytest.fail("alpha's first token was not counted under its own label")

    for _ in range(20):  # beta's traffic grows until it takes alpha's label
        if replica.metrics.adapter_label("beta") == "beta":
            break
    if alphas_tokens() is not None:
        pytest.fail("demoting alpha did not remove its series")

    async for _ in stream:
        pass
    assert alphas_tokens() is None
    assert _requests(replica.metrics, "GenerateStream", "OK", adapter="alpha") == 0


async def _served_version(replica: Replica, adapter: str = "alpha", user: str = "") -> int:
    completion = await replica.service.complete(lambda: _input(adapter, user=user))
    assert completion.adapter is not None
    return completion.adapter.manifest.version


async def test_a_name_without_a_release_answers_with_its_newest_version(replica: Replica) -> None:
    replica.parts.publish("alpha")
    assert await _served_version(replica) == 2


async def test_a_release_keeps_the_name_on_stable_and_sends_the_canary_share_to_the_candidate(
    replica: Replica,
) -> None:
    for _ in range(2):
        replica.parts.publish("alpha")
    releases = ReleaseLog(replica.parts.repository)
    start = ReleaseChange(action=ReleaseAction.START, candidate=3, stable=1, canary_share=0.5)
    releases.change("alpha", start, actor="ops")

    users = [f"user-{i}" for i in range(60)]
    first = [await _served_version(replica, user=user) for user in users]
    again = [await _served_version(replica, user=user) for user in users]
    assert first == again, "a user stays on one version"
    assert set(first) == {1, 3}, "v2, the newest version before the release, is not served unpinned"
    assert 15 <= first.count(3) <= 45
    assert await _served_version(replica, "alpha@v2") == 2, "a pinned version is served whatever the release"
    for version, served in (("1", 2 * first.count(1)), ("3", 2 * first.count(3)), ("2", 1)):
        assert _requests(replica.metrics, "Generate", "OK", adapter="alpha", version=version) == served
        assert sample(replica.metrics, "loraplane_serving_generated_tokens_total", adapter="alpha", version=version)

    releases.change("alpha", ReleaseChange(action=ReleaseAction.PROMOTE), actor="ops")
    assert {await _served_version(replica, user=user) for user in users} == {3}


async def test_in_shadow_mode_stable_answers_every_caller(replica: Replica) -> None:
    replica.parts.publish("alpha")
    start = ReleaseChange(action=ReleaseAction.START, candidate=2, mode=ReleaseMode.SHADOW)
    ReleaseLog(replica.parts.repository).change("alpha", start, actor="ops")
    assert {await _served_version(replica, user=f"user-{i}") for i in range(20)} == {1}


async def test_release_changes_are_counted_and_shown_with_their_history(replica: Replica) -> None:
    replica.parts.publish("alpha")
    start = ReleaseChange(action=ReleaseAction.START, candidate=2, canary_share=0.2)
    record = await replica.service.change_release("alpha", start, actor="ops", reason="try v2")
    report = await replica.service.release("alpha", history_limit=20)
    view = report.view
    assert view.current == record and view.history == [record] and not view.stale
    assert report.verdict is not None and report.verdict.reason.startswith("trying: 0 of 20 requests")
    assert record.actor == "ops" and record.reason == "try v2"
    assert _requests(replica.metrics, "UpdateRelease", "OK") == 1
    assert _requests(replica.metrics, "GetRelease", "OK") == 1


def _shadow_release(replica: Replica) -> None:
    replica.parts.publish("alpha")
    start = ReleaseChange(action=ReleaseAction.START, candidate=2, mode=ReleaseMode.SHADOW)
    ReleaseLog(replica.parts.repository).change("alpha", start, actor="ops")


async def test_in_shadow_mode_the_candidate_runs_each_request_after_stable_and_is_compared(replica: Replica) -> None:
    _shadow_release(replica)
    for index in range(3):
        completion = await replica.service.complete(lambda index=index: _input(user=f"user-{index}"))
        assert completion.adapter is not None and completion.adapter.key == "alpha@v1"
        await until(lambda index=index: replica.shadow.figures("alpha", 1, 2).compared == index + 1, TIMEOUT)
    keys = [request.adapter_key for request in replica.engine.requests]
    assert keys == ["alpha@v1", "alpha@v2"] * 3, "each caller's request, then its shadow on the candidate"
    figures = replica.shadow.figures("alpha", 1, 2)
    assert (figures.exact_agreement, figures.rouge_l_agreement) == (1.0, 1.0), "the fake engine answers alike"
    registry = CollectorRegistry()
    registry.register(ShadowCollector(replica.shadow, owns_label=lambda name: True))
    labels = {"adapter": "alpha", "version": "2"}
    assert registry.get_sample_value("loraplane_release_shadow_requests_total", {**labels, "outcome": "compared"}) == 3
    assert registry.get_sample_value("loraplane_release_shadow_agreement", {**labels, "measure": "rouge_l"}) == 1.0


async def test_a_shadow_offer_is_dropped_while_real_requests_wait(replica: Replica) -> None:
    _shadow_release(replica)
    replica.admission.queued = 1  # a real request is waiting for a place
    replica.shadow.offer(AdapterSpec("alpha", 2), 1, "hi", SamplingOptions(max_tokens=4), "answer")
    assert replica.shadow.figures("alpha", 1, 2).outcomes == {ShadowOutcome.BUSY: 1}
    assert replica.engine.requests == []


async def test_a_running_shadow_request_is_aborted_when_a_real_one_has_to_wait(tmp_path: Path) -> None:
    replica = _replica(tmp_path, shadow_max_in_flight=1)
    _shadow_release(replica)
    replica.engine.generation_gate = asyncio.Event()
    replica.shadow.offer(AdapterSpec("alpha", 2), 1, "hi", SamplingOptions(max_tokens=4), "answer")
    replica.shadow.offer(AdapterSpec("alpha", 2), 1, "hi", SamplingOptions(max_tokens=4), "answer")
    await asyncio.wait_for(replica.engine.generation_started.wait(), TIMEOUT)
    assert replica.shadow.figures("alpha", 1, 2).outcomes == {ShadowOutcome.BUSY: 1}, "one shadow place"
    replica.admission.queued = 1
    replica.engine.generation_gate.set()
    await until(lambda: replica.shadow.figures("alpha", 1, 2).outcomes[ShadowOutcome.PREEMPTED] == 1, TIMEOUT)
    assert replica.engine.aborted == [replica.engine.requests[0].request_id]
    assert replica.shadow.figures("alpha", 1, 2).exact_agreement is None


async def test_a_shadow_takes_no_adapter_slot_from_a_version_callers_use(tmp_path: Path) -> None:
    replica = _replica(tmp_path, max_loaded=1)
    _shadow_release(replica)
    completion = await replica.service.complete(lambda: _input(user="user-0"))
    assert completion.adapter is not None and completion.adapter.key == "alpha@v1"
    await until(lambda: replica.shadow.figures("alpha", 1, 2).outcomes[ShadowOutcome.NO_SLOT] == 1, TIMEOUT)
    assert [adapter.key for adapter in replica.parts.manager.loaded()] == ["alpha@v1"], "stable keeps its slot"
    assert [request.adapter_key for request in replica.engine.requests] == ["alpha@v1"]


async def test_a_shadow_candidate_that_cannot_be_served_is_counted_failed(replica: Replica) -> None:
    replica.shadow.offer(AdapterSpec("alpha", 9), 1, "hi", SamplingOptions(max_tokens=4), "answer")
    await until(lambda: replica.shadow.figures("alpha", 1, 9).outcomes[ShadowOutcome.FAILED] == 1, TIMEOUT)


async def test_a_candidate_whose_files_do_not_verify_fails_its_requests_and_is_rolled_back(replica: Replica) -> None:
    replica.parts.publish("alpha")
    weights = replica.parts.workdir / "store/adapters/alpha/v2/adapter_model.safetensors"
    weights.write_bytes(b"not the published weights")
    start = ReleaseChange(action=ReleaseAction.START, candidate=2, stable=1, canary_share=0.5)
    ReleaseLog(replica.parts.repository).change("alpha", start, actor="ops")
    failed = 0
    for index in range(100):
        try:
            await replica.service.complete(lambda index=index: _input(user=f"user-{index}"))
        except FailedPrecondition:
            failed += 1
    assert 20 <= failed <= 80, "the candidate's half of the callers get the refusal"
    [record] = await replica.analysis.decide()
    assert record.action is ReleaseAction.ROLLBACK and record.reason.startswith(
        "error_rate: candidate 1 against stable 0"
    )
    assert {await _served_version(replica, user=f"user-{index}") for index in range(100)} == {1}
