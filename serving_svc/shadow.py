"""Requests run on a candidate version in the shadow of stable: answered, measured, never returned.

When an adapter's release tries a candidate in shadow mode, every request for the name is answered
by stable as usual; once stable's answer is complete, the same prompt with the same sampling is
offered to the candidate here, off the caller's path (the caller already has its answer and its
latency). The candidate's answer feeds the drift window of its own version and is compared with
stable's: exact agreement, and ROUGE-L as a similarity for answers that differ in wording.

Shadow work yields to real traffic: it takes no admission place, at most `max_in_flight` shadow
requests run at once, an offer is dropped while real requests wait for an admission place or the
engine holds more requests than one batch (`batch_capacity`), or when the shadow places are taken,
and a running shadow request is aborted as soon as that happens. Nor does it take adapter slots
from callers: the candidate is loaded only into a free slot or one no caller used lately, and its
use does not keep it in the engine (AdapterManager.hold_yielding); otherwise the offer is dropped.
Each offer's outcome is counted, so an operator sees how much of the traffic the comparison covers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from rouge_score import rouge_scorer

from loraplane.answers import exact_match
from loraplane.names import AdapterSpec
from serving_svc.adapters import AdapterManager, NoIdleSlot, ResolvedAdapter
from serving_svc.admission import Admission
from serving_svc.drift_monitor import DriftMonitor
from serving_svc.engines.base import Engine, Prompt, SamplingOptions
from serving_svc.generation import AnswerTrace, as_trained, engine_request, record_drift

log = logging.getLogger(__name__)


class ShadowOutcome(enum.StrEnum):
    COMPARED = "compared"
    """The candidate answered and its answer was compared with stable's."""
    BUSY = "busy"
    """Dropped before it started: real requests were waiting, or every shadow place was taken."""
    NO_SLOT = "no_slot"
    """Dropped before it started: the candidate was not loaded, and loading it would have taken an adapter
    slot from a version callers used lately."""
    PREEMPTED = "preempted"
    """Aborted while generating because a real request had to wait."""
    FAILED = "failed"
    """The candidate could not be resolved, loaded or run."""


@dataclass
class ShadowFigures:
    """One candidate version's shadow requests on this replica since it started."""

    outcomes: Counter[ShadowOutcome]
    exact_agreement: float | None
    """Share of compared answers equal to stable's; None before any comparison."""
    rouge_l_agreement: float | None
    """Mean ROUGE-L F-measure of the candidate's answer against stable's."""

    @property
    def compared(self) -> int:
        return self.outcomes[ShadowOutcome.COMPARED]


@dataclass
class _Tally:
    outcomes: Counter[ShadowOutcome]
    exact: int = 0
    rouge_l: float = 0.0


