"""The drift monitor's windows and feedback, its Prometheus export with bounded labels, and the
inference service feeding it (over the fake engine of tests.support.fake_engine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from loraplane.drift import (
    LENGTH_BUCKETS,
    DriftStatistic,
    Profile,
    ProfileBuilder,
    PromptFrame,
    Sample,
    compare,
    length_bucket,
)
from loraplane.errors import InvalidArgument, NotFound
from loraplane.names import AdapterSpec
from serving_svc.adapter_labels import OTHER_LABEL
from serving_svc.drift_metrics import DriftCollector
from serving_svc.drift_monitor import DriftMonitor, DriftPolicy
from serving_svc.engines.base import SamplingOptions
from serving_svc.inference import GenerationInput
from tests.support.fake_engine import PROMPT_LOGPROB_PER_TOKEN, TOKEN_LOGPROB, reference_profile
from tests.unit.test_inference_service import _replica

THRESHOLDS = dict.fromkeys(DriftStatistic, 0.25)


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
        "thresholds": THRESHOLDS,
        "feedback_score_floor": 0.5,
    }
    return DriftPolicy(**{**values, **overrides})  # type: ignore[arg-type]


def _reference(prompt_length: int = 4) -> Profile:
    builder = ProfileBuilder()
    for _ in range(20):
        builder.add(Sample(list(range(prompt_length)), [1, 2], -1.0, -2.0 * (prompt_length - 1)))
    return builder.build()


def _sample(prompt_length: int = 4) -> Sample:
    return Sample(list(range(prompt_length)), [1, 2], -1.0, -2.0 * (prompt_length - 1))


def test_a_window_keeps_the_newest_requests_within_its_age() -> None:
    clock = Clock()
    monitor = DriftMonitor(_policy(), clock=clock)
    reference = _reference()
    for index in range(7):  # two more than the window holds
        monitor.record(f"r{index}", "a", 1, reference, _sample(prompt_length=4 if index < 2 else 200))
    drift = monitor.adapter("a")
    assert drift.live.sample_count == 5 and drift.requests_total == 7
    assert sum(drift.live.prompt_length_histogram[:4]) == 0, "the two short prompts slid out"
    clock.now += 61
    assert monitor.adapter("a").live.sample_count == 0, "every request is older than the window"


def test_below_the_minimum_the_live_figures_are_withheld() -> None:
    monitor = DriftMonitor(_policy(min_samples=3))
    reference = _reference()
    for index in range(2):
        monitor.record(f"r{index}", "a", 1, reference, _sample(200))
    report = monitor.adapter("a").report
    assert all(value is None for value in report.statistics.values())
    assert report.output_confidence is None and report.reference_output_confidence == pytest.approx(-0.5)
    monitor.record("r2", "a", 1, reference, _sample(200))
    report = monitor.adapter("a").report
    assert report.statistics[DriftStatistic.PROMPT_LENGTH_PSI] > 0.25
    assert report.statistics[DriftStatistic.OUTPUT_CONFIDENCE_DROP] == pytest.approx(0.0)
    assert report.statistics[DriftStatistic.PROMPT_SURPRISE_RISE] == pytest.approx(0.0)


def test_a_new_version_starts_a_new_window_against_its_own_reference() -> None:
    monitor = DriftMonitor(_policy())
    for index in range(4):
        monitor.record(f"r{index}", "a", 1, _reference(), _sample())
    monitor.record("r9", "a", 2, _reference(prompt_length=100), _sample(100))
    drift = monitor.adapter("a")
    assert (drift.version, drift.live.sample_count) == (2, 1)
    assert drift.reference.prompt_length_histogram[7] == 20  # the new version's reference: length 100


def test_an_adapter_without_a_usable_reference_is_not_profiled_but_takes_feedback() -> None:
    monitor = DriftMonitor(_policy())
    for index in range(3):
        monitor.record(f"r{index}", "a", 1, None, _sample())
    assert monitor.adapters() == []
    with pytest.raises(NotFound, match="no drift window"):
        monitor.adapter("a")
    assert monitor.record_feedback("r0", 1.0) == "a", "the request was answered here"
    monitor.record("r3", "a", 2, _reference(), _sample())  # a later version with a profile is profiled
    assert (monitor.adapter("a").version, monitor.adapter("a").live.sample_count) == (2, 1)


def test_feedback_is_counted_for_the_answering_adapter_and_averaged_from_the_minimum() -> None:
    monitor = DriftMonitor(_policy(min_samples=2))
    reference = _reference()
    for index in range(4):
        monitor.record(f"r{index}", "a", 1, reference, _sample())
    assert monitor.record_feedback("r0", 1.0) == "a"
    assert monitor.adapter("a").feedback.mean_score is None, "one score is below the minimum of two"
    monitor.record_feedback("r1", 0.0)
    monitor.record_feedback("r2", 0.2)
    feedback = monitor.adapter("a").feedback
    assert (feedback.count, feedback.mean_score, feedback.rate) == (3, pytest.approx(0.4), pytest.approx(0.75))
    with pytest.raises(NotFound, match="request_id"):
        monitor.record_feedback("never-answered", 1.0)


def test_recording_does_no_drift_work_until_someone_reads() -> None:
    """The request path only queues; a reader (a scrape, GetAdapterStats) does the counting."""
    monitor = DriftMonitor(_policy())
    monitor.record("r1", "a", 1, _reference(), _sample())
    monitor.record("r2", "b", 1, None, _sample())
    assert len(monitor._pending) == 2 and not monitor._windows
    assert [entry.adapter for entry in monitor.adapters()] == ["a"]


def _scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {family.name: [(sample.labels, sample.value) for sample in family.samples] for family in registry.collect()}


def test_gauges_use_bounded_labels_and_pool_the_rest_under_other() -> None:
    """Four adapters, two labels: the two owners get series, the other two one pooled `_other` series."""
    monitor = DriftMonitor(_policy(window_requests=50, min_samples=3))
    owners = {"a", "b"}
    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor, lambda name: name in owners))
    references = {name: _reference(prompt_length=4) for name in "abcd"}
    for name, prompt_length in (("a", 4), ("b", 4), ("c", 4), ("d", 300)):
        for index in range(3):
            monitor.record(f"{name}{index}", name, 1, references[name], _sample(prompt_length))
    scraped = _scrape(registry)
    windows = {labels["adapter"]: value for labels, value in scraped["loraplane_drift_window_requests"]}
    assert windows == {"a": 3, "b": 3, OTHER_LABEL: 6}
    drift = {(labels["adapter"], labels["statistic"]): value for labels, value in scraped["loraplane_drift"]}
    assert {adapter for adapter, _ in drift} == {"a", "b", OTHER_LABEL}
    assert drift[("a", "prompt_length_psi")] == pytest.approx(0.0)
    pooled = compare(
        Profile.total(references[name] for name in "cd"),
        Profile.total(monitor.adapter(name).live for name in "cd"),
    )
    assert drift[(OTHER_LABEL, "prompt_length_psi")] == pytest.approx(
        pooled.statistics[DriftStatistic.PROMPT_LENGTH_PSI]
    )
    assert drift[(OTHER_LABEL, "prompt_length_psi")] > 0.25, "half the pooled traffic is shifted"
    thresholds = {labels["statistic"]: value for labels, value in scraped["loraplane_drift_threshold"]}
    assert thresholds == {statistic.value: 0.25 for statistic in DriftStatistic}
    assert scraped["loraplane_drift_feedback_score_floor"] == [({}, 0.5)]


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
    drift = monitor.adapter("alpha")
    assert drift.reference == reference_profile(), "the published profile, parsed when the copy was verified"
    assert drift.live.sample_count == 3, "base-model answers have no training profile to drift from"
    assert drift.live.output_confidence == pytest.approx(TOKEN_LOGPROB)
    assert drift.live.prompt_surprise == pytest.approx(-PROMPT_LOGPROB_PER_TOKEN)

    assert replica.service.record_feedback(completions[0].request_id, 0.25) == "alpha"
    replica.service.record_feedback(completions[1].request_id, 0.75)
    assert monitor.adapter("alpha").feedback.mean_score == pytest.approx(0.5)
    with pytest.raises(NotFound):
        replica.service.record_feedback(base.request_id, 1.0)
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        replica.service.record_feedback(completions[2].request_id, 1.5)
    feedback = {
        sample.labels["adapter"]: sample.value
        for family in replica.metrics.registry.collect()
        if family.name == "loraplane_serving_feedback"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert feedback == {"alpha": 2}


def test_a_window_counts_prompts_as_its_reference_does() -> None:
    """Without the template's frame for a reference written so; whole for an older one."""
    frame = PromptFrame(prefix=tuple(range(100, 130)), suffix=(130, 131))
    monitor = DriftMonitor(_policy(), prompt_frame=lambda: frame)
    builder = ProfileBuilder(frame)
    builder.add(Sample([*frame.prefix, 1, 2, 3, *frame.suffix], [1, 2], -1.0))
    content_reference = builder.build()
    old = builder.build().model_dump()
    old.update(schema_version=2, prompt_length_histogram=[0] * LENGTH_BUCKETS)
    del old["prompt_tokens"]
    whole_reference = Profile.model_validate_json(json.dumps(old))
    framed_prompt = Sample([*frame.prefix, 1, 2, 3, *frame.suffix], [1, 2], -1.0)
    monitor.record("r1", "new", 1, content_reference, framed_prompt)
    monitor.record("r2", "old", 1, whole_reference, framed_prompt)
    lengths = {drift.adapter: drift.live.prompt_length_histogram for drift in monitor.adapters()}
    assert lengths["new"][length_bucket([3])[0]] == 1, "3 tokens of content"
    assert lengths["old"][length_bucket([35])[0]] == 1, "the whole 35-token prompt"
