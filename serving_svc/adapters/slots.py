"""The engine's adapter slots and the host tier behind them: pins, draining, single-flight loads.

A version in a slot answers requests; each tier is bounded, and when it is full its eviction
policy (`eviction.py`) picks the version to leave among those no request uses and no one
pinned. With a host tier (`max_host` > 0) a version leaving the engine is offloaded: the engine
keeps its weights in host memory, so loading it again is a copy, not a read and parse of its
files. Without one, it is removed.

Order follows vLLM's `add_adapter`: the new version is fetched and verified before anything is
evicted, so a version that fails its checks costs no other version its slot. Loads are
single-flight per version, so ten first requests for one adapter load it once.

Work that yields to callers (shadow requests for a release's candidate) uses the slots without
taking them from callers: it does not count as use in the eviction order, and it loads a version
only into a free slot or one no caller has used for `yielding_idle_seconds`; otherwise it gets
`NoIdleSlot` at once and is dropped, so a shadow never evicts a version traffic is using.

When every slot is busy, a load waits for one to free. The waiting is done here, in `_place`, in
one loop: it takes the slot lock, evicts or adds, and when it can do neither it clears the
`_freed` event and leaves the lock before waiting on the event, which every request leaving a
slot sets. The slot lock is held while a slot is filled, evicted or emptied (the engine's calls
included), so slots change one at a time; requests for versions already loaded never take it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from loraplane.errors import ResourceExhausted
from loraplane.serving import LoadedTier
from serving_svc.adapters.disk_cache import VerifiedCopy
from serving_svc.adapters.eviction import EvictionPolicy, LRUEvictionPolicy
from serving_svc.adapters.keyed_locks import KeyedLocks
from serving_svc.adapters.resolver import ResolvedAdapter
from serving_svc.metrics import LoadSource, ServingMetrics


class SlotEngine(Protocol):
    """The engine calls the slots make (`Engine` has them)."""

    async def add_adapter(self, key: str, path: Path) -> None: ...

    async def offload_adapter(self, key: str) -> None: ...

    async def remove_adapter(self, key: str) -> None: ...


class NoIdleSlot(Exception):
    """A yielding load found no free slot and none idle long enough to evict; not an error of the version."""


Fetch = Callable[[ResolvedAdapter], Awaitable[tuple[VerifiedCopy, LoadSource]]]
"""The verified copy of a version, and where it came from (the disk cache, on a worker thread)."""


@dataclass
class _Slot:
    adapter: ResolvedAdapter
    copy: VerifiedCopy
    in_use: int = 0
    pinned: bool = False
    draining: bool = False
    """Being unloaded: no new request takes it; the unload waits for `idle`."""
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    caller_used_at: float = -math.inf
    """When a caller's request last used the version (monotonic); never, for one loaded by yielding work."""

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass(frozen=True)
class _HostCopy:
    """A version offloaded to host memory: the engine keeps its weights, the replica its verified copy."""

    adapter: ResolvedAdapter
    copy: VerifiedCopy