class ShadowRunner:
    def __init__(
        self,
        engine: Engine,
        adapters: AdapterManager,
        drift: DriftMonitor | None,
        admission: Admission,
        *,
        max_in_flight: int,
        batch_capacity: int,
    ) -> None:
        self._engine = engine
        self._adapters = adapters
        self._drift = drift
        self._admission = admission
        self._max_in_flight = max_in_flight
        self._batch_capacity = batch_capacity
        self._tasks: set[asyncio.Task[None]] = set()
        self._tallies: dict[tuple[str, int, int], _Tally] = {}  # (name, trial, version)
        self._rouge = rouge_scorer.RougeScorer(["rougeL"])

    def offer(
        self, candidate: AdapterSpec, trial: int, prompt: Prompt, sampling: SamplingOptions, stable_answer: str
    ) -> None:
        """Run `prompt` on `candidate` (a pinned version, on trial `trial`) in the background and compare its
        answer with `stable_answer`, unless the replica is busy; returns at once."""
        tally = self._tally(candidate, trial)
        if self._busy() or len(self._tasks) >= self._max_in_flight:
            tally.outcomes[ShadowOutcome.BUSY] += 1
            return
        task = asyncio.create_task(self._run(candidate, tally, prompt, sampling, stable_answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _busy(self) -> bool:
        """Real requests wait for an admission place, or the engine holds more than one batch of requests."""
        stats = self._engine.stats()
        return self._admission.queued > 0 or stats.running + stats.waiting > self._batch_capacity

    async def _run(
        self, candidate: AdapterSpec, tally: _Tally, prompt: Prompt, sampling: SamplingOptions, stable_answer: str
    ) -> None:
        try:
            outcome, answer = await self._generate(candidate, prompt, sampling)
            if outcome is ShadowOutcome.COMPARED:  # a long answer's LCS is seconds of Python: off the loop
                rouge_l = await asyncio.to_thread(self._rouge.score, stable_answer, answer)
        except Exception as exc:  # a shadow request must never fail anything but itself
            log.warning("shadow request on %s failed: %s", candidate, exc)
            tally.outcomes[ShadowOutcome.FAILED] += 1
            return
        tally.outcomes[outcome] += 1
        if outcome is ShadowOutcome.COMPARED:
            tally.exact += exact_match(answer, stable_answer)
            tally.rouge_l += rouge_l["rougeL"].fmeasure

    async def _generate(
        self, candidate: AdapterSpec, prompt: Prompt, sampling: SamplingOptions
    ) -> tuple[ShadowOutcome, str]:
        resolved = await self._adapters.resolve(candidate)
        token_ids = await self._engine.tokenize(as_trained(prompt, resolved))
        try:
            async with self._adapters.hold_yielding(resolved) as adapter:
                return await self._answer(adapter, token_ids, sampling)
        except NoIdleSlot:
            return ShadowOutcome.NO_SLOT, ""

    async def _answer(
        self, adapter: ResolvedAdapter, token_ids: list[int], sampling: SamplingOptions
    ) -> tuple[ShadowOutcome, str]:
        generation = engine_request(self._engine, self._drift, uuid.uuid4().hex, token_ids, sampling, adapter)
        answer = AnswerTrace()
        async with aclosing(self._engine.generate(generation)) as deltas:
            async for delta in deltas:
                if self._busy():
                    return ShadowOutcome.PREEMPTED, ""  # closing the stream aborts the engine request
                answer.add(delta)
                if delta.finish_reason is not None:
                    record_drift(self._drift, self._adapters, adapter, generation, answer, delta)
        return ShadowOutcome.COMPARED, answer.text

    def _tally(self, candidate: AdapterSpec, trial: int) -> _Tally:
        assert candidate.version is not None, "a shadow candidate is a pinned version"
        return self._tallies.setdefault((candidate.name, trial, candidate.version), _Tally(Counter()))

    def figures(self, name: str, trial: int, version: int) -> ShadowFigures:
        """A candidate version's shadow requests in trial `trial` on this replica."""
        tally = self._tallies.get((name, trial, version), _Tally(Counter()))
        compared = tally.outcomes[ShadowOutcome.COMPARED]
        return ShadowFigures(
            Counter(tally.outcomes),
            tally.exact / compared if compared else None,
            tally.rouge_l / compared if compared else None,
        )

    def trials(self) -> list[tuple[str, int, int]]:
        """(name, trial, version) of every candidate offered shadow requests here in a running trial."""
        return sorted(self._tallies)

    def forget_except(self, running: set[tuple[str, int]]) -> None:
        """Drop the tallies of trials not in `running` (name, trial): they are over."""
        self._tallies = {key: tally for key, tally in self._tallies.items() if key[:2] in running}

    async def close(self) -> None:
        """Abort the shadow requests still running (the replica is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ShadowCollector(Collector):
    """Shadow outcomes and agreement per candidate version, for adapters with a label of their own."""

    def __init__(self, runner: ShadowRunner, owns_label: Callable[[str], bool]) -> None:
        self._runner = runner
        self._owns_label = owns_label

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "loraplane_release_shadow_requests",
            "Requests offered to a candidate in the shadow of stable, by outcome (compared, busy: dropped while "
            "real requests waited, preempted: aborted for a real request, failed).",
            labels=["adapter", "version", "outcome"],
        )
        agreement = GaugeMetricFamily(
            "loraplane_release_shadow_agreement",
            "Agreement of a shadow candidate's answers with stable's on the same requests: exact (share equal) "
            "and rouge_l (mean ROUGE-L F-measure).",
            labels=["adapter", "version", "measure"],
        )
        for name, trial, version in self._runner.trials():
            if not self._owns_label(name):
                continue
            figures = self._runner.figures(name, trial, version)
            for outcome in ShadowOutcome:
                requests.add_metric([name, str(version), outcome.value], figures.outcomes[outcome])
            for measure, value in (("exact", figures.exact_agreement), ("rouge_l", figures.rouge_l_agreement)):
                if value is not None:
                    agreement.add_metric([name, str(version), measure], value)
        yield from (requests, agreement)
