"""AdapterSlots and its eviction policy, over fakes of the three engine calls and of the disk cache's fetch:
exact slot states for LRU order, pins, draining, single flight, waiting for a slot and the host tier."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loraplane.artifact import Manifest
from loraplane.drift import Profile
from loraplane.errors import FailedPrecondition, ResourceExhausted
from serving_svc.adapters.disk_cache import VerifiedCopy
from serving_svc.adapters.eviction import EvictionPolicy, LRUEvictionPolicy
from serving_svc.adapters.resolver import ResolvedAdapter
from serving_svc.adapters.slots import AdapterSlots, NoIdleSlot
from serving_svc.metrics import LoadSource, ServingMetrics
from tests.support.artifact_contract import make_draft

TIMEOUT = 5.0
"""Seconds a test waits for what should happen at once, so a regression fails instead of hanging."""
PROFILE = Profile()


def version(name: str, number: int = 1) -> ResolvedAdapter:
    manifest = Manifest(**make_draft(name).model_dump(), version=number, created_at=datetime.now(UTC), files={})
    return ResolvedAdapter(manifest, manifest_sha256="0" * 64, uri=f"file:///store/adapters/{name}/v{number}")


class FakeSlotEngine:
    """Records the slots' engine calls as ("add" | "offload" | "remove", key); can hold or fail an add."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.add_gate: asyncio.Event | None = None
        self.add_started = asyncio.Event()
        self.add_error: Exception | None = None

    async def add_adapter(self, key: str, path: Path) -> None:
        assert path == Path("/cache") / key, "the engine reads the verified copy"
        self.calls.append(("add", key))
        self.add_started.set()
        if self.add_gate is not None:
            await self.add_gate.wait()
        if self.add_error is not None:
            raise self.add_error

    async def offload_adapter(self, key: str) -> None:
        self.calls.append(("offload", key))

    async def remove_adapter(self, key: str) -> None:
        self.calls.append(("remove", key))

    def removed(self) -> list[str]:
        return [key for call, key in self.calls if call == "remove"]


class FakeFetch:
    """The disk cache's part: a verified copy per version, each fetch counted; fails while `error` is set."""

    def __init__(self) -> None:
        self.fetched: list[str] = []
        self.error: Exception | None = None

    async def __call__(self, adapter: ResolvedAdapter) -> tuple[VerifiedCopy, LoadSource]:
        self.fetched.append(adapter.key)
        if self.error is not None:
            raise self.error
        return VerifiedCopy(Path("/cache") / adapter.key, PROFILE), "store"


