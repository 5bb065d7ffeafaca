"""The releases this replica routes by, as Prometheus gauges computed at scrape time.

One series per adapter with a release and an `adapter` label of its own (the request metrics'
bound on labels): its stable and candidate versions, the canary share, whether the trial is paused,
and whether the replica could not read the release at its last refresh and routes by the last
state it had (`loraplane_release_state_stale`), which the alert rules watch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving_svc.releases import ReleaseRouter


class ReleaseCollector(Collector):
    def __init__(self, router: ReleaseRouter, owns_label: Callable[[str], bool]) -> None:
        self._router = router
        self._owns_label = owns_label

    def collect(self) -> Iterator[GaugeMetricFamily]:
        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"loraplane_release_{name}", documentation, labels=["adapter"])

        stable = gauge("stable_version", "The version that answers the adapter's name.")
        candidate = gauge("candidate_version", "The version on trial; 0 when there is none.")
        share = gauge(
            "canary_share",
            "The candidate's share of the name's requests (0 in shadow mode, without a candidate or paused).",
        )
        shadow = gauge("shadow", "1 while the candidate runs in the shadow of stable.")
        stale = gauge(
            "state_stale",
            "1 while the replica cannot read the release from the store and routes by the last state it read.",
        )
        stale_names = set(self._router.stale_names())
        for record in self._router.released():
            if not self._owns_label(record.adapter):
                continue
            state, labels = record.state, [record.adapter]
            stable.add_metric(labels, state.stable)
            candidate.add_metric(labels, state.candidate or 0)
            share.add_metric(labels, 0.0 if state.paused else state.canary_share)
            shadow.add_metric(labels, float(state.shadow is not None))
            stale.add_metric(labels, float(record.adapter in stale_names))
        yield from (stable, candidate, share, shadow, stale)