class AdapterSlots:
    def __init__(
        self,
        engine: SlotEngine,
        fetch: Fetch,
        metrics: ServingMetrics,
        *,
        max_loaded: int,
        max_host: int,
        policy: Callable[[], EvictionPolicy] = LRUEvictionPolicy,
        yielding_idle_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`max_loaded`: the engine's slots; `max_host`: versions kept in host memory after leaving the
        engine (0: none, removed from the engine); `policy`: makes each tier's eviction policy;
        `yielding_idle_seconds`: how long no caller must have used a version before yielding work may
        evict it; `clock`: the monotonic seconds that is measured in."""
        self._engine = engine
        self._fetch = fetch
        self._metrics = metrics
        self._max_loaded = max_loaded
        self._max_host = max_host
        self._yielding_idle_seconds = yielding_idle_seconds
        self._clock = clock
        self._slots: dict[str, _Slot] = {}  # "name@vN" -> its slot in the engine
        self._slot_order = policy()
        self._host: dict[str, _HostCopy] = {}  # offloaded versions
        self._host_order = policy()
        self._restoring: dict[str, _HostCopy] = {}  # taken from the host tier, not yet in a slot
        self._waiting: dict[str, tuple[ResolvedAdapter, int]] = {}  # key -> (version, requests waiting for its load)
        self._lock = asyncio.Lock()  # slot changes: adding, evicting, removing
        self._freed = asyncio.Event()  # set when a slot's last request finishes or a slot empties
        self._loads = KeyedLocks()  # one load (or unload) per version at a time

    # -- using and loading ------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, adapter: ResolvedAdapter, *, yielding: bool = False) -> AsyncIterator[VerifiedCopy]:
        """`adapter` loaded, and kept from eviction until the block ends. `yielding`: for work that yields
        to callers (see the module's docstring); NoIdleSlot when it would take a slot from them."""
        slot = await self._ensure_loaded(adapter, yielding)
        slot.in_use += 1  # no await since _ensure_loaded returned: eviction cannot slip in between
        slot.idle.clear()
        try:
            yield slot.copy
        finally:
            slot.in_use -= 1
            if not slot.in_use:
                slot.idle.set()
                self._freed.set()

    async def load(self, adapter: ResolvedAdapter, *, pin: bool = False) -> None:
        """Load ahead of traffic (or mark as recently used when loaded); `pin` keeps it in the engine until unloaded."""
        slot = await self._ensure_loaded(adapter, yielding=False)
        slot.pinned = slot.pinned or pin

    async def _ensure_loaded(self, adapter: ResolvedAdapter, yielding: bool) -> _Slot:
        if (slot := self._touch(adapter.key, yielding)) is not None:
            self._metrics.cache_lookup("engine", hit=True)
            return slot
        key = adapter.key
        self._waiting[key] = (adapter, self._waiting.get(key, (adapter, 0))[1] + 1)
        try:
            return await self._load(adapter, yielding)
        finally:
            _, waiting = self._waiting[key]
            if waiting == 1:
                del self._waiting[key]
            else:
                self._waiting[key] = (adapter, waiting - 1)

    async def _load(self, adapter: ResolvedAdapter, yielding: bool) -> _Slot:
        """Load `adapter` into a slot, once however many requests wait for it."""
        key = adapter.key
        async with self._loads.hold(key):
            if (slot := self._touch(key, yielding)) is not None:  # loaded by the request this one waited for
                self._metrics.cache_lookup("engine", hit=True)
                return slot
            if yielding and self._full() and self._idle_victim() is None:  # before fetching anything
                raise NoIdleSlot(key)
            self._metrics.cache_lookup("engine", hit=False)
            started = time.perf_counter()
            restored = self._take_from_host(key)
            placed = False
            try:
                copy, source = await self._copy(adapter, restored)
                slot = await self._place(adapter, copy, yielding)
                placed = True
            except NoIdleSlot:
                raise
            except Exception:  # counted whatever the cause, then handed on
                self._metrics.load_failed(adapter.manifest.name)
                raise
            finally:
                self._restoring.pop(key, None)
                if restored is not None and not placed:  # the engine still holds its host copy
                    self._to_host(restored)
            self._metrics.adapter_loaded(adapter.manifest.name, source, time.perf_counter() - started)
            self._metrics.resident("engine", len(self._slots))
            self._metrics.resident("cpu", len(self._host))
            return slot

    async def _copy(self, adapter: ResolvedAdapter, restored: _HostCopy | None) -> tuple[VerifiedCopy, LoadSource]:
        """The version's verified copy: the one kept with its host copy, or the disk cache's."""
        return (restored.copy, "cpu") if restored is not None else await self._fetch(adapter)

    def _take_from_host(self, key: str) -> _HostCopy | None:
        """The version's host copy, moved out of the host tier until it has a slot, so no eviction drops it."""
        restored = self._host.pop(key, None)
        if restored is not None:
            self._host_order.remove(key)
            self._restoring[key] = restored
        if self._max_host:
            self._metrics.cache_lookup("cpu", hit=restored is not None)
        return restored

    def _to_host(self, entry: _HostCopy) -> None:
        self._host[entry.adapter.key] = entry
        self._host_order.mark_used(entry.adapter.key)
        self._metrics.resident("cpu", len(self._host))

    def _touch(self, key: str, yielding: bool) -> _Slot | None:
        """The version's slot, now marked used unless by yielding work; None when not loaded or on its way out."""
        slot = self._slots.get(key)
        if slot is None or slot.draining:
            return None
        if not yielding:
            self._slot_order.mark_used(key)
            slot.caller_used_at = self._clock()
        return slot

    async def _place(self, adapter: ResolvedAdapter, copy: VerifiedCopy, yielding: bool) -> _Slot:
        """Add the verified `copy` to the engine, evicting to make room, or waiting for a slot when every
        one is in use (the request's own deadline bounds the wait); yielding work neither waits nor
        evicts a version a caller used lately (NoIdleSlot)."""
        while True:
            async with self._lock:
                if yielding and self._full():
                    if (idle := self._idle_victim()) is None:
                        raise NoIdleSlot(adapter.key)
                    await self._evict(idle)
                while self._full() and (victim := self._victim()) is not None:
                    await self._evict(victim)
                if not self._full():
                    await self._engine.add_adapter(adapter.key, copy.path)
                    slot = self._slots[adapter.key] = _Slot(adapter, copy)
                    if yielding:
                        self._slot_order.mark_idle(adapter.key)
                    else:
                        self._slot_order.mark_used(adapter.key)
                        slot.caller_used_at = self._clock()
                    return slot
                # Every slot is in use. Cleared under the lock with no await since the slots were last
                # read, so a request that leaves a slot from here on sets it again: the wait cannot miss it.
                self._freed.clear()
            await self._freed.wait()

    def _full(self) -> bool:
        return len(self._slots) >= self._max_loaded

    def _idle_victim(self) -> str | None:
        """The version yielding work may evict: the eviction policy's pick among those no request uses, no one
        pinned and no caller used for `yielding_idle_seconds`; None when there is none."""
        horizon = self._clock() - self._yielding_idle_seconds
        candidates = {
            key
            for key, slot in self._slots.items()
            if not (slot.in_use or slot.pinned or slot.draining) and slot.caller_used_at <= horizon
        }
        return self._slot_order.select_victim(candidates)

    def _victim(self) -> str | None:
        """The version to evict for a new one: the policy's pick among those no request uses and no one
        pinned; None when every slot is in use; ResourceExhausted when every slot is pinned."""
        candidates = {key for key, slot in self._slots.items() if not (slot.in_use or slot.pinned or slot.draining)}
        victim = self._slot_order.select_victim(candidates)
        if victim is None and all(slot.pinned for slot in self._slots.values()):
            raise ResourceExhausted(
                f"all {self._max_loaded} adapter slots are pinned; unpin one (UnloadAdapter), or raise "
                "LORAPLANE_MAX_LOADED_ADAPTERS"
            )
        return victim

    async def _evict(self, key: str) -> None:
        """Move version `key` out of its slot: to the host tier when there is one, else out of the engine."""
        # Forgotten before awaiting, so no request starts using a version on its way out.
        slot = self._slots.pop(key)
        self._slot_order.remove(key)
        self._metrics.evicted("engine")
        self._metrics.resident("engine", len(self._slots))
        if not self._max_host:
            await self._engine.remove_adapter(key)
            return
        self._to_host(_HostCopy(slot.adapter, slot.copy))
        await self._engine.offload_adapter(key)
        while len(self._host) > self._max_host and (dropped := self._host_order.select_victim(self._host)) is not None:
            del self._host[dropped]
            self._host_order.remove(dropped)
            await self._engine.remove_adapter(dropped)
            self._metrics.evicted("cpu")
        self._metrics.resident("cpu", len(self._host))

    # -- unloading --------------------------------------------------------------------------

    async def unload(self, matches: Callable[[ResolvedAdapter], bool]) -> bool:
        """Unload (and unpin) every version `matches` picks, from the engine and host memory, once the
        requests using it have finished; requests that arrive meanwhile wait and load it again.
        Returns whether any was held."""
        in_engine = [key for key, slot in self._slots.items() if matches(slot.adapter)]
        in_host = [key for key, entry in self._host.items() if matches(entry.adapter)]
        for key in in_host:
            async with self._loads.hold(key):
                if self._host.pop(key, None) is not None:
                    self._host_order.remove(key)
                    await self._engine.remove_adapter(key)
            self._metrics.resident("cpu", len(self._host))
        for key in in_engine:
            async with self._loads.hold(key):  # new requests for it wait here, then load it again
                await self._drain(key)
        return bool(in_engine or in_host)

    async def _drain(self, key: str) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return  # evicted while this unload waited for the version's lock
        slot.draining = True  # draining slots are never evicted, so it stays until removed below
        await slot.idle.wait()
        async with self._lock:
            del self._slots[key]
            self._slot_order.remove(key)
            await self._engine.remove_adapter(key)
            self._freed.set()
            self._metrics.resident("engine", len(self._slots))

    # -- what the tiers hold ----------------------------------------------------------------

    def loaded(self) -> list[ResolvedAdapter]:
        """Versions in the engine, the next to be evicted first."""
        return [self._slots[key].adapter for key in self._slot_order.order()]

    def waiting(self) -> list[ResolvedAdapter]:
        """Versions requests are waiting to have loaded (fetching, or waiting for a free slot)."""
        return [adapter for adapter, _ in self._waiting.values()]

    def is_loaded(self, key: str) -> bool:
        return key in self._slots

    def is_pinned(self, key: str) -> bool:
        return key in self._slots and self._slots[key].pinned

    def tier_of(self, key: str) -> LoadedTier | None:
        """Where version `key` is held: in a slot, in host memory, or neither."""
        return "engine" if key in self._slots else "cpu" if key in self._host else None

    def copy_of(self, key: str) -> VerifiedCopy | None:
        """The verified copy of a version in a slot or in host memory."""
        if (slot := self._slots.get(key)) is not None:
            return slot.copy
        host = self._host.get(key) or self._restoring.get(key)
        return host.copy if host is not None else None

    def held_copies(self) -> set[Path]:
        """The copies on disk of every version in a slot, in host memory or on its way back from it:
        the disk cache keeps these."""
        in_host = [*self._host.values(), *self._restoring.values()]
        return {slot.copy.path for slot in self._slots.values()} | {entry.copy.path for entry in in_host}
