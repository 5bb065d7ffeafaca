"""The adapter manager: the one face the rest of serving sees of resolving, fetching and loading adapters.

It joins three parts, each usable and tested on its own: the resolver (names to versions, with
its store-outage fallback and the checks that refuse a version this replica cannot serve), the
disk cache (verified copies, bounded in bytes, with each version's drift profile), and the slots
(engine and host tiers, pins, draining, single-flight loads). A version is checked before it can
evict anything or reach the engine; a version lives in one of three tiers on a replica (the
engine's slots, host memory, verified copies on disk), each bounded, least recently used out
first. Store and disk work runs in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from loraplane.artifact import ArtifactRepository
from loraplane.drift import Profile
from loraplane.names import AdapterSpec
from loraplane.serving import AdapterTier
from serving_svc.adapters.disk_cache import DiskCache, VerifiedCopy
from serving_svc.adapters.resolver import AdapterResolver, ResolvedAdapter, ServableCheck
from serving_svc.adapters.slots import AdapterSlots
from serving_svc.engines.base import Engine
from serving_svc.metrics import LoadSource, ServingMetrics


@dataclass
class AdapterUsage:
    """What one version has served on this replica since it started."""

    requests: int = 0
    last_used_at: float | None = None
    """Wall-clock seconds (time.time())."""


@dataclass(frozen=True)
class AdapterStatus:
    """One version as ListAdapters shows it."""

    adapter: ResolvedAdapter
    tier: AdapterTier
    size_bytes: int
    usage: AdapterUsage
    pinned: bool


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
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: the monotonic seconds names are re-resolved by."""
        self._policy = policy
        servable = ServableCheck(
            base_model_name=policy.base_model_name,
            base_model_fingerprint=policy.base_model_fingerprint,
            max_rank=policy.max_rank,
            engine_name=engine.name,
            engine_methods=frozenset(engine.supported_methods),
        )
        self._resolver = AdapterResolver(repository, servable, policy.resolve_ttl_seconds, clock=clock)
        self._disk = DiskCache(
            repository, cache_dir, max_bytes=policy.max_cache_bytes, max_rank=policy.max_rank, metrics=metrics
        )
        self._slots = AdapterSlots(engine, self._fetch, metrics, max_loaded=policy.max_loaded, max_host=policy.max_cpu)
        self._usage: dict[str, AdapterUsage] = {}  # "name@vN" -> what it has served here

    @property
    def policy(self) -> AdapterPolicy:
        return self._policy

    async def _fetch(self, adapter: ResolvedAdapter) -> tuple[VerifiedCopy, LoadSource]:
        return await asyncio.to_thread(self._disk.fetch, adapter, self._slots.held_copies())

    async def resolve(self, spec: AdapterSpec) -> ResolvedAdapter:
        """The version `spec` names, checked against this replica; FailedPrecondition if it is refused."""
        return await self._resolver.resolve(spec)

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
        async with self._slots.use(adapter):
            usage = self._usage.setdefault(adapter.key, AdapterUsage())
            usage.requests += 1
            usage.last_used_at = time.time()
            yield adapter

    @asynccontextmanager
    async def hold_yielding(self, adapter: ResolvedAdapter) -> AsyncIterator[ResolvedAdapter]:
        """`adapter` loaded for work that yields to callers (a shadow request): not counted as use, and
        loaded only where it takes no slot a caller used lately; NoIdleSlot otherwise (AdapterSlots)."""
        async with self._slots.use(adapter, yielding=True):
            yield adapter

    def drift_profile(self, adapter: ResolvedAdapter) -> Profile | None:
        """The training profile of a version held loaded (`hold`); None when it has no usable one."""
        copy = self._slots.copy_of(adapter.key)
        return copy.profile if copy is not None else None

    async def load(self, spec: AdapterSpec, *, pin: bool = False) -> ResolvedAdapter:
        """Load ahead of traffic (or just mark as recently used when already loaded); `pin` keeps it
        in the engine until `unload`."""
        adapter = await self.resolve(spec)
        await self._slots.load(adapter, pin=pin)
        return adapter

    async def unload(self, spec: AdapterSpec) -> None:
        """Unload (and unpin) `name@vN`, or every loaded version of `name`, from the engine and host memory,
        once the requests using it have finished; requests that arrive meanwhile wait and load it again.
        NotFound if the store has no such adapter."""

        def named(adapter: ResolvedAdapter) -> bool:
            return adapter.manifest.name == spec.name and spec.version in (None, adapter.manifest.version)

        if not await self._slots.unload(named):
            await self._resolver.lookup(spec)  # unknown -> NotFound; known but not loaded -> nothing

    # -- listing ----------------------------------------------------------------------------

    def loaded(self) -> list[ResolvedAdapter]:
        """Loaded versions, least recently used first."""
        return self._slots.loaded()

    def newest_version(self, name: str) -> int | None:
        """The version the name `name` last resolved to here, if it was ever asked for unpinned."""
        return self._resolver.newest_version(name)

    def waiting(self) -> list[ResolvedAdapter]:
        """Versions requests are waiting to have loaded (fetching, or waiting for a free slot)."""
        return self._slots.waiting()

    def is_loaded(self, key: str) -> bool:
        return self._slots.is_loaded(key)

    def status(self, adapter: ResolvedAdapter) -> AdapterStatus:
        """Where this replica holds `adapter`, how large its copy is, and what it has served."""
        size = self._disk.size_of(adapter)
        tier: AdapterTier = self._slots.tier_of(adapter.key) or ("disk" if size is not None else "store")
        usage = self._usage.get(adapter.key, AdapterUsage())
        return AdapterStatus(adapter, tier, size or 0, usage, pinned=self._slots.is_pinned(adapter.key))

    async def published(self) -> list[ResolvedAdapter]:
        """The newest version of every adapter in the store, servable here or not."""
        return await self._resolver.published()
