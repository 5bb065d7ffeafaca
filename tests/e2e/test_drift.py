"""Drift, live, on real parts: both services on loopback with the tiny model and trained adapters, a
real Prometheus scraping them and evaluating the shipped rule files (each alert's `for` cut to one
second, its expression unchanged), and every query of the shipped dashboards run against it (the releases
dashboard's in test_releases.py, which makes releases happen).

The tests run in file order and share one history: in-distribution traffic first, then shifted
traffic, then feedback; the dashboard check comes last, over everything that happened."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraplane.cli import app
from loraplane.drift import DriftStatistic
from loraplane.errors import FailedPrecondition, InvalidArgument
from loraplane.training import JobState
from loraplane.types import Job, LoraParameters, SamplingParameters, TrainingParameters
from tests.support.dashboards import LOOP_DASHBOARD, RELEASES_DASHBOARD, load_dashboards, queries_without_data
from tests.support.prometheus import Prometheus, running_prometheus
from tests.support.rules import rule_files, with_short_durations
from tests.support.stack import QUESTIONS, Stack, memorise_jsonl, running_stack

ADAPTER = "drift-word"
OVER_MARK = re.compile(r"│\s*over\s*│")
"""A statistic's row of `loraplane drift` marked over."""
WINDOW = 16
MIN_SAMPLES = 8
ANSWER_TOKENS = SamplingParameters(max_tokens=12, temperature=0.0)
SHIFTED_WORDS = ["zebra", "quantum", "harbour", "violin", "glacier", "saffron", "tundra", "mosaic", "lantern", "orbit"]


@dataclass
class Observed:
    stack: Stack
    prometheus: Prometheus
    started: float
    request_ids: list[str] = field(default_factory=list)


def _train(stack: Stack, name: str, data: Path, rank: int) -> Job:
    return stack.client.jobs.create(
        adapter_name=name,
        training_file=data,
        lora=LoraParameters(rank=rank),
        training=TrainingParameters(
            max_steps=20, batch_size=4, learning_rate=1e-2, validation_fraction=0.25, eval_every_steps=10
        ),
    )


@pytest.fixture(scope="module")
def observed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """Both services and Prometheus, then three jobs: the watched adapter, a second one (so the
    one-slot engine evicts) and a third whose stored weights the dashboard test corrupts (a failed load)."""
    workdir = tmp_path_factory.mktemp("drift")
    serving = {
        "drift_min_samples": MIN_SAMPLES,
        "drift_window_requests": WINDOW,
        "drift_prompt_scoring_fraction": 1.0,
        "max_loaded_adapters": 1,
    }
    rules = [with_short_durations(path, workdir / "rules", seconds=1) for path in rule_files()]
    with running_stack(tiny_model_dir, workdir / "data", serving=serving) as stack:
        targets = {"trainer": stack.trainer.metrics_port, "serving": stack.serving.metrics_port}
        (workdir / "prometheus").mkdir()
        with running_prometheus(targets, workdir / "prometheus", rules) as prometheus:
            started = time.time()
            prometheus.wait_for('count(up{job=~"trainer|serving"} == 1) == 2')
            data = workdir / "train.jsonl"
            data.write_text(memorise_jsonl())
            jobs = [_train(stack, name, data, 8) for name in (ADAPTER, "other-word", "broken-word")]
            for job in jobs:
                list(stack.client.jobs.watch(job.id))
                assert stack.client.jobs.retrieve(job.id).state == JobState.SUCCEEDED
            yield Observed(stack, prometheus, started)


def _ask(observed: Observed, prompts: list[str]) -> None:
    for prompt in prompts:
        answer = observed.stack.client.inference.generate(prompt, adapter=ADAPTER, params=ANSWER_TOKENS)
        observed.request_ids.append(answer.request_id)


def _over(prometheus: Prometheus, window: int) -> dict[str, float]:
    """Whether each drift statistic is over (1) or not (0), once Prometheus has scraped a full window of
    `window` requests, every statistic read."""
    prometheus.wait_for(f'loraplane_drift_window_requests{{adapter="{ADAPTER}"}} == {window}')
    assert prometheus.wait_for(f'count(loraplane_drift_over{{adapter="{ADAPTER}"}}) == {len(DriftStatistic)}')
    over = prometheus.query(f'loraplane_drift_over{{adapter="{ADAPTER}"}}')
    return {series["metric"]["statistic"]: float(series["value"][1]) for series in over}


