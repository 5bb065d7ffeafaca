"""AdapterManager against a real file store and a fake engine: resolve, refuse, load once, evict, unload."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loraplane.artifact import MANIFEST
from loraplane.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from loraplane.names import AdapterSpec
from serving_svc.adapters.keyed_locks import KeyedLocks
from tests.support.fake_engine import OTHER_FINGERPRINT, AdapterParts, build_adapter_manager, sample

LOOKUPS = "loraplane_serving_adapter_cache_lookups_total"
TIMEOUT = 5.0
"""Seconds a test waits for what should happen at once, so a regression fails instead of hanging."""


class FakeClock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def parts(tmp_path: Path) -> AdapterParts:
    return build_adapter_manager(tmp_path, max_loaded=2, max_rank=16)


def _spec(text: str) -> AdapterSpec:
    name, _, version = text.partition("@v")
    return AdapterSpec(name, int(version) if version else None)


async def test_load_adds_the_verified_copy_under_its_version_key(parts: AdapterParts) -> None:
    manifest = parts.publish("alpha")
    adapter = await parts.manager.load(AdapterSpec("alpha"))
    assert adapter.key == "alpha@v1"
    assert adapter.manifest.files == manifest.files
    assert adapter.uri.endswith("adapters/alpha/v1")
    [(key, path)] = parts.engine.add_calls
    assert key == "alpha@v1"
    assert path.parent == parts.cache_dir / "alpha"
    assert path.name.startswith("v1-")
    assert (path / MANIFEST).is_file() and (path / "adapter_config.json").is_file()
    assert [a.key for a in parts.manager.loaded()] == ["alpha@v1"]
    assert parts.manager.is_loaded("alpha@v1") and not parts.manager.is_loaded("alpha@v2")


async def test_base_model_uses_no_adapter(parts: AdapterParts) -> None:
    async with parts.manager.use(None) as adapter:
        assert adapter is None
    assert parts.engine.add_calls == []


@pytest.mark.parametrize(
    ("publish_kwargs", "message", "fetched"),
    [
        ({"fingerprint": OTHER_FINGERPRINT}, "needs base model", False),
        ({"rank": 32}, "LoRA rank 32", False),
        ({"method": "dora"}, "dora adapter, which the fake engine cannot serve", False),
        ({"rank": 8, "config_rank": 32}, "adapter_config.json has LoRA rank 32", True),
        ({"rank": 8, "rank_pattern": {"q_proj": 4, "v_proj": 64}}, "adapter_config.json has LoRA rank 64", True),
        (
            {"config_fields": {"auto_mapping": {"base_model_class": "Evil", "parent_library": "evil.models"}}},
            "code outside transformers",
            True,
        ),
        ({"config_fields": {"megatron_config": {"a": 1}}}, "asks for code to be imported", True),
        ({"config_fields": {"megatron_core": "os"}}, "names a module to import \\('os'", True),
        ({"config_fields": {"loader_hook": "x"}}, "fields peft's LoraConfig does not know: loader_hook", True),
        ({"config_fields": {"peft_type": "IA3"}}, "peft_type 'IA3'; only LORA", True),
        ({"config_fields": {"task_type": "SEQ_CLS"}}, "task_type 'SEQ_CLS'", True),
        ({"config_fields": {"r": "8"}}, "rank that is not a positive integer", True),
        ({"config_fields": {"target_modules": ["q_proj", "../x"]}}, "list of module names", True),
        ({"config_fields": {"target_modules": "(a+)+" * 60}}, "pattern of 300 characters", True),
    ],
    ids=[
        "other-base-model",
        "manifest-rank",
        "method",
        "config-rank",
        "rank-pattern",
        "auto-mapping",
        "megatron-config",
        "megatron-core",
        "unknown-field",
        "peft-type",
        "task-type",
        "rank-type",
        "target-name",
        "target-pattern",
    ],
)
async def test_refused_version_evicts_nothing_and_never_reaches_the_engine(
    tmp_path: Path, publish_kwargs: dict[str, Any], message: str, fetched: bool
) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=1, max_rank=16)
    parts.publish("good")
    parts.publish("bad", **publish_kwargs)
    await parts.manager.load(AdapterSpec("good"))

    with pytest.raises(FailedPrecondition, match=message):
        async with parts.manager.use(AdapterSpec("bad")):
            pytest.fail("a refused adapter was handed out")

    assert parts.engine.added_keys == ["good@v1"]
    assert parts.engine.remove_calls == []
    assert [a.key for a in parts.manager.loaded()] == ["good@v1"]
    assert (sample(parts.metrics, LOOKUPS, tier="disk", result="miss") or 0) == (2 if fetched else 1)


async def test_the_auto_mapping_peft_writes_is_accepted(parts: AdapterParts) -> None:
    mapping = {"base_model_class": "LlamaForCausalLM", "parent_library": "transformers.models.llama.modeling_llama"}
    parts.publish("peft-made", config_fields={"auto_mapping": mapping, "task_type": None})
    assert (await parts.manager.load(AdapterSpec("peft-made"))).manifest.name == "peft-made"


async def test_rank_at_the_limit_is_accepted(parts: AdapterParts) -> None:
    parts.publish("edge", rank=16, rank_pattern={"q_proj": 16})
    assert (await parts.manager.load(AdapterSpec("edge"))).manifest.rank == 16


@pytest.mark.parametrize(
    ("requests", "evicted", "resident"),
    [
        (["a", "b"], [], ["a", "b"]),
        (["a", "b", "c"], ["a"], ["b", "c"]),
        (["a", "b", "a", "c"], ["b"], ["a", "c"]),
        (["a", "b", "a", "c", "b"], ["b", "a"], ["c", "b"]),
        (["a", "a", "a", "b", "c", "d"], ["a", "b"], ["c", "d"]),
    ],
)
async def test_least_recently_used_is_evicted_first(
    parts: AdapterParts, requests: list[str], evicted: list[str], resident: list[str]
) -> None:
    for name in sorted(set(requests)):
        parts.publish(name)
    for name in requests:
        async with parts.manager.use(AdapterSpec(name)):
            pass
    assert parts.engine.remove_calls == [f"{n}@v1" for n in evicted]
    assert [a.manifest.name for a in parts.manager.loaded()] == resident
    assert parts.engine.adapters == {f"{n}@v1" for n in resident}
    assert (sample(parts.metrics, "loraplane_serving_adapter_evictions_total", tier="engine") or 0) == len(evicted)
    assert sample(parts.metrics, "loraplane_serving_adapters_resident", tier="engine") == len(resident)


async def test_adapter_in_use_is_never_evicted(parts: AdapterParts) -> None:
    for name in "abcd":
        parts.publish(name)
    async with parts.manager.use(AdapterSpec("a")):  # the least recently used from here on
        await parts.manager.load(AdapterSpec("b"))
        await parts.manager.load(AdapterSpec("c"))
        await parts.manager.load(AdapterSpec("d"))
        assert parts.engine.remove_calls == ["b@v1", "c@v1"]
        assert [a.key for a in parts.manager.loaded()] == ["a@v1", "d@v1"]
    await parts.manager.load(AdapterSpec("b"))
    assert parts.engine.remove_calls == ["b@v1", "c@v1", "a@v1"]


async def test_with_every_slot_busy_a_load_waits_for_one_to_free(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=1)
    parts.publish("a")
    parts.publish("b")
    async with parts.manager.use(AdapterSpec("a")):
        waiting = asyncio.create_task(parts.manager.load(AdapterSpec("b")))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert parts.engine.added_keys == ["a@v1"]
        assert parts.engine.remove_calls == []
    await asyncio.wait_for(waiting, TIMEOUT)
    assert parts.engine.remove_calls == ["a@v1"]
    assert [a.key for a in parts.manager.loaded()] == ["b@v1"]


async def test_concurrent_first_uses_load_once(parts: AdapterParts) -> None:
    parts.publish("alpha")
    gate = parts.engine.load_gate = asyncio.Event()

    async def request() -> str:
        async with parts.manager.use(AdapterSpec("alpha")) as adapter:
            assert adapter is not None
            assert parts.manager.is_loaded(adapter.key)
            return adapter.key

    tasks = [asyncio.create_task(request()) for _ in range(10)]
    await asyncio.wait_for(parts.engine.load_started.wait(), TIMEOUT)
    for _ in range(50):  # the other nine reach the load in flight and wait for it
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)
    assert len(parts.engine.add_calls) == 1
    gate.set()

    assert await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT) == ["alpha@v1"] * 10
    assert parts.engine.added_keys == ["alpha@v1"]
    assert sample(parts.metrics, LOOKUPS, tier="engine", result="miss") == 1
    assert sample(parts.metrics, LOOKUPS, tier="engine", result="hit") == 9
    assert sample(parts.metrics, LOOKUPS, tier="disk", result="miss") == 1
    assert parts.manager._slots._loads._locks == {}


async def test_adapter_stays_busy_until_its_last_user_leaves(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=1)
    parts.publish("a")
    parts.publish("b")
    leave = [asyncio.Event() for _ in range(3)]
    inside = asyncio.Semaphore(0)

    async def request(event: asyncio.Event) -> None:
        async with parts.manager.use(AdapterSpec("a")):
            inside.release()
            await event.wait()

    tasks = [asyncio.create_task(request(event)) for event in leave]
    for _ in leave:
        await asyncio.wait_for(inside.acquire(), TIMEOUT)
    for event in leave[:2]:
        event.set()
    await asyncio.wait_for(asyncio.gather(*tasks[:2]), TIMEOUT)
    waiting = asyncio.create_task(parts.manager.load(AdapterSpec("b")))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "one user is still inside"
    leave[2].set()
    await asyncio.wait_for(tasks[2], TIMEOUT)
    await asyncio.wait_for(waiting, TIMEOUT)
    assert parts.engine.remove_calls == ["a@v1"]


async def test_failed_engine_load_leaves_no_slot_and_the_next_use_retries(parts: AdapterParts) -> None:
    parts.publish("alpha")
    parts.engine.add_error = RuntimeError("out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        await parts.manager.load(AdapterSpec("alpha"))
    assert parts.manager.loaded() == []
    parts.engine.add_error = None
    await parts.manager.load(AdapterSpec("alpha"))
    assert parts.engine.added_keys == ["alpha@v1", "alpha@v1"]
    assert [a.key for a in parts.manager.loaded()] == ["alpha@v1"]
    assert sample(parts.metrics, LOOKUPS, tier="disk", result="hit") == 1  # the verified copy was kept


@pytest.mark.parametrize(
    ("elapsed", "served"),
    [(0.0, "alpha@v1"), (9.99, "alpha@v1"), (10.0, "alpha@v2"), (500.0, "alpha@v2")],
)
async def test_unpinned_name_follows_a_new_version_once_the_ttl_passes(
    tmp_path: Path, elapsed: float, served: str
) -> None:
    clock = FakeClock()
    parts = build_adapter_manager(tmp_path, max_loaded=4, resolve_ttl_seconds=10.0, clock=clock)
    parts.publish("alpha")
    assert (await parts.manager.load(AdapterSpec("alpha"))).key == "alpha@v1"
    parts.publish("alpha")
    clock.advance(elapsed)

    async with parts.manager.use(AdapterSpec("alpha")) as adapter:
        assert adapter is not None and adapter.key == served
    async with parts.manager.use(AdapterSpec("alpha", 1)) as pinned:
        assert pinned is not None and pinned.key == "alpha@v1"
    assert parts.engine.added_keys == sorted({"alpha@v1", served})


@pytest.mark.parametrize(
    ("spec", "elapsed", "store_reads"),
    [
        ("alpha@v1", [0, 0, 0], 1),
        ("alpha@v1", [0, 100, 100], 1),
        ("alpha", [0, 0, 0], 1),
        ("alpha", [0, 5, 4.9], 1),
        ("alpha", [0, 5, 5], 2),
        ("alpha", [0, 6, 6, 6], 2),
        ("alpha", [0, 10, 10], 3),
    ],
)
async def test_pinned_versions_resolve_once_and_names_once_per_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, elapsed: list[float], store_reads: int
) -> None:
    clock = FakeClock()
    parts = build_adapter_manager(tmp_path, resolve_ttl_seconds=10.0, clock=clock)
    parts.publish("alpha")
    reads: list[AdapterSpec] = []
    resolve = parts.repository.resolve

    def counting_resolve(asked: AdapterSpec) -> Any:
        reads.append(asked)
        return resolve(asked)

    monkeypatch.setattr(parts.repository, "resolve", counting_resolve)
    for seconds in elapsed:
        clock.advance(seconds)
        assert (await parts.manager.resolve(_spec(spec))).key == "alpha@v1"
    assert len(reads) == store_reads


async def test_while_the_store_is_unavailable_a_name_keeps_its_last_version_and_a_new_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    parts = build_adapter_manager(tmp_path, resolve_ttl_seconds=10.0, clock=clock)
    parts.publish("alpha")
    parts.publish("beta")
    assert (await parts.manager.resolve(AdapterSpec("alpha"))).key == "alpha@v1"

    def store_down(asked: AdapterSpec) -> Any:
        raise Unavailable("cannot reach S3")

    monkeypatch.setattr(parts.repository, "resolve", store_down)
    clock.advance(60)  # past the TTL: the name must be resolved again, and cannot be
    assert (await parts.manager.resolve(AdapterSpec("alpha"))).key == "alpha@v1"
    for never_resolved in (AdapterSpec("beta"), AdapterSpec("alpha", 2)):
        with pytest.raises(Unavailable, match="S3"):
            await parts.manager.resolve(never_resolved)


async def test_unknown_adapter_is_not_found(parts: AdapterParts) -> None:
    parts.publish("alpha")
    for spec in (AdapterSpec("nope"), AdapterSpec("alpha", 2)):
        with pytest.raises(NotFound):
            await parts.manager.resolve(spec)
    assert parts.engine.add_calls == []


@pytest.mark.parametrize(
    ("unload", "removed", "resident"),
    [
        ("alpha", ["alpha@v1", "alpha@v2"], ["beta@v1"]),
        ("alpha@v1", ["alpha@v1"], ["alpha@v2", "beta@v1"]),
        ("alpha@v2", ["alpha@v2"], ["alpha@v1", "beta@v1"]),
        ("beta", ["beta@v1"], ["alpha@v1", "alpha@v2"]),
        ("gamma", [], ["alpha@v1", "alpha@v2", "beta@v1"]),  # published, not loaded: nothing to do
    ],
)
async def test_unload_removes_the_named_versions(
    tmp_path: Path, unload: str, removed: list[str], resident: list[str]
) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=4)
    for name in ("alpha", "alpha", "beta", "gamma"):
        parts.publish(name)
    for spec in ("alpha@v1", "alpha@v2", "beta"):
        await parts.manager.load(_spec(spec))
    await parts.manager.unload(_spec(unload))
    assert sorted(parts.engine.remove_calls) == removed
    assert sorted(a.key for a in parts.manager.loaded()) == resident
    assert sample(parts.metrics, "loraplane_serving_adapters_resident", tier="engine") == len(resident)


@pytest.mark.parametrize("unload", ["alpha", "alpha@v1"])
async def test_unload_of_a_busy_adapter_waits_for_its_requests_and_new_ones_load_it_again(
    parts: AdapterParts, unload: str
) -> None:
    parts.publish("alpha")
    in_flight = parts.manager.use(AdapterSpec("alpha"))
    await in_flight.__aenter__()
    unloading = asyncio.create_task(parts.manager.unload(_spec(unload)))
    await asyncio.sleep(0.05)
    assert not unloading.done() and parts.engine.remove_calls == [], "the request in flight keeps it"
    arriving = asyncio.create_task(parts.manager.load(AdapterSpec("alpha")))
    await asyncio.sleep(0.05)
    assert not arriving.done(), "a new request does not take a version on its way out"
    await in_flight.__aexit__(None, None, None)
    await asyncio.wait_for(unloading, TIMEOUT)
    await asyncio.wait_for(arriving, TIMEOUT)
    assert parts.engine.remove_calls == ["alpha@v1"]
    assert [key for key, _ in parts.engine.add_calls] == ["alpha@v1", "alpha@v1"], "loaded again after"
    assert parts.manager.is_loaded("alpha@v1")


async def test_pinned_adapters_are_never_evicted_until_unloaded(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=2)
    for name in ("alpha", "beta", "gamma", "delta"):
        parts.publish(name)
    await parts.manager.load(AdapterSpec("alpha"), pin=True)
    for name in ("beta", "gamma", "delta"):  # each evicts the last, never the pinned alpha
        async with parts.manager.use(AdapterSpec(name)):
            pass
    assert parts.engine.remove_calls == ["beta@v1", "gamma@v1"]
    assert parts.manager.status(await parts.manager.resolve(AdapterSpec("alpha"))).pinned
    await parts.manager.load(AdapterSpec("delta"), pin=True)
    with pytest.raises(ResourceExhausted, match="all 2 adapter slots are pinned"):
        await parts.manager.load(AdapterSpec("beta"))
    await parts.manager.unload(AdapterSpec("alpha"))  # unpins and unloads
    await parts.manager.load(AdapterSpec("beta"))
    assert {a.key for a in parts.manager.loaded()} == {"delta@v1", "beta@v1"}


async def test_status_gives_tier_size_requests_and_last_use(parts: AdapterParts) -> None:
    for name in ("alpha", "beta", "gamma"):
        parts.publish(name)
    for _ in range(3):
        async with parts.manager.use(AdapterSpec("alpha")):
            pass
    await parts.manager.load(AdapterSpec("beta"))
    await parts.manager.load(AdapterSpec("gamma"))  # two slots: alpha, the least recently used, leaves

    resolved = {name: await parts.manager.resolve(AdapterSpec(name)) for name in ("alpha", "beta", "gamma")}
    alpha, beta = parts.manager.status(resolved["alpha"]), parts.manager.status(resolved["beta"])
    assert (alpha.tier, alpha.usage.requests, alpha.pinned) == ("disk", 3, False)
    assert alpha.usage.last_used_at is not None and alpha.size_bytes > 0
    assert (beta.tier, beta.usage.requests, beta.usage.last_used_at) == ("engine", 0, None), "loaded, not used"
    parts.publish("delta")
    delta = parts.manager.status(await parts.manager.resolve(AdapterSpec("delta")))
    assert (delta.tier, delta.size_bytes) == ("store", 0)


@pytest.mark.parametrize("unload", ["nope", "alpha@v9"])
async def test_unload_of_an_unknown_adapter_is_not_found(parts: AdapterParts, unload: str) -> None:
    parts.publish("alpha")
    await parts.manager.load(AdapterSpec("alpha"))
    with pytest.raises(NotFound):
        await parts.manager.unload(_spec(unload))
    assert parts.manager.is_loaded("alpha@v1")


async def test_cache_metrics_count_engine_and_disk_hits_and_misses(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=1)
    parts.publish("alpha")
    parts.publish("beta")
    alpha = AdapterSpec("alpha")
    await parts.manager.load(alpha)  # engine miss, disk miss (from the store)
    await parts.manager.load(alpha)  # engine hit
    await parts.manager.load(AdapterSpec("beta"))  # engine miss, disk miss, evicts alpha
    await parts.manager.load(alpha)  # engine miss, disk hit, evicts beta

    def value(name: str, **labels: str) -> float | None:
        return sample(parts.metrics, name, **labels)

    assert value(LOOKUPS, tier="engine", result="hit") == 1
    assert value(LOOKUPS, tier="engine", result="miss") == 3
    assert value(LOOKUPS, tier="disk", result="hit") == 1
    assert value(LOOKUPS, tier="disk", result="miss") == 2
    assert value("loraplane_serving_adapter_evictions_total", tier="engine") == 2
    assert value("loraplane_serving_adapter_loads_total", adapter="alpha") == 2
    assert value("loraplane_serving_adapter_loads_total", adapter="beta") == 1
    assert value("loraplane_serving_adapter_load_duration_seconds_count", source="store") == 2
    assert value("loraplane_serving_adapter_load_duration_seconds_count", source="disk") == 1
    assert value("loraplane_serving_adapters_resident", tier="engine") == 1
    assert value("loraplane_serving_adapters_resident", tier="disk") == 2
    on_disk = sum(f.stat().st_size for f in parts.cache_dir.glob("*/v*/*"))
    assert value("loraplane_serving_adapter_cache_bytes") == on_disk > 0


async def test_published_lists_the_newest_version_of_every_adapter(parts: AdapterParts) -> None:
    parts.publish("alpha")
    parts.publish("alpha")
    parts.publish("foreign", fingerprint=OTHER_FINGERPRINT)
    published = await parts.manager.published()
    assert sorted(a.key for a in published) == ["alpha@v2", "foreign@v1"]
    assert parts.engine.add_calls == []


async def test_keyed_locks_are_dropped_when_nobody_holds_or_waits() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, tag: str, release: asyncio.Event) -> None:
        async with locks.hold(key):
            order.append(tag)
            await release.wait()

    release = asyncio.Event()
    first = asyncio.create_task(hold("k", "first", release))
    second = asyncio.create_task(hold("k", "second", release))
    other = asyncio.create_task(hold("other", "other", release))
    await asyncio.sleep(0)
    assert order == ["first", "other"]  # one holder per key; other keys do not wait
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await asyncio.wait_for(asyncio.gather(first, other), TIMEOUT)
    assert order == ["first", "other"]
    assert locks._locks == {}


async def test_the_disk_cache_keeps_to_its_bound_deleting_the_least_recently_used_copies(tmp_path: Path) -> None:
    """Room on disk for about two copies, one engine slot: loading a third version deletes the copy
    used longest ago, never the one in the engine; a deleted copy comes from the store again."""
    probe = build_adapter_manager(tmp_path / "probe", max_loaded=1)
    probe.publish("probe")
    await probe.manager.load(AdapterSpec("probe"))
    one_copy = int(sample(probe.metrics, "loraplane_serving_adapter_cache_bytes") or 0)
    parts = build_adapter_manager(tmp_path, max_loaded=1, max_cache_bytes=2 * one_copy + one_copy // 2)
    for name in ("alpha", "beta", "gamma"):
        parts.publish(name)

    def cached() -> set[str]:
        return {path.parent.name for path in parts.cache_dir.glob("*/v*")}

    for name in ("alpha", "beta"):
        await parts.manager.load(AdapterSpec(name))
        await asyncio.sleep(0.01)  # distinct modification times
    assert cached() == {"alpha", "beta"}
    await parts.manager.load(AdapterSpec("gamma"))
    assert cached() == {"beta", "gamma"}, "alpha, used longest ago and out of the engine, is deleted"
    assert sample(parts.metrics, "loraplane_serving_adapter_evictions_total", tier="disk") == 1
    on_disk = sum(f.stat().st_size for f in parts.cache_dir.glob("*/v*/*"))
    assert (
        sample(parts.metrics, "loraplane_serving_adapter_cache_bytes")
        == on_disk
        <= parts.manager.policy.max_cache_bytes
    )
    assert sample(parts.metrics, "loraplane_serving_adapters_resident", tier="disk") == 2

    misses = sample(parts.metrics, LOOKUPS, tier="disk", result="miss")
    await parts.manager.load(AdapterSpec("alpha"))
    assert sample(parts.metrics, LOOKUPS, tier="disk", result="miss") == (misses or 0) + 1, "fetched again"
    assert cached() == {"gamma", "alpha"}, "beta is now the least recently used"


async def test_a_cold_load_holds_up_no_request_for_a_loaded_adapter(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=3)
    parts.publish("warm")
    parts.publish("cold")
    await parts.manager.load(AdapterSpec("warm"))
    parts.engine.load_gate = asyncio.Event()  # the cold adapter's load stalls in the engine
    parts.engine.load_started.clear()
    loading = asyncio.create_task(parts.manager.load(AdapterSpec("cold")))
    await asyncio.wait_for(parts.engine.load_started.wait(), TIMEOUT)
    for _ in range(5):
        async with asyncio.timeout(TIMEOUT / 10):  # at once, while the load is still in flight
            async with parts.manager.use(AdapterSpec("warm")) as adapter:
                assert adapter is not None and adapter.key == "warm@v1"
    assert not loading.done()
    parts.engine.load_gate.set()
    await asyncio.wait_for(loading, TIMEOUT)


async def test_evicted_adapters_wait_in_host_memory_and_come_back_without_reading_their_files(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=1, max_cpu=2)
    for name in "abcd":
        parts.publish(name)
    for name in "abcad":  # a leaves for host memory, comes back from it; d's arrival drops b from it
        await parts.manager.load(AdapterSpec(name))

    assert parts.engine.restored == ["a@v1"]
    assert parts.engine.added_keys == ["a@v1", "b@v1", "c@v1", "a@v1", "d@v1"]
    assert parts.engine.remove_calls == ["b@v1"], "only the least recently used host copy is dropped"
    assert parts.engine.offloaded == {"a@v1", "c@v1"}
    tiers = {name: parts.manager.status(await parts.manager.resolve(AdapterSpec(name))).tier for name in "abcd"}
    assert tiers == {"a": "cpu", "b": "disk", "c": "cpu", "d": "engine"}

    def value(name: str, **labels: str) -> float | None:
        return sample(parts.metrics, name, **labels)

    assert value(LOOKUPS, tier="cpu", result="hit") == 1
    assert value(LOOKUPS, tier="cpu", result="miss") == 4
    assert value(LOOKUPS, tier="disk", result="miss") == 4, "the restored adapter's files were not read"
    assert value("loraplane_serving_adapter_load_duration_seconds_count", source="cpu") == 1
    assert value("loraplane_serving_adapter_evictions_total", tier="engine") == 4
    assert value("loraplane_serving_adapter_evictions_total", tier="cpu") == 1
    assert value("loraplane_serving_adapters_resident", tier="cpu") == 2


async def test_unload_drops_host_copies_too(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=1, max_cpu=4)
    for name in ("alpha", "beta"):
        parts.publish(name)
    await parts.manager.load(AdapterSpec("alpha"))
    await parts.manager.load(AdapterSpec("beta"))  # alpha to host memory
    assert parts.engine.offloaded == {"alpha@v1"}

    await parts.manager.unload(AdapterSpec("alpha"))

    assert parts.engine.offloaded == set() and parts.engine.remove_calls == ["alpha@v1"]
    assert parts.manager.status(await parts.manager.resolve(AdapterSpec("alpha"))).tier == "disk"
    await parts.manager.load(AdapterSpec("alpha"))
    assert parts.engine.restored == [], "loaded again from its files"


async def test_a_failed_return_from_host_memory_keeps_the_host_copy(tmp_path: Path) -> None:
    parts = build_adapter_manager(tmp_path, max_loaded=1, max_cpu=1)
    for name in ("alpha", "beta"):
        parts.publish(name)
    await parts.manager.load(AdapterSpec("alpha"))
    await parts.manager.load(AdapterSpec("beta"))
    parts.engine.add_error = RuntimeError("engine busy")
    with pytest.raises(RuntimeError, match="engine busy"):
        await parts.manager.load(AdapterSpec("alpha"))
    parts.engine.add_error = None

    assert parts.manager.status(await parts.manager.resolve(AdapterSpec("alpha"))).tier == "cpu"
    assert parts.engine.remove_calls == [], "beta went to host memory, and alpha stayed there"
    await parts.manager.load(AdapterSpec("alpha"))
    assert parts.engine.restored == ["alpha@v1"]
