"""A release's candidate judged against stable on the same traffic, and promoted or rolled back on it.

For every adapter whose release tries a candidate, this replica keeps each version's figures from its
own traffic: requests and server errors, time to first token and latency (p50, p99), the callers'
feedback score, how many drift statistics are over and the share of answers in the trained form
(from the per-version drift windows), and in shadow mode how far the candidate's answers agree with
stable's. Each figure is a guardrail with a margin: the candidate is worse on it when it is beyond
stable's value by more than the margin. A guardrail is judged only once both versions have enough
samples for it.

Every few seconds the analysis looks at each trial this replica routes (not paused, its release read
from the store): a guardrail the candidate is worse on rolls it back at once; with none worse, the
candidate is promoted once it has answered `min_requests` requests here and the trial is
`min_seconds` old. The decision is written as a release record like a person's (actor `auto`, the
guardrail and its figures in the record), conditional on the candidate still being the one judged,
so when several replicas decide at once one record lands and the others find the release moved on.
Each replica decides on its own traffic: with N replicas, a candidate needs `min_requests` on one.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from loraplane.errors import FailedPrecondition, LoraplaneError, NotFound
from loraplane.releases import (
    Guardrail,
    ReleaseAction,
    ReleaseChange,
    ReleaseMode,
    ReleaseRecord,
    ReleaseState,
)
from serving_svc.drift_monitor import AdapterDrift, DriftMonitor
from serving_svc.releases import ReleaseRouter, ReleaseView, Route
from serving_svc.shadow import ShadowRunner

log = logging.getLogger(__name__)

AUTO_ACTOR = "auto"
_KEPT_SAMPLES = 2000
"""Latency samples kept per version: enough for a p99, bounded in memory."""


MIN_SAMPLES: Mapping[Guardrail, int] = {
    Guardrail.ERROR_RATE: 20,
    Guardrail.TTFT_P50: 20,
    Guardrail.LATENCY_P50: 20,
    Guardrail.LATENCY_P99: 100,
    Guardrail.FEEDBACK_SCORE: 10,
    Guardrail.DRIFT: 1,
    Guardrail.FORM_SHARE: 1,
    Guardrail.SHADOW_AGREEMENT: 20,
}
"""Samples each version needs before a guardrail is judged (drift and form: a judged window)."""


CANARY_GUARDRAILS = tuple(g for g in Guardrail if g is not Guardrail.SHADOW_AGREEMENT)
SHADOW_GUARDRAILS = (Guardrail.SHADOW_AGREEMENT, Guardrail.DRIFT, Guardrail.FORM_SHARE)
"""A shadow candidate answers off the callers' path: its errors and timings are not the callers', and
callers never score its answers; its agreement with stable, its drift and its form are judged."""


@dataclass(frozen=True)
class AnalysisPolicy:
    margins: Mapping[Guardrail, float]
    min_requests: int
    """Candidate requests (compared shadow requests in shadow mode) on this replica before a promotion."""
    min_seconds: float
    """Age of the trial before a promotion."""
    automatic: bool
    """Decide by itself; off: figures and verdicts are shown, people decide."""


@dataclass
class _Observed:
    requests: int = 0
    errors: int = 0
    first_token: deque[float] = field(default_factory=lambda: deque(maxlen=_KEPT_SAMPLES))
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=_KEPT_SAMPLES))


@dataclass(frozen=True)
class VersionFigures:
    """One version's figures on this replica's traffic; None where there is nothing to measure yet."""

    version: int
    requests: int
    errors: int
    values: dict[Guardrail, float | None]
    samples: dict[Guardrail, int]


@dataclass(frozen=True)
class Check:
    """One guardrail, the candidate against stable."""

    guardrail: Guardrail
    stable: float | None
    candidate: float | None
    margin: float
    judged: bool
    """Both versions had enough samples."""
    excess: float
    """How far the candidate is beyond stable's value plus the margin (> 0: worse); 0 when not judged."""

    @property
    def worse(self) -> bool:
        return self.judged and self.excess > 0

    def describe(self) -> str:
        return (
            f"{self.guardrail}: candidate {_figure(self.candidate)} against stable {_figure(self.stable)}, "
            f"beyond the margin of {self.margin:g} by {self.excess:.3g}"
        )


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _quantile(samples: deque[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_HIGHER_IS_WORSE_RELATIVE = (Guardrail.TTFT_P50, Guardrail.LATENCY_P50, Guardrail.LATENCY_P99)
_HIGHER_IS_WORSE_ABSOLUTE = (Guardrail.ERROR_RATE, Guardrail.DRIFT)
_LOWER_IS_WORSE = (Guardrail.FEEDBACK_SCORE, Guardrail.FORM_SHARE)


def compare(guardrail: Guardrail, stable: VersionFigures, candidate: VersionFigures, margin: float) -> Check:
    """The candidate against stable on one guardrail."""
    needed = MIN_SAMPLES[guardrail]
    theirs, ours = stable.values.get(guardrail), candidate.values.get(guardrail)
    if (
        guardrail is Guardrail.SHADOW_AGREEMENT
    ):  # the candidate against stable's own answers, which agree with themselves
        judged = ours is not None and candidate.samples.get(guardrail, 0) >= needed
        excess = (1.0 - ours) - margin if judged and ours is not None else 0.0
        return Check(guardrail, 1.0, ours, margin, judged, excess)
    judged = (
        theirs is not None
        and ours is not None
        and stable.samples.get(guardrail, 0) >= needed
        and candidate.samples.get(guardrail, 0) >= needed
    )
    if not judged or theirs is None or ours is None:
        return Check(guardrail, theirs, ours, margin, False, 0.0)
    if guardrail in _HIGHER_IS_WORSE_RELATIVE:
        excess = (ours / theirs - 1.0 - margin) if theirs > 0 else 0.0
    elif guardrail in _HIGHER_IS_WORSE_ABSOLUTE:
        excess = ours - theirs - margin
    else:
        excess = theirs - ours - margin
    return Check(guardrail, theirs, ours, margin, True, excess)


@dataclass(frozen=True)
class Verdict:
    """What the analysis makes of a trial now."""

    adapter: str
    sequence: int
    """The record judged: a decision applies only while it is the newest."""
    state: ReleaseState
    stable: VersionFigures
    candidate: VersionFigures
    checks: list[Check]
    action: ReleaseAction | None
    """PROMOTE or ROLLBACK when the figures decide; None while the trial goes on."""
    reason: str

    def describe(self) -> str:
        """What the figures decide, and why: `promote: ...`, `rollback: ...` or `trying: ...`."""
        return f"{self.action}: {self.reason}" if self.action is not None else self.reason

    def figures(self) -> dict[str, float]:
        """The figures the decision rests on, for its record."""
        kept = {"stable.requests": float(self.stable.requests), "candidate.requests": float(self.candidate.requests)}
        for check in self.checks:
            if check.judged:
                for side, value in (("stable", check.stable), ("candidate", check.candidate)):
                    if value is not None:
                        kept[f"{check.guardrail}.{side}"] = value
                kept[f"{check.guardrail}.margin"] = check.margin
        return kept


@dataclass(frozen=True)
class ReleaseReport:
    """An adapter's release with what this replica's figures make of its trial, as GetRelease shows it."""

    view: ReleaseView
    verdict: Verdict | None
    """None without a candidate."""


class ReleaseAnalysis:
    def __init__(
        self,
        router: ReleaseRouter,
        shadow: ShadowRunner,
        drift: DriftMonitor | None,
        policy: AnalysisPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._router = router
        self._shadow = shadow
        self._drift = drift
        self._policy = policy
        self._clock = clock
        self._observed: dict[tuple[str, int, int], _Observed] = {}  # (name, trial, version)
        self._trial_times: dict[tuple[str, int], float] = {}
        self.rollbacks: dict[tuple[str, Guardrail], int] = {}

    def observe(self, route: Route, *, first_token: float | None, latency: float | None, failed: bool) -> None:
        """One request answered (or failed for the version) by the stable or candidate version of a trial."""
        if route.trial is None or route.spec.version is None:
            return  # no trial: stable is not being compared with anything
        observed = self._observed.setdefault((route.spec.name, route.trial, route.spec.version), _Observed())
        observed.requests += 1
        observed.errors += failed
        if first_token is not None:
            observed.first_token.append(first_token)
        if latency is not None:
            observed.latency.append(latency)

    def version_figures(self, name: str, trial: int, version: int, drift: AdapterDrift | None) -> VersionFigures:
        """A version's figures in trial `trial` on this replica (drift and feedback: its live window)."""
        observed = self._observed.get((name, trial, version), _Observed())
        values: dict[Guardrail, float | None] = {
            Guardrail.ERROR_RATE: observed.errors / observed.requests if observed.requests else None,
            Guardrail.TTFT_P50: statistics.median(observed.first_token) if observed.first_token else None,
            Guardrail.LATENCY_P50: statistics.median(observed.latency) if observed.latency else None,
            Guardrail.LATENCY_P99: _quantile(observed.latency, 0.99),
        }
        samples = {
            Guardrail.ERROR_RATE: observed.requests,
            Guardrail.TTFT_P50: len(observed.first_token),
            Guardrail.LATENCY_P50: len(observed.latency),
            Guardrail.LATENCY_P99: len(observed.latency),
        }
        if drift is not None:
            report = drift.report
            judged = [reading for reading in report.readings.values() if reading.value is not None]
            values[Guardrail.DRIFT] = float(sum(reading.over for reading in judged)) if judged else None
            samples[Guardrail.DRIFT] = 1 if judged else 0
            values[Guardrail.FORM_SHARE] = report.form_share
            samples[Guardrail.FORM_SHARE] = 1 if report.form_share is not None else 0
            values[Guardrail.FEEDBACK_SCORE] = drift.feedback.mean_score
            samples[Guardrail.FEEDBACK_SCORE] = drift.feedback.count
        shadow = self._shadow.figures(name, trial, version)
        values[Guardrail.SHADOW_AGREEMENT] = shadow.rouge_l_agreement
        samples[Guardrail.SHADOW_AGREEMENT] = shadow.compared
        return VersionFigures(version, observed.requests, observed.errors, values, samples)

    def verdict(self, record: ReleaseRecord) -> Verdict | None:
        """The trial's figures and what they decide now; None when the release tries no candidate."""
        state = record.state
        if state.candidate is None or state.trial is None:
            return None
        windows = {entry.version: entry for entry in self._drift_windows(record.adapter)}
        stable = self.version_figures(record.adapter, state.trial, state.stable, windows.get(state.stable))
        candidate = self.version_figures(record.adapter, state.trial, state.candidate, windows.get(state.candidate))
        guardrails = SHADOW_GUARDRAILS if state.mode is ReleaseMode.SHADOW else CANARY_GUARDRAILS
        checks = [compare(g, stable, candidate, self._policy.margins[g]) for g in guardrails]
        verdict = partial(Verdict, record.adapter, record.sequence, state, stable, candidate, checks)
        worse = [check for check in checks if check.worse]
        if worse:
            return verdict(ReleaseAction.ROLLBACK, worse[0].describe())
        shadow = state.mode is ReleaseMode.SHADOW
        tried = candidate.samples[Guardrail.SHADOW_AGREEMENT] if shadow else candidate.requests
        age = self._clock() - self._trial_started(record)
        policy = self._policy
        if state.paused or tried < policy.min_requests or age < policy.min_seconds:
            return verdict(
                None, f"trying: {tried} of {policy.min_requests} requests, {age:.0f} of {policy.min_seconds:g} s"
            )
        judged = ", ".join(check.guardrail.value for check in checks if check.judged) or "none judged"
        reason = f"no guardrail worse beyond its margin after {tried} requests ({judged})"
        return verdict(ReleaseAction.PROMOTE, reason)

    def _drift_windows(self, name: str) -> list[AdapterDrift]:
        """The drift windows of each version of `name` on this replica; none before it answered a request."""
        if self._drift is None:
            return []
        try:
            return self._drift.adapter(name)
        except NotFound:
            return []

    async def report(self, view: ReleaseView) -> ReleaseReport:
        verdict = await asyncio.to_thread(self.verdict, view.current) if view.current is not None else None
        return ReleaseReport(view, verdict)

    def _trial_started(self, record: ReleaseRecord) -> float:
        """When the trial `record` belongs to began: its START record's time, as far as this replica saw it."""
        started = self._trial_times.setdefault((record.adapter, record.state.trial or 0), record.at.timestamp())
        return min(started, record.at.timestamp())

    def _forget_ended_trials(self) -> None:
        """Drop the figures of trials that are over, so memory and metric series follow the trials running."""
        running = {(r.adapter, r.state.trial) for r in self._router.released() if r.state.trial is not None}
        self._observed = {key: value for key, value in self._observed.items() if key[:2] in running}
        self._trial_times = {key: value for key, value in self._trial_times.items() if key in running}
        self._shadow.forget_except(running)

    async def decide(self) -> list[ReleaseRecord]:
        """Promote or roll back every trial whose figures decide, judged on the release as read from the store
        at most a TTL ago; the records written."""
        self._forget_ended_trials()
        if not self._policy.automatic:
            return []
        written = []
        for name in self._router.released_names():
            record = await self._router.current(name)  # read again once its TTL is over
            if record is None or self._router.stale(name) or record.state.paused:
                continue
            verdict = await asyncio.to_thread(self.verdict, record)
            if verdict is None or verdict.action is None:
                continue
            try:
                written.append(await self._apply(verdict))
            except FailedPrecondition as moved_on:  # another replica or a person decided first
                log.info("release of %s moved on before this decision: %s", verdict.adapter, moved_on)
            except LoraplaneError as exc:
                log.warning("cannot record the decision on %s: %s", verdict.adapter, exc)
        return written

    async def _apply(self, verdict: Verdict) -> ReleaseRecord:
        assert verdict.action is not None
        change = ReleaseChange(
            action=verdict.action, expected_candidate=verdict.state.candidate, expected_sequence=verdict.sequence
        )
        record = await self._router.change(
            verdict.adapter, change, actor=AUTO_ACTOR, reason=verdict.reason, figures=verdict.figures()
        )
        if verdict.action is ReleaseAction.ROLLBACK:
            guardrail = next(check.guardrail for check in verdict.checks if check.worse)
            self.rollbacks[(verdict.adapter, guardrail)] = self.rollbacks.get((verdict.adapter, guardrail), 0) + 1
            log.warning("rolled back %s@v%s: %s", verdict.adapter, verdict.state.candidate, verdict.reason)
        else:
            log.info("promoted %s@v%s: %s", verdict.adapter, verdict.state.candidate, verdict.reason)
        return record


class RollbackCollector(Collector):
    def __init__(self, analysis: ReleaseAnalysis, owns_label: Callable[[str], bool]) -> None:
        self._analysis = analysis
        self._owns_label = owns_label

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "loraplane_release_rollbacks",
            "Candidates this replica rolled back automatically, by the guardrail they were worse on.",
            labels=["adapter", "guardrail"],
        )
        for (adapter, guardrail), count in sorted(self._analysis.rollbacks.items()):
            if self._owns_label(adapter):
                family.add_metric([adapter, guardrail.value], count)
        yield family
