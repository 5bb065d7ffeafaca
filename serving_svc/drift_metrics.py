"""The drift monitor's figures as Prometheus gauges, computed at scrape time.

Adapters use the request metrics' labels: the busiest K have their own `adapter` label, and
the rest are pooled under "_other", whose statistics compare the pooled windows with the pooled
references (profiles add up exactly). A statistic over its threshold is what the alert rules
look for; the thresholds are exported too (`loraplane_drift_threshold`), so the rules and the
dashboards read them from the replica instead of repeating them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loraplane.drift import DriftStatistic, Profile
from serving_svc.adapter_labels import OTHER_LABEL
from serving_svc.drift_monitor import AdapterDrift, DriftMonitor


class _Families:
    """One scrape's gauge families, filled adapter label by adapter label."""

    def __init__(self) -> None:
        self.drift = GaugeMetricFamily(
            "loraplane_drift",
            "Drift of an adapter's live window from its training profile, per statistic (higher: more drift). "
            "Absent while the window holds fewer requests than LORAPLANE_DRIFT_MIN_SAMPLES.",
            labels=["adapter", "statistic"],
        )
        self.thresholds = GaugeMetricFamily(
            "loraplane_drift_threshold", "The threshold each drift statistic is judged by.", labels=["statistic"]
        )
        self.confidence = GaugeMetricFamily(
            "loraplane_drift_output_confidence",
            "Mean log-probability per generated token, live window and training reference.",
            labels=["adapter", "side"],
        )
        self.surprise = GaugeMetricFamily(
            "loraplane_drift_prompt_surprise",
            "Mean negative log-likelihood per prompt token (sampled prompts), live window and training reference.",
            labels=["adapter", "side"],
        )
        self.window = GaugeMetricFamily(
            "loraplane_drift_window_requests", "Requests in the adapter's drift window.", labels=["adapter"]
        )
        self.reference_samples = GaugeMetricFamily(
            "loraplane_drift_reference_samples",
            "Held-out samples in the adapter's training profile.",
            labels=["adapter"],
        )
        self.feedback_score = GaugeMetricFamily(
            "loraplane_drift_feedback_score",
            "Mean feedback score (0-1) over the window; absent with fewer scores than the minimum.",
            labels=["adapter"],
        )
        self.feedback_rate = GaugeMetricFamily(
            "loraplane_drift_feedback_rate", "Feedback scores per request in the window.", labels=["adapter"]
        )
        self.floor = GaugeMetricFamily(
            "loraplane_drift_feedback_score_floor", "The feedback score under which an adapter is alerted on."
        )

    def every(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            self.drift,
            self.thresholds,
            self.confidence,
            self.surprise,
            self.window,
            self.reference_samples,
            self.feedback_score,
            self.feedback_rate,
            self.floor,
        )


class DriftCollector(Collector):
    def __init__(self, monitor: DriftMonitor, owns_label: Callable[[str], bool]) -> None:
        self._monitor = monitor
        self._owns_label = owns_label

    def collect(self) -> Iterator[GaugeMetricFamily]:
        policy = self._monitor.policy
        families = _Families()
        for statistic in DriftStatistic:
            families.thresholds.add_metric([statistic.value], policy.thresholds[statistic])
        families.floor.add_metric([], policy.feedback_score_floor)
        for label, group in self._groups(self._monitor.adapters()):
            self._add_group(families, label, group)
        yield from families.every()

    def _add_group(self, families: _Families, label: str, group: list[AdapterDrift]) -> None:
        """The figures of the adapters counted under `label`: their windows and references pooled."""
        reference = Profile.total(entry.reference for entry in group)
        live = Profile.total(entry.live for entry in group)
        report = self._monitor.report(reference, live)
        for statistic, value in report.statistics.items():
            if value is not None:
                families.drift.add_metric([label, statistic.value], value)
        for family, pair in (
            (families.confidence, (report.output_confidence, report.reference_output_confidence)),
            (families.surprise, (report.prompt_surprise, report.reference_prompt_surprise)),
        ):
            for side, value in zip(("live", "reference"), pair, strict=True):
                if value is not None:
                    family.add_metric([label, side], value)
        families.window.add_metric([label], live.sample_count)
        families.reference_samples.add_metric([label], reference.sample_count)
        scores = sum(entry.feedback.count for entry in group)
        if scores >= self._monitor.policy.min_samples:
            families.feedback_score.add_metric([label], sum(entry.feedback.score_sum for entry in group) / scores)
        if live.sample_count:
            families.feedback_rate.add_metric([label], scores / live.sample_count)

    def _groups(self, adapters: Iterable[AdapterDrift]) -> list[tuple[str, list[AdapterDrift]]]:
        groups: dict[str, list[AdapterDrift]] = {}
        for entry in adapters:
            label = entry.adapter if self._owns_label(entry.adapter) else OTHER_LABEL
            groups.setdefault(label, []).append(entry)
        return sorted(groups.items())
