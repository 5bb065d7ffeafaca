"""The trainer's Prometheus metrics, on a registry of its own so several servers fit one process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trainer_svc.job_store import JobStore


class _JobsByStateCollector(Collector):
    """Jobs currently in each state, read from the job store at scrape time (true across restarts)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("loraplane_trainer_jobs", "Jobs in each state now.", labels=["state"])
        for state, count in self._store.count_by_state().items():
            family.add_metric([state.value.lower()], count)
        yield family


class TrainerMetrics:
    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        self.job_transitions = Counter(
            "loraplane_trainer_job_transitions",
            "Jobs that entered each state.",
            ["state"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "loraplane_trainer_job_duration_seconds",
            "Time from start to end of finished jobs.",
            ["state"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200),
            registry=self.registry,
        )
        self.training_steps = Counter(
            "loraplane_trainer_training_steps", "Optimizer steps taken, all jobs.", registry=self.registry
        )
        self.rejected_jobs = Counter(
            "loraplane_trainer_rejected_jobs",
            "CreateJob requests refused before a job existed, by status code.",
            ["code"],
            registry=self.registry,
        )
        self.running_job_loss = Gauge(
            "loraplane_trainer_running_job_loss",
            "Latest loss of each running job (split: train or eval); the series goes when the job ends.",
            ["job_id", "adapter", "split"],
            registry=self.registry,
        )
        self._retrains = Counter(
            "loraplane_trainer_retrains",
            "Retrain requests, by trigger (manual, alert) and outcome (started; in_flight, cooling_down or "
            "policy_off: nothing started).",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self._gate_verdicts = Counter(
            "loraplane_trainer_gate_verdicts",
            "Versions that continued another, judged against it by their job's gate, by verdict (passed, failed).",
            ["verdict"],
            registry=self.registry,
        )
        self.registry.register(_JobsByStateCollector(store))

    def retrain(self, trigger: str, outcome: str) -> None:
        self._retrains.labels(trigger, outcome).inc()

    def gate_judged(self, passed: bool) -> None:
        self._gate_verdicts.labels("passed" if passed else "failed").inc()

    def job_ended(self, job_id: str, adapter: str) -> None:
        """Drop a finished job's loss series, so running jobs alone have them."""
        for split in ("train", "eval"):
            with contextlib.suppress(KeyError):  # a job that never reported this split
                self.running_job_loss.remove(job_id, adapter, split)
