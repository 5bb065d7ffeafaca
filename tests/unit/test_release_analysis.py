"""The release analysis over a real file store: guardrails, verdicts, and the records its decisions write."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from loraplane.drift_statistics import Verdicts
from loraplane.names import AdapterSpec
from loraplane.releases import (
    DEFAULT_MARGINS,
    Guardrail,
    ReleaseAction,
    ReleaseChange,
    ReleaseLog,
    ReleaseMode,
    VersionRole,
)
from serving_svc.admission import Admission
from serving_svc.drift_monitor import DriftMonitor, DriftPolicy
from serving_svc.release_analysis import (
    AUTO_ACTOR,
    AnalysisPolicy,
    ReleaseAnalysis,
    RollbackCollector,
    VersionFigures,
    compare,
)
from serving_svc.releases import ReleaseRouter, Route
from serving_svc.shadow import ShadowRunner
from tests.support.fake_engine import build_adapter_manager

NAME = "alpha"


def _figures(version: int, values: dict[Guardrail, float], samples: int = 100) -> VersionFigures:
    return VersionFigures(version, samples, 0, dict(values), dict.fromkeys(values, samples))


@pytest.mark.parametrize(
    ("guardrail", "stable", "candidate", "margin", "excess"),
    [
        (Guardrail.ERROR_RATE, 0.01, 0.05, 0.02, 0.02),
        (Guardrail.ERROR_RATE, 0.01, 0.02, 0.02, -0.01),
        (Guardrail.LATENCY_P99, 1.0, 2.5, 1.0, 0.5),
        (Guardrail.TTFT_P50, 0.2, 0.25, 0.5, -0.25),
        (Guardrail.FEEDBACK_SCORE, 0.9, 0.6, 0.1, 0.2),
        (Guardrail.FORM_SHARE, 0.95, 1.0, 0.1, -0.15),
        (Guardrail.DRIFT, 0.0, 3.0, 1.0, 2.0),
    ],
)
def test_a_guardrail_measures_how_far_the_candidate_is_beyond_stable_and_its_margin(
    guardrail: Guardrail, stable: float, candidate: float, margin: float, excess: float
) -> None:
    check = compare(guardrail, _figures(1, {guardrail: stable}), _figures(2, {guardrail: candidate}), margin)
    assert check.judged
    assert check.excess == pytest.approx(excess)
    assert check.worse == (excess > 0)


def test_a_guardrail_is_not_judged_before_both_versions_have_enough_samples() -> None:
    few = _figures(2, {Guardrail.ERROR_RATE: 1.0}, samples=3)
    check = compare(Guardrail.ERROR_RATE, _figures(1, {Guardrail.ERROR_RATE: 0.0}), few, 0.02)
    assert not check.judged and not check.worse


def test_shadow_agreement_is_judged_on_the_candidate_alone() -> None:
    agreeing = _figures(2, {Guardrail.SHADOW_AGREEMENT: 0.2})
    check = compare(Guardrail.SHADOW_AGREEMENT, _figures(1, {}), agreeing, 0.5)
    assert check.judged and check.excess == pytest.approx(0.3)


class Trial:
    def __init__(
        self, tmp_path: Path, *, automatic: bool = True, min_requests: int = 20, ttl_seconds: float = 0.0
    ) -> None:
        parts = build_adapter_manager(tmp_path)
        for _ in range(2):
            parts.publish(NAME)
        self.log = ReleaseLog(parts.repository)
        self.router = ReleaseRouter(self.log, ttl_seconds=ttl_seconds)
        self.shadow = ShadowRunner(
            parts.engine, parts.manager, None, Admission(1, 1, 1), max_in_flight=1, batch_capacity=8
        )
        self.policy = AnalysisPolicy(DEFAULT_MARGINS, min_requests=min_requests, min_seconds=0.0, automatic=automatic)
        self.analysis = ReleaseAnalysis(self.router, self.shadow, None, self.policy)

    async def start(self, mode: ReleaseMode = ReleaseMode.CANARY) -> None:
        change = ReleaseChange(action=ReleaseAction.START, candidate=2, stable=1, mode=mode, canary_share=0.5)
        await self.router.change(NAME, change, actor="ops", reason="try v2")

    def answer(self, version: int, count: int, *, latency: float = 0.1, failures: int = 0, trial: int = 1) -> None:
        role = VersionRole.STABLE if version == 1 else VersionRole.CANDIDATE
        route = Route(AdapterSpec(NAME, version), role, trial=trial)
        for index in range(count):
            failed = index < failures
            first_token, took = (None, None) if failed else (latency / 2, latency)
            self.analysis.observe(route, first_token=first_token, latency=took, failed=failed)


async def test_a_candidate_with_no_guardrail_worse_is_promoted_once_it_has_its_requests(tmp_path: Path) -> None:
    trial = Trial(tmp_path)
    await trial.start()
    trial.answer(1, 30)
    trial.answer(2, 19)
    assert await trial.analysis.decide() == [], "19 of 20 requests: the trial goes on"
    trial.answer(2, 1)
    [record] = await trial.analysis.decide()
    assert record.action is ReleaseAction.PROMOTE and record.actor == AUTO_ACTOR
    assert record.state.stable == 2 and record.state.previous_stable == 1
    assert record.figures["candidate.requests"] == 20 and record.figures["latency_p50.candidate"] == 0.1
    assert "error_rate" in record.reason


async def test_a_candidate_worse_on_a_guardrail_is_rolled_back_at_once_naming_it(tmp_path: Path) -> None:
    trial = Trial(tmp_path, min_requests=1000)
    await trial.start()
    trial.answer(1, 40)
    trial.answer(2, 40, failures=8)
    [record] = await trial.analysis.decide()
    assert record.action is ReleaseAction.ROLLBACK and record.state.candidate is None and record.state.stable == 1
    assert record.reason.startswith("error_rate: candidate 0.2 against stable 0")
    assert record.figures["error_rate.candidate"] == pytest.approx(0.2)
    registry = CollectorRegistry()
    registry.register(RollbackCollector(trial.analysis, owns_label=lambda name: True))
    labels = {"adapter": NAME, "guardrail": "error_rate"}
    assert registry.get_sample_value("loraplane_release_rollbacks_total", labels) == 1
    assert await trial.analysis.decide() == [], "nothing left to decide"


async def test_a_slower_candidate_is_rolled_back_on_latency(tmp_path: Path) -> None:
    trial = Trial(tmp_path, min_requests=1000)
    await trial.start()
    trial.answer(1, 40, latency=0.1)
    trial.answer(2, 40, latency=0.2)
    [record] = await trial.analysis.decide()
    assert record.action is ReleaseAction.ROLLBACK and record.reason.startswith("ttft_p50")


async def test_with_automatic_decisions_off_the_verdict_is_shown_and_nothing_written(tmp_path: Path) -> None:
    trial = Trial(tmp_path, automatic=False)
    await trial.start()
    trial.answer(1, 40)
    trial.answer(2, 40, failures=8)
    assert await trial.analysis.decide() == []
    current = trial.log.current(NAME)
    assert current is not None
    verdict = trial.analysis.verdict(current)
    assert verdict is not None and verdict.action is ReleaseAction.ROLLBACK
    assert len(trial.log.history(NAME)) == 1


async def test_a_paused_trial_is_not_decided(tmp_path: Path) -> None:
    trial = Trial(tmp_path)
    await trial.start()
    await trial.router.change(NAME, ReleaseChange(action=ReleaseAction.PAUSE), actor="ops", reason="")
    trial.answer(1, 40)
    trial.answer(2, 40, failures=8)
    assert await trial.analysis.decide() == []


async def test_a_decision_about_a_candidate_someone_else_replaced_is_dropped(tmp_path: Path) -> None:
    trial = Trial(tmp_path, ttl_seconds=3600.0)  # this replica goes on routing by the release it read
    await trial.start()
    trial.answer(1, 40)
    trial.answer(2, 40)
    trial.log.change(NAME, ReleaseChange(action=ReleaseAction.ROLLBACK), actor="another replica")
    assert await trial.analysis.decide() == [], "the promote of v2 finds it no longer the candidate"
    assert [record.action for record in trial.log.history(NAME)] == [ReleaseAction.START, ReleaseAction.ROLLBACK]


async def test_shadow_mode_judges_agreement_not_the_callers_timings(tmp_path: Path) -> None:
    trial = Trial(tmp_path)
    await trial.start(ReleaseMode.SHADOW)
    trial.answer(1, 40)
    current = trial.log.current(NAME)
    assert current is not None
    verdict = trial.analysis.verdict(current)
    assert verdict is not None and verdict.action is None
    assert [check.guardrail for check in verdict.checks] == [
        Guardrail.SHADOW_AGREEMENT,
        Guardrail.DRIFT,
        Guardrail.FORM_SHARE,
    ]
    assert "0 of 20 requests" in verdict.reason


async def test_a_release_of_an_adapter_without_traffic_here_is_still_judged(tmp_path: Path) -> None:
    trial = Trial(tmp_path)
    await trial.start()
    drift = DriftMonitor(
        DriftPolicy(
            window_requests=100,
            window_seconds=3600,
            min_samples=10,
            prompt_scoring_fraction=0.0,
            verdicts=Verdicts(0.05, {}),
            feedback_score_floor=0.5,
        ),
    )
    analysis = ReleaseAnalysis(trial.router, trial.shadow, drift, trial.policy)
    current = trial.log.current(NAME)
    assert current is not None
    verdict = analysis.verdict(current)
    assert verdict is not None and verdict.action is None
