"""The adapter manager: resolve a name in the store, validate, fetch to disk, load into the engine, evict.

Order matters and follows vLLM's LoRA manager: a version is checked (base model fingerprint,
rank, method, checksums) before it can evict anything or reach the engine. Loads are
single-flight per version, so ten first requests for one adapter load it once. Versions are
immutable, so a pinned `name@vN` resolves once; an unpinned `name` is re-resolved after a short
TTL, so a newly published version is served without a restart; while the store is unreachable,
a name keeps the version it last resolved to. Store and disk work runs in
threads, off the event loop.

A version lives in one of three tiers on a replica, each bounded, least recently used out first:
the engine's slots; host memory (the engine keeps its weights, so loading it again is a copy, not
a read and parse of its files); and the verified copies on disk, bounded in bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loraplane.artifact import MANIFEST, PROFILE_FILE, ArtifactRepository, Manifest, manifest_digest
from loraplane.errors import FailedPrecondition, ResourceExhausted, Unavailable
from loraplane.names import AdapterSpec
from serving_svc.adapter_config import check_adapter_config
from serving_svc.engines.base import Engine
from serving_svc.metrics import LoadSource, ServingMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedAdapter:
    """One published adapter version, as the store describes it."""

    manifest: Manifest
    manifest_sha256: str
    uri: str

    @property
    def key(self) -> str:
        """`name@vN`: the engine's key for this version, unique and immutable."""
        return str(self.manifest.spec)


@dataclass
class _Slot:
    adapter: ResolvedAdapter
    in_use: int = 0
    pinned: bool = False
    draining: bool = False
    """Being unloaded: no new request takes it; the unload waits for `idle`."""
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass
class AdapterUsage:
    """What one version has served on this replica since it started."""

    requests: int = 0
    last_used_at: float | None = None
    """Wall-clock seconds (time.time())."""


AdapterTier = Literal["store", "disk", "cpu", "engine"]
"""Where a replica holds a version: only in the store, a verified copy on disk, its weights in host
memory, or loaded in the engine."""


@dataclass(frozen=True)
class AdapterStatus:
    """One version as ListAdapters shows it."""

    adapter: ResolvedAdapter
    tier: AdapterTier
    size_bytes: int
    usage: AdapterUsage
    pinned: bool


def _copy_bytes(copy: Path) -> int:
    """Bytes of one version's verified copy (a flat folder of files)."""
    return sum(f.stat().st_size for f in copy.iterdir())


