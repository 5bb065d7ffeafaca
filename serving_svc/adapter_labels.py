"""Which adapters get an `adapter` label of their own in the metrics: the busiest K, the rest "_other".

A replica may serve thousands of adapters; a series per adapter per metric would swamp
Prometheus. Each adapter keeps a request count that halves every `half_life_seconds`; the K
with the highest counts own labels. A newcomer takes the place of the quietest owner only once
it is clearly busier (twice the count), so two adapters of equal traffic do not swap back and
forth. A demoted adapter's series are removed (`on_demote`) and it counts under "_other" from
then on: every request is counted in exactly one series, so sums over adapters stay right.

The drift metrics reuse this scheme, so one adapter is labelled alike everywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

OTHER_LABEL = "_other"


class AdapterLabels:
    def __init__(
        self,
        limit: int,
        on_demote: Callable[[str], None],
        *,
        half_life_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._on_demote = on_demote
        self._decay = math.log(2) / half_life_seconds
        self._clock = clock
        self._scores: dict[str, tuple[float, float]] = {}  # name -> (count, as of time)
        self._owners: set[str] = set()

    def _score(self, name: str, now: float) -> float:
        count, at = self._scores.get(name, (0.0, now))
        return count * math.exp(-self._decay * (now - at))

    def label(self, name: str) -> str:
        """Count one request for adapter `name` and return the label it is counted under."""
        now = self._clock()
        score = self._score(name, now) + 1.0
        self._scores[name] = (score, now)
        if name in self._owners:
            return name
        if len(self._owners) < self._limit:
            self._owners.add(name)
            return name
        quietest = min(self._owners, key=lambda owner: (self._score(owner, now), owner))
        if score <= 2 * self._score(quietest, now):
            return OTHER_LABEL
        self._owners.remove(quietest)
        self._owners.add(name)
        self._on_demote(quietest)
        return name

    def owners(self) -> frozenset[str]:
        return frozenset(self._owners)

    def owns(self, name: str) -> bool:
        return name in self._owners