class FakeClock:
    """Monotonic seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


IDLE_SECONDS = 60.0
"""How long no caller must have used a version before yielding work may evict it."""


class Parts:
    def __init__(
        self, max_loaded: int = 2, max_host: int = 0, policy: type[EvictionPolicy] = LRUEvictionPolicy
    ) -> None:
        self.engine = FakeSlotEngine()
        self.fetch = FakeFetch()
        self.metrics = ServingMetrics(adapter_labels=8)
        self.clock = FakeClock()
        self.slots = AdapterSlots(
            self.engine,
            self.fetch,
            self.metrics,
            max_loaded=max_loaded,
            max_host=max_host,
            policy=policy,
            yielding_idle_seconds=IDLE_SECONDS,
            clock=self.clock,
        )

    def loaded(self) -> list[str]:
        return [adapter.key for adapter in self.slots.loaded()]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- the policy -------------------------------------------------------------------------------


def test_the_lru_policy_picks_the_least_recently_used_candidate() -> None:
    policy = LRUEvictionPolicy()
    for key in ("a", "b", "c", "a"):
        policy.mark_used(key)
    assert policy.order() == ["b", "c", "a"]
    assert policy.select_victim({"a", "b", "c"}) == "b"
    assert policy.select_victim({"a", "c"}) == "c"
    assert policy.select_victim(set()) is None
    policy.remove("c")
    policy.remove("never-there")
    assert policy.order() == ["b", "a"]


class FakeMostRecentlyUsedPolicy(LRUEvictionPolicy):
    """Evicts the most recently used candidate: proves the slots follow their policy, not a rule of their own."""

    def select_victim(self, candidates: Collection[str]) -> str | None:
        return next((key for key in reversed(self.order()) if key in candidates), None)


async def test_the_slots_evict_whatever_their_policy_picks() -> None:
    parts = Parts(max_loaded=2, policy=FakeMostRecentlyUsedPolicy)
    for name in ("a", "b", "c"):
        await parts.slots.load(version(name))
    assert parts.engine.removed() == ["b@v1"]
    assert parts.loaded() == ["a@v1", "c@v1"]


# -- the engine tier ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "evicted", "resident"),
    [
        ("ab", "", "ab"),
        ("abc", "a", "bc"),
        ("abac", "b", "ac"),
        ("abacb", "ba", "cb"),
        ("aaabcd", "ab", "cd"),
    ],
)
async def test_the_least_recently_used_version_leaves_first(requests: str, evicted: str, resident: str) -> None:
    parts = Parts(max_loaded=2)
    for name in requests:
        async with parts.slots.use(version(name)) as copy:
            assert copy == VerifiedCopy(Path("/cache") / f"{name}@v1", PROFILE)
    assert parts.engine.removed() == [f"{name}@v1" for name in evicted]
    assert parts.loaded() == [f"{name}@v1" for name in resident], "the next to leave first"
    assert parts.metric("loraplane_serving_adapter_evictions_total", tier="engine") == len(evicted)
    assert parts.metric("loraplane_serving_adapters_resident", tier="engine") == len(resident)


async def test_a_pinned_version_is_never_evicted_and_all_pinned_is_resource_exhausted() -> None:
    parts = Parts(max_loaded=2)
    await parts.slots.load(version("a"), pin=True)
    for name in "bcd":
        await parts.slots.load(version(name))
    assert parts.engine.removed() == ["b@v1", "c@v1"]
    assert parts.loaded() == ["a@v1", "d@v1"] and parts.slots.is_pinned("a@v1")
    await parts.slots.load(version("d"), pin=True)
    with pytest.raises(ResourceExhausted, match="all 2 adapter slots are pinned"):
        await parts.slots.load(version("e"))
    assert parts.loaded() == ["a@v1", "d@v1"]
    assert await parts.slots.unload(lambda adapter: adapter.key == "a@v1")
    await parts.slots.load(version("e"))
    assert parts.loaded() == ["d@v1", "e@v1"]


async def test_ten_concurrent_first_uses_fetch_and_load_once() -> None:
    parts = Parts()
    parts.engine.add_gate = asyncio.Event()

    async def request() -> VerifiedCopy:
        async with parts.slots.use(version("a")) as copy:
            return copy

    tasks = [asyncio.create_task(request()) for _ in range(10)]
    await asyncio.wait_for(parts.engine.add_started.wait(), TIMEOUT)
    await settle()
    assert [adapter.key for adapter in parts.slots.waiting()] == ["a@v1"]
    assert not any(task.done() for task in tasks)
    parts.engine.add_gate.set()
    copies = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert copies == [VerifiedCopy(Path("/cache/a@v1"), PROFILE)] * 10
    assert (parts.fetch.fetched, parts.engine.calls) == (["a@v1"], [("add", "a@v1")])
    assert parts.metric("loraplane_serving_adapter_cache_lookups_total", tier="engine", result="miss") == 1
    assert parts.metric("loraplane_serving_adapter_cache_lookups_total", tier="engine", result="hit") == 9
    assert parts.slots.waiting() == [] and parts.slots._loads._locks == {}


async def test_with_every_slot_in_use_a_load_waits_for_one_to_free() -> None:
    parts = Parts(max_loaded=1)
    async with parts.slots.use(version("a")):
        waiting = asyncio.create_task(parts.slots.load(version("b")))
        await settle()
        assert not waiting.done()
        assert parts.fetch.fetched == ["a@v1", "b@v1"], "fetched and verified before waiting"
        assert parts.engine.calls == [("add", "a@v1")]
        assert parts.slots._lock.locked() is False, "the wait holds no lock"
    await asyncio.wait_for(waiting, TIMEOUT)
    assert parts.engine.calls == [("add", "a@v1"), ("remove", "a@v1"), ("add", "b@v1")]
    assert parts.loaded() == ["b@v1"]


async def test_a_failed_fetch_costs_no_eviction() -> None:
    parts = Parts(max_loaded=1)
    await parts.slots.load(version("a"))
    parts.fetch.error = FailedPrecondition("adapter b@v1 cannot be loaded")
    with pytest.raises(FailedPrecondition):
        await parts.slots.load(version("b"))
    assert parts.engine.calls == [("add", "a@v1")]
    assert parts.loaded() == ["a@v1"]
    assert parts.metric("loraplane_serving_adapter_load_failures_total", adapter="b") == 1


async def test_a_draining_version_takes_no_new_request_and_is_loaded_again_after() -> None:
    parts = Parts()
    a = version("a")
    in_flight = parts.slots.use(a)
    await in_flight.__aenter__()
    unloading = asyncio.create_task(parts.slots.unload(lambda adapter: adapter.manifest.name == "a"))
    await settle()
    arriving = asyncio.create_task(parts.slots.load(a))
    await settle()
    assert not unloading.done() and not arriving.done(), "the request in flight keeps it; the new one waits"
    assert parts.slots.is_loaded("a@v1") and parts.engine.removed() == []
    await in_flight.__aexit__(None, None, None)
    assert await asyncio.wait_for(unloading, TIMEOUT) is True
    await asyncio.wait_for(arriving, TIMEOUT)
    assert parts.engine.calls == [("add", "a@v1"), ("remove", "a@v1"), ("add", "a@v1")]
    assert parts.fetch.fetched == ["a@v1", "a@v1"]


async def test_unloading_what_is_not_held_does_nothing() -> None:
    parts = Parts()
    await parts.slots.load(version("a"))
    assert await parts.slots.unload(lambda adapter: adapter.manifest.name == "b") is False
    assert parts.loaded() == ["a@v1"] and parts.engine.removed() == []


# -- the host tier ------------------------------------------------------------------------------


async def test_an_evicted_version_waits_in_host_memory_and_comes_back_without_a_fetch() -> None:
    parts = Parts(max_loaded=1, max_host=1)
    for name in "aba":
        await parts.slots.load(version(name))
    assert parts.fetch.fetched == ["a@v1", "b@v1"]
    assert parts.engine.calls == [
        ("add", "a@v1"),
        ("offload", "a@v1"),
        ("add", "b@v1"),
        ("offload", "b@v1"),
        ("add", "a@v1"),
    ]
    assert (parts.slots.tier_of("a@v1"), parts.slots.tier_of("b@v1"), parts.slots.tier_of("c@v1")) == (
        "engine",
        "cpu",
        None,
    )
    assert parts.slots.held_copies() == {Path("/cache/a@v1"), Path("/cache/b@v1")}
    assert parts.slots.copy_of("b@v1") == VerifiedCopy(Path("/cache/b@v1"), PROFILE), "kept with its host copy"

    await parts.slots.load(version("c"))  # a goes to host memory; b, there longest, leaves it
    assert parts.engine.calls[5:] == [("offload", "a@v1"), ("remove", "b@v1"), ("add", "c@v1")]
    assert parts.slots.held_copies() == {Path("/cache/a@v1"), Path("/cache/c@v1")}
    assert parts.metric("loraplane_serving_adapter_evictions_total", tier="cpu") == 1
    assert parts.metric("loraplane_serving_adapter_load_duration_seconds_count", source="cpu") == 1
    assert parts.metric("loraplane_serving_adapters_resident", tier="cpu") == 1


async def test_a_failed_return_from_host_memory_keeps_the_host_copy() -> None:
    parts = Parts(max_loaded=1, max_host=2)
    await parts.slots.load(version("a"))
    await parts.slots.load(version("b"))
    parts.engine.add_error = RuntimeError("engine busy")
    with pytest.raises(RuntimeError, match="engine busy"):
        await parts.slots.load(version("a"))
    assert parts.slots.tier_of("a@v1") == "cpu" and parts.slots.copy_of("a@v1") is not None
    parts.engine.add_error = None
    await parts.slots.load(version("a"))
    assert parts.fetch.fetched == ["a@v1", "b@v1"], "never read from disk again"
    assert parts.engine.removed() == []


# -- work that yields to callers (shadow requests) ---------------------------------------------------


async def _use_yielding(parts: Parts, name: str) -> None:
    async with parts.slots.use(version(name), yielding=True):
        pass


async def test_yielding_work_loads_only_into_a_free_slot_or_one_no_caller_used_lately() -> None:
    parts = Parts(max_loaded=2)
    await parts.slots.load(version("a"))
    await _use_yielding(parts, "shadow")  # a free slot
    assert parts.loaded() == ["shadow@v1", "a@v1"], "loaded for yielding work: the first to go"
    await parts.slots.load(version("b"))
    assert parts.engine.removed() == ["shadow@v1"], "a caller's load takes the shadow's slot first"

    fetched = list(parts.fetch.fetched)
    with pytest.raises(NoIdleSlot):
        await _use_yielding(parts, "shadow")
    assert parts.loaded() == ["a@v1", "b@v1"], "no version callers used lately is evicted"
    assert parts.fetch.fetched == fetched, "nothing is fetched for a load that cannot be placed"
    assert parts.metric("loraplane_serving_adapter_load_failures_total", adapter="shadow") == 0

    parts.clock.now += IDLE_SECONDS - 1
    await parts.slots.load(version("b"))  # b used again; a idle for 59 s
    with pytest.raises(NoIdleSlot):
        await _use_yielding(parts, "shadow")
    parts.clock.now += 1  # a idle for 60 s
    await _use_yielding(parts, "shadow")
    assert parts.engine.removed() == ["shadow@v1", "a@v1"]
    assert parts.loaded() == ["shadow@v1", "b@v1"]


async def test_yielding_use_of_a_loaded_version_does_not_keep_it_in_the_engine() -> None:
    parts = Parts(max_loaded=2)
    for name in ("a", "b"):
        await parts.slots.load(version(name))
    await _use_yielding(parts, "a")
    assert parts.loaded() == ["a@v1", "b@v1"], "the eviction order is unchanged"
    await parts.slots.load(version("c"))
    assert parts.engine.removed() == ["a@v1"]


async def test_yielding_work_never_waits_for_a_slot_in_use() -> None:
    parts = Parts(max_loaded=1)
    parts.clock.now -= 10 * IDLE_SECONDS  # "a" was last used long ago, but is in use now
    async with parts.slots.use(version("a")):
        parts.clock.now += 10 * IDLE_SECONDS
        with pytest.raises(NoIdleSlot):
            await asyncio.wait_for(_use_yielding(parts, "shadow"), TIMEOUT)
    assert parts.loaded() == ["a@v1"]
