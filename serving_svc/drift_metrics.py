"""The drift monitor's figures as Prometheus gauges, computed at scrape time.

Adapters use the request metrics' labels: the busiest K have their own `adapter` label, each of
their versions with a window its own `version` label; the rest are pooled under adapter and version
"_other", whose statistics compare the pooled windows with the pooled references. Each statistic is
exported with its p-value and whether it is over (`loraplane_drift_over`), which is what the alert
rules look for, so the rules follow the replica's false-alarm rate and raw thresholds without edits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loraplane.drift_statistics import DriftReport
from serving_svc.adapter_labels import OTHER_LABEL
from serving_svc.drift_monitor import AdapterDrift, DriftMonitor

_SERIES = ["adapter", "version"]


class _Families:
    """One scrape's gauge families, filled window by window."""

    def __init__(self) -> None:
        def gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=labels)

        self.drift = gauge(
            "loraplane_drift",
            "Drift statistic of an adapter version's live window against its training reference (higher: more "
            "drift). Absent below LORAPLANE_DRIFT_MIN_SAMPLES requests or without data on a side.",
            [*_SERIES, "statistic"],
        )
        self.p_value = gauge(
            "loraplane_drift_p_value",
            "Share of windows of unchanged traffic, of the live window's size, whose statistic reads at least "
            "as high (bootstrap): small means drift.",
            [*_SERIES, "statistic"],
        )
        self.over = gauge(
            "loraplane_drift_over",
            "1 when the statistic is over: its p-value within the false-alarm rate shared among the statistics, "
            "or its value above a raw threshold set for it.",
            [*_SERIES, "statistic"],
        )
        self.p_value_threshold = gauge(
            "loraplane_drift_p_value_threshold",
            "The p-value at or under which a statistic is over: the false-alarm rate over the statistics judged.",
            _SERIES,
        )
        self.false_alarm_rate = gauge(
            "loraplane_drift_false_alarm_rate",
            "Share of windows of unchanged traffic in which an adapter may read drifted "
            "(LORAPLANE_DRIFT_FALSE_ALARM_RATE).",
            [],
        )
        self.thresholds = gauge(
            "loraplane_drift_threshold", "Raw thresholds set for statistics judged by value.", ["statistic"]
        )
        self.confidence = gauge(
            "loraplane_drift_output_confidence",
            "Mean log-probability per generated token, live window and training reference.",
            [*_SERIES, "side"],
        )
        self.surprise = gauge(
            "loraplane_drift_prompt_surprise",
            "Mean negative log-likelihood per prompt token (sampled prompts), live window and training reference.",
            [*_SERIES, "side"],
        )
        self.form_share = gauge(
            "loraplane_drift_answer_form_share",
            "Share of answers in the form the training answers share, live window and training reference.",
            [*_SERIES, "side"],
        )
        self.window = gauge(
            "loraplane_drift_window_requests", "Requests in the adapter version's drift window.", _SERIES
        )
        self.reference_samples = gauge(
            "loraplane_drift_reference_samples",
            "Records of the training reference: answered held-out prompts (kind=answers), every prompt of the "
            "job (kind=prompts).",
            [*_SERIES, "kind"],
        )
        self.feedback_score = gauge(
            "loraplane_drift_feedback_score",
            "Mean feedback score (0-1) over the window; absent with fewer scores than the minimum.",
            _SERIES,
        )
        self.feedback_rate = gauge(
            "loraplane_drift_feedback_rate", "Feedback scores per request in the window.", _SERIES
        )
        self.floor = gauge(
            "loraplane_drift_feedback_score_floor", "The feedback score under which an adapter is alerted on.", []
        )

    def every(self) -> Iterator[GaugeMetricFamily]:
        yield from vars(self).values()


class DriftCollector(Collector):
    def __init__(self, monitor: DriftMonitor, owns_label: Callable[[str], bool]) -> None:
        self._monitor = monitor
        self._owns_label = owns_label

    def collect(self) -> Iterator[GaugeMetricFamily]:
        policy = self._monitor.policy
        families = _Families()
        families.false_alarm_rate.add_metric([], policy.verdicts.false_alarm_rate)
        for statistic, threshold in policy.verdicts.thresholds.items():
            families.thresholds.add_metric([statistic.value], threshold)
        families.floor.add_metric([], policy.feedback_score_floor)
        for labels, group in self._groups(self._monitor.adapters()):
            self._add_group(families, labels, group)
        yield from families.every()

    def _add_group(self, families: _Families, labels: list[str], group: list[AdapterDrift]) -> None:
        """The figures of the windows counted under `labels`: pooled where there are several."""
        report: DriftReport = self._monitor.pooled_report(group)
        for statistic, reading in report.readings.items():
            if reading.value is None:
                continue
            families.drift.add_metric([*labels, statistic.value], reading.value)
            families.over.add_metric([*labels, statistic.value], float(reading.over))
            if reading.p_value is not None:
                families.p_value.add_metric([*labels, statistic.value], reading.p_value)
        if report.p_value_threshold is not None:
            families.p_value_threshold.add_metric(labels, report.p_value_threshold)
        for family, pair in (
            (families.confidence, (report.output_confidence, report.reference_output_confidence)),
            (families.surprise, (report.prompt_surprise, report.reference_prompt_surprise)),
            (families.form_share, (report.form_share, report.reference_form_share)),
        ):
            for side, value in zip(("live", "reference"), pair, strict=True):
                if value is not None:
                    family.add_metric([*labels, side], value)
        families.window.add_metric(labels, report.window_size)
        families.reference_samples.add_metric([*labels, "answers"], report.reference_answers)
        families.reference_samples.add_metric([*labels, "prompts"], report.reference_prompts)
        scores = sum(entry.feedback.count for entry in group)
        if scores >= self._monitor.policy.min_samples:
            families.feedback_score.add_metric(labels, sum(entry.feedback.score_sum for entry in group) / scores)
        if report.window_size:
            families.feedback_rate.add_metric(labels, scores / report.window_size)

    def _groups(self, adapters: Iterable[AdapterDrift]) -> list[tuple[list[str], list[AdapterDrift]]]:
        """Each version of a labelled adapter alone; every other adapter pooled under "_other"."""
        groups: dict[tuple[str, str], list[AdapterDrift]] = {}
        for entry in adapters:
            labelled = self._owns_label(entry.adapter)
            key = (entry.adapter, str(entry.version)) if labelled else (OTHER_LABEL, OTHER_LABEL)
            groups.setdefault(key, []).append(entry)
        return [(list(key), group) for key, group in sorted(groups.items())]