def _drift_cli(observed: Observed) -> str:
    result = CliRunner().invoke(
        app,
        ["drift", ADAPTER, "--serving", f"127.0.0.1:{observed.stack.serving.port}"],
        env={"LORAPLANE_TOKEN": observed.stack.token},
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_in_distribution_traffic_reads_no_statistic_over(observed: Observed) -> None:
    _ask(observed, [QUESTIONS[i % len(QUESTIONS)] for i in range(WINDOW)])
    over = _over(observed.prometheus, WINDOW)
    assert set(over.values()) == {0.0}, over
    p_values = observed.prometheus.query(f'loraplane_drift_p_value{{adapter="{ADAPTER}"}}')
    assert p_values and all(0 < float(series["value"][1]) <= 1 for series in p_values)
    assert not OVER_MARK.search(_drift_cli(observed))
    stats = observed.stack.client.inference.adapter_stats(ADAPTER)[0]
    assert stats.live.sample_count == WINDOW and stats.reference.sample_count == 3
    assert stats.live.prompt_surprise is not None and stats.reference.prompt_surprise is not None


def test_shifted_traffic_drives_drift_over_and_the_alert_fires(observed: Observed) -> None:
    shifted = [" ".join(SHIFTED_WORDS[(i + j) % 10] for j in range(20)) for i in range(WINDOW)]
    _ask(observed, shifted)
    for statistic in ("prompt_length_psi", "prompt_token_jsd"):  # polled: the next refresh, scrape and evaluation
        over = f'loraplane_drift_over{{adapter="{ADAPTER}",statistic="{statistic}"}} == 1'
        assert observed.prometheus.wait_for(over)
    deadline = time.monotonic() + 60
    while not any(
        alert["labels"]["alertname"] == "LoraplaneAdapterDrift"
        and alert["labels"].get("adapter") == ADAPTER
        and alert["state"] == "firing"
        for alert in observed.prometheus.alerts()
    ):
        assert time.monotonic() < deadline, observed.prometheus.alerts()
        time.sleep(0.5)
    output = _drift_cli(observed)
    assert re.search(r"prompt_length_psi.*│\s*over\s*│", output)


def test_feedback_lowers_the_score_gauge(observed: Observed) -> None:
    inference = observed.stack.client.inference
    for request_id in observed.request_ids[-MIN_SAMPLES:]:
        assert inference.record_feedback(request_id, 0.0) == ADAPTER
    with pytest.raises(InvalidArgument, match="score"):
        inference.record_feedback(observed.request_ids[0], 2.0)
    score = observed.prometheus.wait_for(f'loraplane_drift_feedback_score{{adapter="{ADAPTER}"}} == 0')
    assert score
    low = observed.prometheus.wait_for(f'ALERTS{{alertname="LoraplaneFeedbackScoreLow",adapter="{ADAPTER}"}}')
    assert low


def test_every_dashboard_query_returns_data(observed: Observed, tmp_path: Path) -> None:
    """Everything a panel shows is made to happen first: a refused job, a failed adapter load, evictions."""
    client = observed.stack.client
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(InvalidArgument):
        client.jobs.create(adapter_name="bad-data", training_file=bad)
    weights = observed.stack.trainer_settings.data_dir / "store/adapters/broken-word/v1/adapter_model.safetensors"
    weights.write_bytes(b"not the published weights")
    with pytest.raises(FailedPrecondition, match="sha256"):
        client.inference.generate("hi", adapter="broken-word", params=ANSWER_TOKENS)
    for adapter in ("other-word", ADAPTER):  # one engine slot: each evicts the other
        client.inference.generate(QUESTIONS[0], adapter=adapter, params=ANSWER_TOKENS)
    observed.prometheus.wait_for("sum(loraplane_serving_adapter_evictions_total) >= 2")
    observed.prometheus.wait_for("sum(loraplane_trainer_rejected_jobs_total) >= 1")
    observed.prometheus.wait_for("sum(loraplane_serving_adapter_load_failures_total) >= 1")
    time.sleep(3)  # two more scrapes, so every counter has a rate
    end = time.time()
    names = set(load_dashboards()) - {RELEASES_DASHBOARD, LOOP_DASHBOARD}
    empty = queries_without_data(observed.prometheus.query_range, sorted(names), observed.started, end)
    assert not empty, "panels without data:\n" + "\n".join(empty)
