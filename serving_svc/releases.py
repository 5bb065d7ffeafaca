"""Which version answers a request for an adapter name, by the release records in the store.

Every replica reads the same records (loraplane.releases), so any router in front and any number of
replicas agree: a name's release is read once per TTL (the adapter resolve TTL, so a change reaches
every replica within it), on a worker thread, and a change made through this replica applies here
at once. While the store cannot be read, a name keeps the release it last had here and the replica
says so (a warning, the `stale` flag of GetRelease and `loraplane_release_state_stale`); a name
never read before routes as if it had no release, which is what the resolver then does too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from loraplane.errors import Unavailable
from loraplane.names import AdapterSpec
from loraplane.releases import ReleaseChange, ReleaseLog, ReleaseRecord, VersionRole
from serving_svc.adapters.keyed_locks import KeyedLocks

log = logging.getLogger(__name__)

MAX_KNOWN_NAMES = 4096
"""Names whose release a replica remembers, least recently read out first: requests may name adapters
that do not exist, and no request text may grow memory without bound."""


@dataclass(frozen=True)
class Route:
    """Where one request for an adapter goes."""

    spec: AdapterSpec
    """The version to answer with: pinned, unless the name has no release (then its newest version)."""
    role: VersionRole
    shadow: AdapterSpec | None = None
    """The candidate that also runs the request in the shadow of stable, if the release says so."""
    trial: int | None = None
    """The trial the answering version takes part in (the sequence of the record that started it)."""


@dataclass(frozen=True)
class ReleaseView:
    """An adapter's release as GetRelease shows it."""

    adapter: str
    current: ReleaseRecord | None
    """None: no release; the name answers with its newest version."""
    history: list[ReleaseRecord]
    """Oldest first."""
    stale: bool


@dataclass(frozen=True)
class _Known:
    read_at: float
    record: ReleaseRecord | None
    stale: bool = False


class ReleaseRouter:
    def __init__(self, records: ReleaseLog, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = records
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._locks = KeyedLocks()  # one store read per name at a time, however many requests ask

    async def route(self, spec: AdapterSpec, key: str) -> Route:
        """The version that answers `spec` for the caller whose routing key is `key`."""
        if spec.version is not None:
            return Route(spec, VersionRole.PINNED)
        record = await self.current(spec.name)
        if record is None:
            return Route(spec, VersionRole.LATEST)
        state = record.state
        version, role = state.route(spec.name, key)
        shadow = AdapterSpec(spec.name, state.shadow) if state.shadow is not None else None
        return Route(AdapterSpec(spec.name, version), role, shadow, state.trial)

    async def current(self, name: str) -> ReleaseRecord | None:
        """The newest release record of `name` as this replica knows it, at most a TTL old (or stale)."""
        if (known := self._fresh(name)) is not None:
            return known.record
        async with self._locks.hold(name):
            if (known := self._fresh(name)) is not None:
                return known.record
            try:
                record = await asyncio.to_thread(self._log.current, name)
            except Unavailable:
                return self._keep_through_outage(name)
            self._remember(name, _Known(self._clock(), record))
            return record

    def _remember(self, name: str, known: _Known) -> None:
        """Keep what was read, unless a newer record is known here already (a read that started before a
        change through this replica may end after it)."""
        previous = self._known.get(name)
        if (
            previous is not None
            and previous.record is not None
            and (known.record is None or known.record.sequence < previous.record.sequence)
        ):
            known = _Known(known.read_at, previous.record, known.stale)
        self._known[name] = known
        self._known.move_to_end(name)
        while len(self._known) > MAX_KNOWN_NAMES:
            self._known.popitem(last=False)

    def _fresh(self, name: str) -> _Known | None:
        known = self._known.get(name)
        if known is None or self._clock() - known.read_at >= self._ttl_seconds:
            return None
        return known

    def _keep_through_outage(self, name: str) -> ReleaseRecord | None:
        previous = self._known.get(name)
        record = previous.record if previous else None
        self._remember(name, _Known(self._clock(), record, stale=True))
        log.warning(
            "store unavailable: the release of %s stays %s for another %.0f s",
            name,
            record.state.describe() if record else "unknown (newest version)",
            self._ttl_seconds,
        )
        return record

    def stale(self, name: str) -> bool:
        """Whether `name`'s release could not be read at its last refresh."""
        known = self._known.get(name)
        return known is not None and known.stale

    def stale_names(self) -> list[str]:
        """The names whose release could not be read at their last refresh: routed by what was known."""
        return sorted(name for name, known in self._known.items() if known.stale)

    def released(self) -> Iterator[ReleaseRecord]:
        """The newest record of every name with a release, as this replica routes by it."""
        return (known.record for known in list(self._known.values()) if known.record is not None)

    def released_names(self) -> list[str]:
        return [record.adapter for record in self.released()]

    async def view(self, name: str, history_limit: int) -> ReleaseView:
        """The release of `name` as read from the store now, or as last known here when it cannot be read."""
        try:
            history = await asyncio.to_thread(self._log.history, name, history_limit)
        except Unavailable:
            return ReleaseView(name, await self.current(name), [], stale=True)
        current = history[-1] if history else None
        self._remember(name, _Known(self._clock(), current))
        return ReleaseView(name, current, history, stale=False)

    async def change(
        self, name: str, change: ReleaseChange, *, actor: str, reason: str, figures: dict[str, float] | None = None
    ) -> ReleaseRecord:
        """Write `change` to the store and route by it here at once."""
        record = await asyncio.to_thread(self._log.change, name, change, actor=actor, reason=reason, figures=figures)
        self._remember(name, _Known(self._clock(), record))
        return record
