"""Names to versions: what `name` or `name@vN` means in the store now, and whether this replica serves it.

Versions are immutable, so a pinned `name@vN` is read from the store once; an unpinned `name`
is re-resolved once its answer is `ttl_seconds` old, so a newly published version is served
without a restart, and is read once per TTL however many requests ask. While the store is
unreachable, a name keeps the version it last resolved to. The store is read on a worker thread,
off the event loop. Nothing here fetches a file or touches the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from loraplane.artifact import ArtifactRepository, Manifest, manifest_digest
from loraplane.errors import FailedPrecondition, Unavailable
from loraplane.names import AdapterSpec
from serving_svc.adapters.keyed_locks import KeyedLocks

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


@dataclass(frozen=True)
class ServableCheck:
    """What this replica serves, so a version it cannot serve is refused before any file is fetched."""

    base_model_name: str
    base_model_fingerprint: str
    max_rank: int
    engine_name: str
    engine_methods: frozenset[str]
    """The adapter methods (lora, dora, ...) the engine serves."""

    def check(self, adapter: ResolvedAdapter) -> None:
        """Raise FailedPrecondition saying why this replica cannot serve `adapter`, and where it could go."""
        manifest = adapter.manifest
        if manifest.base_model.fingerprint != self.base_model_fingerprint:
            raise FailedPrecondition(
                f"adapter {adapter.key} needs base model {manifest.base_model.name!r} "
                f"(fingerprint {manifest.base_model.fingerprint}); this replica serves "
                f"{self.base_model_name!r} (fingerprint {self.base_model_fingerprint}): send it to a "
                f"replica of {manifest.base_model.name!r}"
            )
        if manifest.rank > self.max_rank:
            raise FailedPrecondition(
                f"adapter {adapter.key} has LoRA rank {manifest.rank}; this replica accepts at most "
                f"{self.max_rank} (LORAPLANE_MAX_LORA_RANK)"
            )
        if manifest.method not in self.engine_methods:
            raise FailedPrecondition(
                f"adapter {adapter.key} is a {manifest.method} adapter, which the {self.engine_name} engine "
                f"cannot serve; it serves {', '.join(sorted(self.engine_methods))}"
            )


class AdapterResolver:
    def __init__(
        self,
        repository: ArtifactRepository,
        servable: ServableCheck,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repository = repository
        self._servable = servable
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._versions: dict[str, ResolvedAdapter] = {}  # "name@vN" -> immutable version
        self._latest: dict[str, tuple[float, ResolvedAdapter]] = {}  # name -> (resolved at, newest)
        self._locks = KeyedLocks()  # one store read per spec at a time, however many requests ask

    async def resolve(self, spec: AdapterSpec) -> ResolvedAdapter:
        """The version `spec` names, checked against this replica; FailedPrecondition if it is refused."""
        adapter = await self.lookup(spec)
        self._servable.check(adapter)
        return adapter

    async def lookup(self, spec: AdapterSpec) -> ResolvedAdapter:
        """The version `spec` names, servable here or not; NotFound if the store has none."""
        if (known := self._known(spec)) is not None:
            return known
        async with self._locks.hold(str(spec)):
            if (known := self._known(spec)) is not None:  # resolved by the request this one waited for
                return known
            try:
                manifest, raw = await asyncio.to_thread(self._repository.resolve, spec)
            except Unavailable:
                if (stale := self._keep_through_outage(spec)) is not None:
                    return stale
                raise
            adapter = self._described(manifest, raw)
            self._versions[adapter.key] = adapter
            if spec.version is None:
                self._latest[spec.name] = (self._clock(), adapter)
            return adapter

    def _known(self, spec: AdapterSpec) -> ResolvedAdapter | None:
        """A pinned version resolved before, or the newest version of a name resolved less than a TTL ago."""
        if spec.version is not None:
            return self._versions.get(str(spec))
        entry = self._latest.get(spec.name)
        if entry is None or self._clock() - entry[0] >= self._ttl_seconds:
            return None
        return entry[1]

    def _keep_through_outage(self, spec: AdapterSpec) -> ResolvedAdapter | None:
        """With the store down, a name resolved before keeps its last version (it was complete and is
        immutable), so adapters in use go on answering through an outage; the store is asked again
        after another TTL, not by every request. None for what was never resolved: it cannot be known."""
        if spec.version is not None or spec.name not in self._latest:
            return None
        stale = self._latest[spec.name][1]
        self._latest[spec.name] = (self._clock(), stale)
        log.warning("store unavailable: %s stays at %s for another %.0f s", spec, stale.key, self._ttl_seconds)
        return stale

    def newest_version(self, name: str) -> int | None:
        """The version the name `name` last resolved to here, if it was ever asked for unpinned."""
        entry = self._latest.get(name)
        return entry[1].manifest.version if entry is not None else None

    async def published(self) -> list[ResolvedAdapter]:
        """The newest version of every adapter in the store, servable here or not."""
        listed = await asyncio.to_thread(self._repository.list_latest)
        return [self._described(manifest, raw) for manifest, raw in listed]

    def _described(self, manifest: Manifest, raw: bytes) -> ResolvedAdapter:
        uri = self._repository.version_uri(manifest.name, manifest.version)
        return ResolvedAdapter(manifest, manifest_digest(raw), uri)
