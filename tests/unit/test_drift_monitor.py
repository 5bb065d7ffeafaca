"""The drift monitor's windows and feedback, its Prometheus export with bounded labels, and the
inference service feeding it (over the fake engine of tests.support.fake_engine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from loraplane.captures import CapturePolicyChange, CaptureStore
from loraplane.drift import DriftStatistic, Profile, PromptFrame, Sample, length_bucket, observe
from loraplane.drift_statistics import Verdicts
from loraplane.errors import InvalidArgument, NotFound
from loraplane.names import AdapterSpec
from loraplane.storage import FileStore
from serving_svc.adapter_labels import OTHER_LABEL
from serving_svc.drift_metrics import DriftCollector
from serving_svc.drift_monitor import DriftMonitor, DriftPolicy
from serving_svc.engines.base import SamplingOptions
from serving_svc.inference import GenerationInput
from tests.support.fake_engine import PROMPT_LOGPROB_PER_TOKEN, TOKEN_LOGPROB, reference_profile
from tests.support.outage_store import FakeOutageStore
from tests.unit.test_inference_service import _replica


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _policy(**overrides: object) -> DriftPolicy:
    values: dict[str, object] = {
        "window_requests": 5,
        "window_seconds": 60.0,
        "min_samples": 3,
        "prompt_scoring_fraction": 0.5,
        "verdicts": Verdicts(0.05),
        "feedback_score_floor": 0.5,
    }
    return DriftPolicy(**{**values, **overrides})  # type: ignore[arg-type]


def _sample(prompt_length: int = 4, answer: str = "ok") -> Sample:
    return Sample(list(range(prompt_length)), [1, 2], -1.0, -2.0 * (prompt_length - 1), answer)


def _reference(prompt_length: int = 4, records: int = 20) -> Profile:
    answered = [observe(_sample(prompt_length), PromptFrame(), None) for _ in range(records)]
    return Profile(prompts=[r.prompt for r in answered], answers=answered)


def test_a_window_keeps_the_newest_requests_within_its_age() -> None:
    clock = Clock()
    monitor = DriftMonitor(_policy(), clock=clock)
    reference = _reference()
    for index in range(7):  # two more than the window holds
        monitor.record(f"r{index}", "a", 1, reference, _sample(prompt_length=4 if index < 2 else 200))
    [drift] = monitor.adapter("a")
    assert drift.live.sample_count == 5 and drift.requests_total == 7
    assert sum(drift.live.prompt_length_histogram()[:4]) == 0, "the two short prompts slid out"
    clock.now += 61
    assert monitor.adapter("a")[0].live.sample_count == 0, "every request is older than the window"


def test_below_the_minimum_the_live_figures_are_withheld() -> None:
    monitor = DriftMonitor(_policy(min_samples=3))
    reference = _reference()
    for index in range(2):
        monitor.record(f"r{index}", "a", 1, reference, _sample(200))
    report = monitor.adapter("a")[0].report
    assert all(reading.value is None for reading in report.readings.values())
    assert report.output_confidence is None and report.reference_output_confidence == pytest.approx(-0.5)
    monitor.record("r2", "a", 1, reference, _sample(200))
    readings = monitor.adapter("a")[0].report.readings
    assert readings[DriftStatistic.PROMPT_LENGTH_PSI].over, "every prompt 50 times longer than the reference's"
    assert readings[DriftStatistic.OUTPUT_CONFIDENCE_DROP].value == pytest.approx(0.0)
    assert not readings[DriftStatistic.OUTPUT_CONFIDENCE_DROP].over


def test_each_version_has_its_own_window_against_its_own_reference() -> None:
    clock = Clock()
    monitor = DriftMonitor(_policy(), clock=clock)
    for index in range(4):
        monitor.record(f"r{index}", "a", 1, _reference(), _sample())
    monitor.record("r9", "a", 2, _reference(prompt_length=100), _sample(100))
    first, second = monitor.adapter("a")
    assert (first.version, first.live.sample_count, second.version, second.live.sample_count) == (1, 4, 2, 1)
    assert second.reference.prompt_length_histogram()[7] == 20, "the new version's reference: length 100"
    assert not first.report.drifted, "version 1 is judged against its own reference"
    clock.now += 61  # version 1 no longer answers: its window goes once empty; the newest stays
    assert [drift.version for drift in monitor.adapter("a")] == [2]


def test_an_adapter_without_a_usable_reference_is_not_profiled_but_takes_feedback() -> None:
    monitor = DriftMonitor(_policy())
    for index in range(3):
        monitor.record(f"r{index}", "a", 1, None, _sample())
    assert monitor.adapters() == []
    with pytest.raises(NotFound, match="no drift window"):
        monitor.adapter("a")
    assert monitor.record_feedback("r0", 1.0) == ("a", 1), "the request was answered here"
    monitor.record("r3", "a", 2, _reference(), _sample())  # a later version with a profile is profiled
    [drift] = monitor.adapter("a")
    assert (drift.version, drift.live.sample_count) == (2, 1)


def test_feedback_is_counted_for_the_answering_version_and_averaged_from_the_minimum() -> None:
    monitor = DriftMonitor(_policy(min_samples=2))
    reference = _reference()
    for index in range(4):
        monitor.record(f"r{index}", "a", 1, reference, _sample())
    monitor.record("r9", "a", 2, reference, _sample())
    assert monitor.record_feedback("r0", 1.0) == ("a", 1)
    assert monitor.record_feedback("r9", 1.0) == ("a", 2), "the version that answered, not the newest seen"
    assert monitor.adapter("a")[0].feedback.mean_score is None, "one score is below the minimum of two"
    monitor.record_feedback("r1", 0.0)
    monitor.record_feedback("r2", 0.2)
    first, second = monitor.adapter("a")
    feedback = first.feedback
    assert (feedback.count, feedback.mean_score, feedback.rate) == (3, pytest.approx(0.4), pytest.approx(0.75))
    assert second.feedback.count == 1, "version 2's one score, counted apart"
    with pytest.raises(NotFound, match="request_id"):
        monitor.record_feedback("never-answered", 1.0)


def test_recording_does_no_drift_work_until_someone_reads() -> None:
    """The request path only queues; a reader (a scrape, GetAdapterStats) does the counting."""
    monitor = DriftMonitor(_policy())
    monitor.record("r1", "a", 1, _reference(), _sample())
    monitor.record("r2", "b", 1, None, _sample())
    assert len(monitor._pending) == 2 and not monitor._windows
    assert [entry.adapter for entry in monitor.adapters()] == ["a"]


def test_a_report_is_kept_until_its_window_changes() -> None:
    monitor = DriftMonitor(_policy())
    for index in range(3):
        monitor.record(f"r{index}", "a", 1, _reference(), _sample())
    first = monitor.adapter("a")[0]
    assert monitor.adapter("a")[0] is first
    monitor.record("r3", "a", 1, _reference(), _sample())
    assert monitor.adapter("a")[0] is not first


def test_a_window_counts_prompts_without_the_template_frame() -> None:
    frame = PromptFrame(prefix=tuple(range(100, 130)), suffix=(130, 131))
    monitor = DriftMonitor(_policy(), prompt_frame=lambda: frame)
    monitor.record("r1", "a", 1, _reference(), Sample([*frame.prefix, 1, 2, 3, *frame.suffix], [1, 2], -1.0))
    [drift] = monitor.adapters()
    assert drift.live.prompt_length_histogram()[length_bucket([3])[0]] == 1, "3 tokens of content"


def _scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {family.name: [(sample.labels, sample.value) for sample in family.samples] for family in registry.collect()}


def test_gauges_use_bounded_labels_and_pool_the_rest_under_other() -> None:
    """Four adapters, two labels: each version of the two owners gets series, the other two one pooled
    `_other` series, judged on their references and windows together."""
    monitor = DriftMonitor(_policy(window_requests=50, min_samples=3))
    owners = {"a", "b"}
    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor, lambda name: name in owners))
    references = {name: _reference(prompt_length=4) for name in "abcd"}
    for name, version, prompt_length in (("a", 1, 4), ("a", 2, 4), ("b", 1, 4), ("c", 1, 4), ("d", 1, 300)):
        for index in range(3):
            monitor.record(f"{name}{version}{index}", name, version, references[name], _sample(prompt_length))
    scraped = _scrape(registry)
    windows = {
        (labels["adapter"], labels["version"]): value for labels, value in scraped["loraplane_drift_window_requests"]
    }
    assert windows == {("a", "1"): 3, ("a", "2"): 3, ("b", "1"): 3, (OTHER_LABEL, OTHER_LABEL): 6}
    over = {(labels["adapter"], labels["statistic"]): value for labels, value in scraped["loraplane_drift_over"]}
    assert over[("a", "prompt_length_psi")] == 0.0
    assert over[(OTHER_LABEL, "prompt_length_psi")] == 1.0, "half the pooled traffic is 75 times longer"
    p_values = {(labels["adapter"], labels["statistic"]): value for labels, value in scraped["loraplane_drift_p_value"]}
    assert (
        p_values[(OTHER_LABEL, "prompt_length_psi")]
        <= 0.05 / len(DriftStatistic)
        < p_values[("b", "prompt_length_psi")]
    )
    thresholds = {labels["adapter"]: value for labels, value in scraped["loraplane_drift_p_value_threshold"]}
    assert set(thresholds) == {"a", "b", OTHER_LABEL}
    assert scraped["loraplane_drift_false_alarm_rate"] == [({}, 0.05)]
    assert scraped["loraplane_drift_threshold"] == [], "no raw threshold is set"
    assert scraped["loraplane_drift_feedback_score_floor"] == [({}, 0.5)]


def test_a_raw_threshold_is_exported_and_judges_its_statistic() -> None:
    monitor = DriftMonitor(_policy(verdicts=Verdicts(0.05, {DriftStatistic.PROMPT_LENGTH_PSI: 100.0})))
    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor, lambda name: True))
    for index in range(3):
        monitor.record(f"r{index}", "a", 1, _reference(), _sample(300))
    scraped = _scrape(registry)
    assert scraped["loraplane_drift_threshold"] == [({"statistic": "prompt_length_psi"}, 100.0)]
    over = {labels["statistic"]: value for labels, value in scraped["loraplane_drift_over"]}
    assert over["prompt_length_psi"] == 0.0, "a PSI far over what the p-value allows, but under its raw threshold"


async def test_the_inference_service_records_answers_and_takes_feedback(tmp_path: Path) -> None:
    drawn = iter([0.1, 0.9, 0.1, 0.9])  # under the fraction 0.5: the 1st and 3rd prompts are scored
    monitor = DriftMonitor(_policy(min_samples=2), draw=lambda: next(drawn))
    replica = _replica(tmp_path, drift=monitor)
    request = GenerationInput(AdapterSpec("alpha"), "one two three", SamplingOptions(max_tokens=3))
    completions = [await replica.service.complete(lambda: request) for _ in range(3)]
    base = await replica.service.complete(lambda: GenerationInput(None, "hi", SamplingOptions(max_tokens=3)))
    assert len({c.request_id for c in [*completions, base]}) == 4
    assert [r.score_prompt for r in replica.engine.requests] == [True, False, True, False]
    shutil.rmtree(replica.parts.cache_dir)  # the windows are built after this: drift reads no copy on disk
    [drift] = monitor.adapter("alpha")
    assert drift.reference == reference_profile(), "the published profile, parsed when the copy was verified"
    assert drift.live.sample_count == 3, "base-model answers have no training profile to drift from"
    assert drift.live.output_confidence == pytest.approx(TOKEN_LOGPROB)
    assert drift.live.prompt_surprise == pytest.approx(-PROMPT_LOGPROB_PER_TOKEN)

    assert replica.service.record_feedback(completions[0].request_id, 0.25) == "alpha"
    replica.service.record_feedback(completions[1].request_id, 0.75)
    assert monitor.adapter("alpha")[0].feedback.mean_score == pytest.approx(0.5)
    with pytest.raises(NotFound):
        replica.service.record_feedback(base.request_id, 1.0)
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        replica.service.record_feedback(completions[2].request_id, 1.5)
    feedback = {
        (sample.labels["adapter"], sample.labels["version"]): sample.value
        for family in replica.metrics.registry.collect()
        if family.name == "loraplane_serving_feedback"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert feedback == {("alpha", "1"): 2}


async def test_a_captured_request_keeps_the_callers_correction_and_nothing_is_captured_before(tmp_path: Path) -> None:
    replica = _replica(tmp_path, drift=DriftMonitor(_policy()))
    service = replica.service
    request = GenerationInput(AdapterSpec("alpha"), "write to jo@example.com", SamplingOptions(max_tokens=3))
    await service.complete(lambda: request)
    await replica.capture.flush()
    assert CaptureStore(replica.parts.repository.store).files("alpha") == [], "capture is off until turned on"
    await service.change_capture_policy("alpha", CapturePolicyChange(enabled=True), actor="ops")
    answered = await service.complete(lambda: request)
    assert service.record_feedback(answered.request_id, 0.0, "Dear jo@example.com,") == "alpha"
    await replica.capture.flush()
    [capture] = await service.captures("alpha", None)
    assert (capture.request.request_id, capture.request.version) == (answered.request_id, 1)
    assert (capture.request.prompt, capture.request.answer) == ("write to [email]", answered.text)
    assert capture.feedback is not None and capture.feedback.correction == "Dear [email],"


async def test_a_store_that_refuses_captures_fails_no_request(tmp_path: Path) -> None:
    outage = FakeOutageStore(FileStore(tmp_path / "captures"))
    replica = _replica(tmp_path, drift=DriftMonitor(_policy()), capture_store=outage)
    await replica.service.change_capture_policy("alpha", CapturePolicyChange(enabled=True), actor="ops")
    outage.down = True
    request = GenerationInput(AdapterSpec("alpha"), "hello", SamplingOptions(max_tokens=3))
    answered = await replica.service.complete(lambda: request)
    assert answered.text == "Hello!" and answered.finish_reason == "stop"
    replica.service.record_feedback(answered.request_id, 1.0, "fine")
    await replica.capture.flush()
    dropped = replica.metrics.registry.get_sample_value(
        "loraplane_serving_captures_total", {"adapter": "alpha", "kind": "requests", "outcome": "store_error"}
    )
    assert dropped == 1