class _KeyedLocks:
    """One asyncio.Lock per key, dropped once nobody holds or waits for it (request text can make keys)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(frozen=True)
class AdapterPolicy:
    """What this replica accepts and holds."""

    base_model_name: str
    base_model_fingerprint: str
    max_loaded: int
    max_rank: int
    resolve_ttl_seconds: float
    max_cache_bytes: int = 0
    """Bytes of verified copies kept on disk; 0 = no bound."""
    max_cpu: int = 0
    """Versions kept in host memory after leaving the engine; 0 = none (removed from the engine)."""


class AdapterManager:
    def __init__(
        self,
        repository: ArtifactRepository,
        engine: Engine,
        cache_dir: Path,
        policy: AdapterPolicy,
        metrics: ServingMetrics,
    ) -> None:
        self._repository = repository
        self._engine = engine
        self._cache_dir = cache_dir
        self._policy = policy
        self._metrics = metrics
        self._versions: dict[str, ResolvedAdapter] = {}  # "name@vN" -> immutable version
        self._latest: dict[str, tuple[float, ResolvedAdapter]] = {}  # name -> (resolved at, newest)
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # loaded versions, least recently used first
        self._host: OrderedDict[str, ResolvedAdapter] = OrderedDict()  # offloaded versions, least recently used first
        self._restoring: dict[str, ResolvedAdapter] = {}  # taken from the host tier, not yet in a slot
        self._waiting: Counter[str] = Counter()  # version key -> requests waiting for its load
        self._slots_lock = asyncio.Lock()
        self._slot_freed = asyncio.Event()  # set when a slot's last request finishes or a slot empties
        self._locks = _KeyedLocks()
        self._disk_lock = threading.Lock()  # copies are fetched and trimmed on worker threads
        self._fetching: set[Path] = set()
        self._usage: dict[str, AdapterUsage] = {}  # "name@vN" -> what it has served here

    @property
    def policy(self) -> AdapterPolicy:
        return self._policy

    # -- resolution -------------------------------------------------------------------------

    def _described(self, manifest: Manifest, raw: bytes) -> ResolvedAdapter:
        uri = self._repository.version_uri(manifest.name, manifest.version)
        return ResolvedAdapter(manifest, manifest_digest(raw), uri)

    async def _lookup(self, spec: AdapterSpec) -> ResolvedAdapter:
        if spec.version is not None and str(spec) in self._versions:
            return self._versions[str(spec)]
        if spec.version is None and (cached := self._fresh_latest(spec.name)) is not None:
            return cached
        async with self._locks.hold(f"resolve:{spec}"):
            cached = self._versions.get(str(spec)) if spec.version is not None else self._fresh_latest(spec.name)
            if cached is not None:
                return cached
            try:
                manifest, raw = await asyncio.to_thread(self._repository.resolve, spec)
            except Unavailable:
                # The store is down: a name resolved before keeps its last version (it was complete and
                # is immutable), so adapters in use go on answering through an outage; the store is
                # asked again after another TTL, not by every request.
                if spec.version is None and spec.name in self._latest:
                    stale = self._latest[spec.name][1]
                    self._latest[spec.name] = (time.monotonic(), stale)
                    log.warning(
                        "store unavailable: %s stays at %s for another %.0f s",
                        spec,
                        stale.key,
                        self._policy.resolve_ttl_seconds,
                    )
                    return stale
                raise
            adapter = self._described(manifest, raw)
            self._versions[adapter.key] = adapter
            if spec.version is None:
                self._latest[spec.name] = (time.monotonic(), adapter)
            return adapter

    def _fresh_latest(self, name: str) -> ResolvedAdapter | None:
        entry = self._latest.get(name)
        if entry is None or time.monotonic() - entry[0] >= self._policy.resolve_ttl_seconds:
            return None
        return entry[1]

    def _check_servable(self, adapter: ResolvedAdapter) -> None:
        manifest, policy = adapter.manifest, self._policy
        if manifest.base_model.fingerprint != policy.base_model_fingerprint:
            raise FailedPrecondition(
                f"adapter {adapter.key} needs base model {manifest.base_model.name!r} "
                f"(fingerprint {manifest.base_model.fingerprint}); this replica serves "
                f"{policy.base_model_name!r} (fingerprint {policy.base_model_fingerprint}): send it to a "
                f"replica of {manifest.base_model.name!r}"
            )
        if manifest.rank > policy.max_rank:
            raise FailedPrecondition(
                f"adapter {adapter.key} has LoRA rank {manifest.rank}; this replica accepts at most "
                f"{policy.max_rank} (LORAPLANE_MAX_LORA_RANK)"
            )
        if manifest.method not in self._engine.supported_methods:
            raise FailedPrecondition(
                f"adapter {adapter.key} is a {manifest.method} adapter, which the {self._engine.name} engine "
                f"cannot serve; it serves {', '.join(sorted(self._engine.supported_methods))}"
            )

    async def resolve(self, spec: AdapterSpec) -> ResolvedAdapter:
        """The version `spec` names, checked against this replica; FailedPrecondition if it is refused."""
        adapter = await self._lookup(spec)
        self._check_servable(adapter)
        return adapter

    # -- loading ----------------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, spec: AdapterSpec | None) -> AsyncIterator[ResolvedAdapter | None]:
        """The loaded version `spec` names (None: the base model), kept from eviction while in use."""
        async with self.hold(await self.resolve(spec) if spec is not None else None) as adapter:
            yield adapter

    @asynccontextmanager
    async def hold(self, adapter: ResolvedAdapter | None) -> AsyncIterator[ResolvedAdapter | None]:
        """`adapter` (a version `resolve` returned; None: the base model) loaded, and kept from eviction while held."""
        if adapter is None:
            yield None
            return
        slot = await self._ensure_loaded(adapter)
        slot.in_use += 1  # no await since _ensure_loaded returned: eviction cannot slip in between
        slot.idle.clear()
        usage = self._usage.setdefault(adapter.key, AdapterUsage())
        usage.requests += 1
        usage.last_used_at = time.time()
        try:
            yield adapter
        finally:
            slot.in_use -= 1
            if not slot.in_use:
                slot.idle.set()
                self._slot_freed.set()

    async def load(self, spec: AdapterSpec, *, pin: bool = False) -> ResolvedAdapter:
        """Load ahead of traffic (or just mark as recently used when already loaded); `pin` keeps it
        in the engine until `unload`."""
        adapter = await self.resolve(spec)
        slot = await self._ensure_loaded(adapter)
        slot.pinned = slot.pinned or pin
        return adapter

    async def _ensure_loaded(self, adapter: ResolvedAdapter) -> _Slot:
        key = adapter.key
        if (slot := self._touch(key)) is not None:
            self._metrics.adapter_cache_lookups.labels("engine", "hit").inc()
            return slot
        self._waiting[key] += 1
        try:
            return await self._load(adapter)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    async def _load(self, adapter: ResolvedAdapter) -> _Slot:
        """Load `adapter` into a slot, once however many requests wait for it."""
        key = adapter.key
        async with self._locks.hold(f"load:{key}"):
            if (slot := self._touch(key)) is not None:  # loaded by the request this one waited for
                self._metrics.adapter_cache_lookups.labels("engine", "hit").inc()
                return slot
            self._metrics.adapter_cache_lookups.labels("engine", "miss").inc()
            started = time.perf_counter()
            name = adapter.manifest.name
            # Out of the host tier until it has a slot, so no eviction drops it meanwhile.
            offloaded = self._host.pop(key, None) is not None
            if offloaded:
                self._restoring[key] = adapter
            if self._policy.max_cpu:
                self._metrics.adapter_cache_lookups.labels("cpu", "hit" if offloaded else "miss").inc()
            placed = False
            try:
                if offloaded:
                    path, source = self._cache_path(adapter), "cpu"
                else:
                    path, source = await asyncio.to_thread(self._fetch_checked, adapter, self._held_copies())
                async with self._slots_lock:
                    while len(self._slots) >= self._policy.max_loaded:
                        await self._evict_least_recently_used_or_wait()
                    await self._engine.add_adapter(key, path)
                    slot = self._slots[key] = _Slot(adapter)
                    placed = True
            except Exception:  # counted whatever the cause, then handed on
                self._metrics.labelled(self._metrics.adapter_load_failures, self._metrics.adapter_label(name)).inc()
                raise
            finally:
                self._restoring.pop(key, None)
                if offloaded and not placed:  # the engine still holds its host copy (or reads its files again)
                    self._host[key] = adapter
                    self._host.move_to_end(key, last=False)
                    self._metrics.adapters_resident.labels("cpu").set(len(self._host))
            self._metrics.adapter_load_duration.labels(source).observe(time.perf_counter() - started)
            self._metrics.labelled(self._metrics.adapter_loads, self._metrics.adapter_label(name)).inc()
            self._metrics.adapters_resident.labels("engine").set(len(self._slots))
            self._metrics.adapters_resident.labels("cpu").set(len(self._host))
            return slot

    def _held_copies(self) -> set[Path]:
        """The disk copies of the versions in the engine or host memory, which trimming keeps: a
        loaded version's drift profile is read from its copy."""
        held = [slot.adapter for slot in self._slots.values()] + [*self._host.values(), *self._restoring.values()]
        return {self._cache_path(adapter) for adapter in held}

    def _touch(self, key: str) -> _Slot | None:
        """The version's slot, now the most recently used; None when it is not loaded or on its way out."""
        slot = self._slots.get(key)
        if slot is None or slot.draining:
            return None
        self._slots.move_to_end(key)
        return slot

    def profile_path(self, adapter: ResolvedAdapter) -> Path:
        """Where the drift reference profile of a loaded adapter version lies."""
        return self._cache_path(adapter) / PROFILE_FILE

    def _cache_path(self, adapter: ResolvedAdapter) -> Path:
        # The digest in the folder name keeps a copy from an older store (same name@vN, other bytes) out.
        manifest = adapter.manifest
        return self._cache_dir / manifest.name / f"v{manifest.version}-{adapter.manifest_sha256[:16]}"

    def _fetch_checked(self, adapter: ResolvedAdapter, held: set[Path]) -> tuple[Path, LoadSource]:
        """Download and verify the files (reusing a verified copy), then check the LoRA config itself.

        `held`: the copies that trimming the disk cache keeps (`_held_copies`).
        """
        destination = self._cache_path(adapter)
        cached = (destination / MANIFEST).is_file()
        self._metrics.adapter_cache_lookups.labels("disk", "hit" if cached else "miss").inc()
        with self._disk_lock:
            self._fetching.add(destination)
        try:
            path = self._repository.fetch(adapter.manifest, destination)
            os.utime(path)  # the copy's last use, for the disk cache's LRU order (kept across restarts)
        finally:
            with self._disk_lock:
                self._fetching.discard(destination)
        if not cached:
            self._trim_disk_cache(held | {path})
        check_adapter_config(path / "adapter_config.json", adapter.key, self._policy.max_rank)
        return path, "disk" if cached else "store"

    def _trim_disk_cache(self, keep: set[Path]) -> None:
        """Delete the least recently used copies until the cache fits its bound; copies in `keep` or
        being fetched stay (a deleted copy is fetched from the store again when next needed)."""
        with self._disk_lock:
            versions = sorted(
                (p for p in self._cache_dir.glob("*/v*") if (p / MANIFEST).is_file()), key=lambda p: p.stat().st_mtime
            )
            sizes = {version: _copy_bytes(version) for version in versions}
            total = sum(sizes.values())
            bound = self._policy.max_cache_bytes
            for version in versions:
                if not bound or total <= bound:
                    break
                if version in keep or version in self._fetching:
                    continue
                shutil.rmtree(version, ignore_errors=True)
                total -= sizes.pop(version)
                self._metrics.adapter_evictions.labels("disk").inc()
            self._metrics.adapters_resident.labels("disk").set(len(sizes))
            self._metrics.adapter_cache_bytes.set(total)

    async def _evict_least_recently_used_or_wait(self) -> None:
        """Evict the least recently used version no request is using and no one pinned; when every
        slot is busy, wait (holding no lock) for one to free. Call with the slots lock held."""
        victim = next(
            (key for key, slot in self._slots.items() if not (slot.in_use or slot.pinned or slot.draining)), None
        )
        if victim is None:
            if all(slot.pinned for slot in self._slots.values()):
                raise ResourceExhausted(
                    f"all {self._policy.max_loaded} adapter slots are pinned; unpin one (UnloadAdapter), or raise "
                    "LORAPLANE_MAX_LOADED_ADAPTERS"
                )
            self._slot_freed.clear()  # no await since the slots were read: no slot can have freed since
            self._slots_lock.release()
            try:
                await self._slot_freed.wait()  # the request's own deadline bounds the wait
            finally:
                await self._slots_lock.acquire()
            return
        # Forget it before awaiting, so no request starts using a version on its way out.
        adapter = self._slots.pop(victim).adapter
        self._metrics.adapter_evictions.labels("engine").inc()
        self._metrics.adapters_resident.labels("engine").set(len(self._slots))
        if not self._policy.max_cpu:
            await self._engine.remove_adapter(victim)
            return
        self._host[victim] = adapter
        await self._engine.offload_adapter(victim)
        while len(self._host) > self._policy.max_cpu:
            dropped, _ = self._host.popitem(last=False)
            await self._engine.remove_adapter(dropped)
            self._metrics.adapter_evictions.labels("cpu").inc()
        self._metrics.adapters_resident.labels("cpu").set(len(self._host))

    async def unload(self, spec: AdapterSpec) -> None:
        """Unload (and unpin) `name@vN`, or every loaded version of `name`, from the engine and host memory,
        once the requests using it have finished; requests that arrive meanwhile wait and load it again.
        NotFound if the store has no such adapter."""

        def named(adapter: ResolvedAdapter) -> bool:
            return adapter.manifest.name == spec.name and spec.version in (None, adapter.manifest.version)

        keys = [key for key, slot in self._slots.items() if named(slot.adapter)]
        offloaded = [key for key, adapter in self._host.items() if named(adapter)]
        for key in offloaded:
            async with self._locks.hold(f"load:{key}"):
                if self._host.pop(key, None) is not None:
                    await self._engine.remove_adapter(key)
            self._metrics.adapters_resident.labels("cpu").set(len(self._host))
        for key in keys:
            async with self._locks.hold(f"load:{key}"):  # new requests for it wait here, then load it again
                slot = self._slots.get(key)
                if slot is None:
                    continue  # evicted meanwhile
                slot.draining = True
                await slot.idle.wait()
                async with self._slots_lock:
                    if self._slots.get(key) is slot:
                        del self._slots[key]
                        await self._engine.remove_adapter(key)
                        self._slot_freed.set()
                    self._metrics.adapters_resident.labels("engine").set(len(self._slots))
        if not keys and not offloaded:
            await self._lookup(spec)  # unknown -> NotFound; known but not loaded -> nothing

    # -- listing ----------------------------------------------------------------------------

    def loaded(self) -> list[ResolvedAdapter]:
        """Loaded versions, least recently used first."""
        return [slot.adapter for slot in self._slots.values()]

    def newest_version(self, name: str) -> int | None:
        """The version the name `name` last resolved to here, if it was ever asked for unpinned."""
        entry = self._latest.get(name)
        return entry[1].manifest.version if entry is not None else None

    def waiting(self) -> list[ResolvedAdapter]:
        """Versions requests are waiting to have loaded (fetching, or waiting for a free slot)."""
        return [self._versions[key] for key in self._waiting]  # every version a request holds was resolved here

    def is_loaded(self, key: str) -> bool:
        return key in self._slots

    def status(self, adapter: ResolvedAdapter) -> AdapterStatus:
        """Where this replica holds `adapter`, how large its copy is, and what it has served."""
        slot = self._slots.get(adapter.key)
        copy = self._cache_path(adapter)
        on_disk = (copy / MANIFEST).is_file()
        size = _copy_bytes(copy) if on_disk else 0
        tier: AdapterTier = (
            "engine" if slot is not None else "cpu" if adapter.key in self._host else "disk" if on_disk else "store"
        )
        usage = self._usage.get(adapter.key, AdapterUsage())
        return AdapterStatus(adapter, tier, size, usage, pinned=slot is not None and slot.pinned)

    async def published(self) -> list[ResolvedAdapter]:
        """The newest version of every adapter in the store, servable here or not."""
        return await asyncio.to_thread(self._published)

    def _published(self) -> list[ResolvedAdapter]:
        return [self._described(manifest, raw) for manifest, raw in self._repository.list_latest()]
