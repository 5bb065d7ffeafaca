"""The CLI over the real client and real gRPC, against fake services on loopback that answer with canned
messages: what it sends is what the options say, what it prints comes from the typed objects, and
`status` waits only for the services it is asked about."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from typer.testing import CliRunner, Result

from loraplane.captures import Capture, CapturedTurn
from loraplane.cli import app
from loraplane.proto import common_pb2, serving_pb2, serving_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.support.service_process import free_port

CREATED = Timestamp(seconds=1_700_000_000)  # 2023-11-14 22:13:20 UTC
ADAPTER = common_pb2.AdapterRef(name="acme", version=2, uri="file:///store/adapters/acme/v2")
SUCCEEDED = trainer_pb2.Job(
    id="job-1",
    state=trainer_pb2.JOB_STATE_SUCCEEDED,
    spec=trainer_pb2.JobSpec(adapter_name="acme", method=trainer_pb2.METHOD_DORA),
    progress=trainer_pb2.JobProgress(step=20, total_steps=20, loss=0.25),
    metrics=trainer_pb2.JobMetrics(
        train_loss=0.25,
        validation_loss=0.5,
        validation_perplexity=1.65,
        forgetting_probe_base_loss=2.0,
        forgetting_probe_adapter_loss=2.125,
        steps=20,
        best_step=10,
        stopped_early=True,
        steps_saved=10,
        probe_facts_known=8,
        probe_facts_lost=1,
        task_scores=[trainer_pb2.TaskScore(metric=trainer_pb2.TASK_METRIC_ROUGE_L, base=0.1, adapter=0.9, examples=3)],
        preference_accuracy_base=0.5,
        preference_accuracy_adapter=0.75,
        preference_margin_base=0.125,
        preference_margin_adapter=0.5,
    ),
    adapter=ADAPTER,
    created_at=CREATED,
)
FAILED = trainer_pb2.Job(
    id="job-2",
    state=trainer_pb2.JOB_STATE_FAILED,
    spec=trainer_pb2.JobSpec(adapter_name="acme"),
    error=trainer_pb2.JobError(code="INVALID_ARGUMENT", message="line 3 is not valid JSON", field="spec.training_data"),
    created_at=CREATED,
)


def _as(job: trainer_pb2.Job, state: trainer_pb2.JobState.ValueType, step: int = 0) -> trainer_pb2.Job:
    earlier = trainer_pb2.Job()
    earlier.CopyFrom(job)
    earlier.state, earlier.progress.step = state, step
    return earlier


@dataclass
class FakeTrainer(trainer_pb2_grpc.TrainerServicer):  # type: ignore[misc]
    """Serves one job: created queued, then its events through to `final`; remembers the requests."""

    final: trainer_pb2.Job
    requests: list[Any] = field(default_factory=list)

    def CreateJob(self, request: trainer_pb2.CreateJobRequest, context: Any) -> trainer_pb2.Job:
        self.requests.append(request)
        return _as(self.final, trainer_pb2.JOB_STATE_QUEUED)

    def GetJob(self, request: trainer_pb2.GetJobRequest, context: Any) -> trainer_pb2.Job:
        return _as(self.final, trainer_pb2.JOB_STATE_QUEUED)

    def ListJobs(self, request: trainer_pb2.ListJobsRequest, context: Any) -> trainer_pb2.ListJobsResponse:
        self.requests.append(request)
        return trainer_pb2.ListJobsResponse(jobs=[self.final])

    def WatchJob(self, request: trainer_pb2.WatchJobRequest, context: Any) -> Iterator[trainer_pb2.JobEvent]:
        running = trainer_pb2.JOB_STATE_RUNNING
        events = [
            (trainer_pb2.JOB_STATE_VALIDATING, 0, "event 1"),
            (running, 10, "step 10/20 loss 0.2500"),  # the progress bar's
            (running, 10, "warning: the adapter lost 1 of the 8 general facts its base model knew"),
        ]
        for sequence, (state, step, message) in enumerate(events, start=1):
            yield trainer_pb2.JobEvent(sequence=sequence, job=_as(self.final, state, step), message=message)
        yield trainer_pb2.JobEvent(sequence=len(events) + 1, job=self.final, message="ended")

    def Retrain(self, request: trainer_pb2.RetrainRequest, context: Any) -> trainer_pb2.RetrainResponse:
        self.requests.append(request)
        return trainer_pb2.RetrainResponse(
            adapter=request.adapter,
            outcome=trainer_pb2.RETRAIN_OUTCOME_STARTED,
            job=_as(self.final, trainer_pb2.JOB_STATE_QUEUED),
            message="retrain job job-1 continues acme@v2 on the captures since 2026-12-01T00:00:00+00:00",
        )

    def UpdateRetrainPolicy(
        self, request: trainer_pb2.UpdateRetrainPolicyRequest, context: Any
    ) -> trainer_pb2.RetrainPolicy:
        self.requests.append(request)
        return trainer_pb2.RetrainPolicy(
            adapter=request.adapter,
            enabled=request.enabled,
            cooldown_seconds=request.cooldown_seconds,
            canary_share=0.25,
        )


class FakeInference(serving_pb2_grpc.InferenceServicer):  # type: ignore[misc]
    """Answers "Hello" (streamed as two chunks) and knows one adapter, pinned in the engine, with drift."""

    INFO = serving_pb2.AdapterInfo(
        ref=ADAPTER,
        method="dora",
        rank=8,
        prompt_format="chat",
        tier=serving_pb2.ADAPTER_TIER_ENGINE,
        pinned=True,
        requests=3,
        created_at=CREATED,
        last_used_at=CREATED,
    )

    def Generate(self, request: serving_pb2.GenerateRequest, context: Any) -> serving_pb2.GenerateResponse:
        return serving_pb2.GenerateResponse(text="Hello", finish_reason=serving_pb2.FINISH_REASON_STOP)

    def GenerateStream(
        self, request: serving_pb2.GenerateRequest, context: Any
    ) -> Iterator[serving_pb2.GenerateStreamResponse]:
        yield serving_pb2.GenerateStreamResponse(delta="Hel", request_id="r1")
        yield serving_pb2.GenerateStreamResponse(delta="lo", finish_reason=serving_pb2.FINISH_REASON_STOP)

    def ListAdapters(self, request: Any, context: Any) -> serving_pb2.ListAdaptersResponse:
        return serving_pb2.ListAdaptersResponse(adapters=[self.INFO])

    def LoadAdapter(self, request: Any, context: Any) -> serving_pb2.LoadAdapterResponse:
        return serving_pb2.LoadAdapterResponse(adapter=self.INFO)

    RELEASE = serving_pb2.Release(
        adapter="acme",
        versions=[
            serving_pb2.VersionFigures(version=2, requests=120, values={"error_rate": 0.0}),
            serving_pb2.VersionFigures(version=3, requests=14, values={"error_rate": 0.25}),
        ],
        checks=[
            serving_pb2.GuardrailCheck(guardrail="error_rate", stable=0.0, candidate=0.25, margin=0.02, judged=False),
            serving_pb2.GuardrailCheck(guardrail="feedback_score", stable=0.9, margin=0.1),
        ],
        verdict="trying: 14 of 100 requests, 30 of 60 s",
        state=serving_pb2.ReleaseState(
            stable_version=2, candidate_version=3, mode=common_pb2.RELEASE_MODE_CANARY, canary_share=0.1
        ),
        history=[
            serving_pb2.ReleaseRecord(
                sequence=1,
                action=serving_pb2.RELEASE_ACTION_START,
                state=serving_pb2.ReleaseState(
                    stable_version=2, candidate_version=3, mode=common_pb2.RELEASE_MODE_CANARY, canary_share=0.1
                ),
                actor="ops",
                reason="more steps",
                time=CREATED,
            )
        ],
    )

    def __init__(self) -> None:
        self.release_updates: list[serving_pb2.UpdateReleaseRequest] = []
        self.capture_updates: list[serving_pb2.UpdateCapturePolicyRequest] = []
        self.exports: list[serving_pb2.ExportCapturesRequest] = []

    def GetCapturePolicy(self, request: serving_pb2.GetCapturePolicyRequest, context: Any) -> serving_pb2.CapturePolicy:
        return serving_pb2.CapturePolicy(adapter="acme", sample_share=1.0, retention_days=30, retention_bytes=1 << 30)

    def UpdateCapturePolicy(
        self, request: serving_pb2.UpdateCapturePolicyRequest, context: Any
    ) -> serving_pb2.CapturePolicy:
        self.capture_updates.append(request)
        return serving_pb2.CapturePolicy(
            adapter="acme",
            enabled=request.enabled,
            sample_share=request.sample_share if request.HasField("sample_share") else 1.0,
            retention_days=7,
            retention_bytes=1000,
            actor="ops",
            updated_at=CREATED,
        )

    def ExportCaptures(
        self, request: serving_pb2.ExportCapturesRequest, context: Any
    ) -> Iterator[serving_pb2.CapturedRequest]:
        self.exports.append(request)
        turns = serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="hi [email]")])
        yield serving_pb2.CapturedRequest(
            request_id="r1", version=2, time=CREATED, messages=turns, answer="Hello", finish_reason="stop"
        )
        yield serving_pb2.CapturedRequest(
            request_id="r2",
            version=2,
            time=CREATED,
            prompt="hi",
            answer="Hel",
            finish_reason="length",
            feedback_score=0.0,
            correction="Hello",
        )

    def GetRelease(self, request: serving_pb2.GetReleaseRequest, context: Any) -> serving_pb2.Release:
        return self.RELEASE

    def UpdateRelease(self, request: serving_pb2.UpdateReleaseRequest, context: Any) -> serving_pb2.Release:
        self.release_updates.append(request)
        return self.RELEASE

    def GetAdapterStats(self, request: Any, context: Any) -> serving_pb2.GetAdapterStatsResponse:
        summary = serving_pb2.ProfileSummary
        stats = serving_pb2.AdapterStats(
            adapter="acme",
            version=2,
            reference=summary(
                sample_count=3, prompt_count=40, output_confidence=-0.5, prompt_surprise=2.25, answer_form_share=1.0
            ),
            live=summary(sample_count=16, prompt_count=16, prompt_surprise=4.5, answer_form_share=0.25),
            statistics=[
                serving_pb2.DriftStatisticValue(statistic="prompt_length_psi", value=0.4, p_value=0.0004, over=True),
                serving_pb2.DriftStatisticValue(statistic="prompt_token_jsd"),
                serving_pb2.DriftStatisticValue(statistic="response_length_psi", value=0.1, p_value=0.31),
                serving_pb2.DriftStatisticValue(statistic="refusal_rise", value=0.5, threshold=0.3, over=True),
            ],
            min_samples=8,
            feedback_count=9,
            feedback_score=0.25,
            feedback_score_floor=0.5,
            false_alarm_rate=0.05,
            p_value_threshold=0.025,
            answer_form="JSON object with keys city",
        )
        return serving_pb2.GetAdapterStatsResponse(adapters=[stats])


@contextmanager
def _service(*servicers: Any, serving: bool = True) -> Iterator[tuple[str, health.HealthServicer]]:
    """A real gRPC server on loopback with `servicers` and the standard health service."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    for servicer in servicers:
        if isinstance(servicer, FakeTrainer):
            trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, server)
        else:
            serving_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", checks
    finally:
        server.stop(None)


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"LORAPLANE_TOKEN": "", "COLUMNS": "200"})


def test_train_sends_what_the_options_say_and_prints_the_outcome(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "ping", "completion": "pong"}\n')
    trainer = FakeTrainer(SUCCEEDED)
    with _service(trainer) as (address, _):
        result = _run(
            "train", "--adapter", "acme", "--data", str(data), "--method", "dora", "--prompt-format", "chat",
            "--rank", "8", "--max-steps", "20", "--early-stopping-patience", "0", "--watch", "--trainer", address,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    [request] = trainer.requests
    spec = request.spec
    assert (spec.method, spec.prompt_format) == (trainer_pb2.METHOD_DORA, trainer_pb2.PROMPT_FORMAT_CHAT)
    assert (spec.lora.rank, spec.training.max_steps, spec.training_data.inline_jsonl) == (8, 20, data.read_text())
    assert spec.training.HasField("early_stopping_patience") and spec.training.early_stopping_patience == 0
    assert not spec.training.HasField("replay_fraction") and not spec.resources.HasField("gpus")
    assert not spec.HasField("release"), "published only unless asked"
    assert spec.parent == "", "a fresh adapter unless --parent names a version"
    assert "job job-1 queued" in result.output
    assert "warning: the adapter lost 1 of the 8 general facts" in result.output  # told as it happens
    assert "step 10/20 loss" not in result.output  # the bar shows the steps
    assert "succeeded: acme@v2 at file:///store/adapters/acme/v2" in result.output
    assert "train loss 0.2500, validation loss 0.5000 (perplexity 1.65)" in result.output
    assert "published step 10 of 20, stopped early (10 steps saved); general facts lost 1 of 8" in result.output
    assert "held-out pairs preferred: base 0.500 -> adapter 0.750 (margin 0.12 -> 0.50 nats)" in result.output
    assert "rouge_l: base 0.100 -> adapter 0.900 (3 prompts)" in result.output


def test_train_can_start_the_published_version_as_a_canary_or_shadow_candidate(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "ping", "completion": "pong"}\n')
    trainer = FakeTrainer(SUCCEEDED)
    with _service(trainer) as (address, _):
        canary = _run("train", "--adapter", "acme", "--data", str(data), "--release", "canary", "--canary", "5%",
                      "--trainer", address)  # fmt: skip
        shadow = _run("train", "--adapter", "acme", "--data", str(data), "--release", "shadow", "--trainer", address)
    assert canary.exit_code == 0 and shadow.exit_code == 0, canary.output + shadow.output
    first, second = (request.spec.release for request in trainer.requests)
    assert first.mode == common_pb2.RELEASE_MODE_CANARY and first.canary_share == pytest.approx(0.05)
    assert second.mode == common_pb2.RELEASE_MODE_SHADOW and not second.HasField("canary_share")


def test_a_failed_job_prints_its_error_and_train_exits_non_zero(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("not json\n")
    with _service(FakeTrainer(FAILED)) as (address, _):
        watched = _run("watch", "job-2", "--trainer", address)
        trained = _run("train", "--adapter", "acme", "--data", str(data), "--watch", "--trainer", address)
    assert watched.exit_code == 0, watched.output
    assert "failed: INVALID_ARGUMENT spec.training_data: line 3 is not valid JSON" in watched.output
    assert trained.exit_code == 1 and "failed: INVALID_ARGUMENT" in trained.output


def test_jobs_filters_by_state_and_lists_from_the_typed_jobs() -> None:
    trainer = FakeTrainer(SUCCEEDED)
    with _service(trainer) as (address, _):
        result = _run("jobs", "--state", "succeeded", "--trainer", address)
    assert result.exit_code == 0, result.output
    assert trainer.requests[0].state == trainer_pb2.JOB_STATE_SUCCEEDED
    [row] = [line for line in result.output.splitlines() if "job-1" in line]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["job-1", "acme", "succeeded", "20/20", "0.5000", "v2", "2023-11-14 22:13:20"]


def test_adapters_load_generate_and_stream_print_from_the_typed_objects() -> None:
    with _service(FakeInference()) as (address, _):
        listed = _run("adapters", "--serving", address)
        loaded = _run("load", "acme", "--pin", "--serving", address)
        answer = _run("generate", "hi", "--serving", address)
        streamed = _run("generate", "hi", "--stream", "--serving", address)
    [row] = [line for line in listed.output.splitlines() if "acme@v2" in line]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["acme@v2", "dora", "8", "chat", "engine, pinned", "3", "11-14 22:13"]
    assert loaded.output.strip() == "acme v2 loaded and pinned"
    assert (answer.output, streamed.output) == ("Hello\n", "Hello\n")


def test_drift_marks_what_is_over_and_shows_unset_figures_as_a_dash() -> None:
    with _service(FakeInference()) as (address, _):
        result = _run("drift", "acme", "--serving", address)
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1:] for cells in _table_rows(result.output)}
    assert rows["prompt_length_psi"] == ["0.400", "<0.001", "over"]
    assert rows["prompt_token_jsd"] == ["-", "-", ""]
    assert rows["response_length_psi"] == ["0.100", "0.310", ""]
    assert rows["refusal_rise"] == ["0.500", "> 0.3", "over"], "a raw threshold shows in place of the p-value"
    assert rows["requests (window / reference)"] == ["16", "3", ""]
    assert rows["prompts (window / reference)"] == ["16", "40", ""]
    assert rows["output confidence (live / reference)"] == ["-", "-0.500", ""]
    assert rows["prompt surprise (live / reference)"] == ["4.500", "2.250", ""]
    assert rows["in form: JSON object with keys city (live / reference)"] == ["0.250", "1.000", ""]
    assert rows["feedback score (9 scores; floor)"] == ["0.250", "0.5", "low"]
    assert "p-value at most 0.0250 (a 0.05 false-alarm rate" in " ".join(result.output.split())
    assert "acme v2" in result.output


def test_release_sends_the_change_the_options_say_and_shows_the_release_and_its_records() -> None:
    inference = FakeInference()
    with _service(inference) as (address, _):
        canary = _run(
            "release", "acme", "--candidate", "v3", "--canary", "25%", "--reason", "more steps", "--serving", address
        )
        shadow = _run("release", "acme", "--candidate", "3", "--shadow", "--stable", "v2", "--serving", address)
        promoted = _run("release", "acme", "promote", "--serving", address)
        shown = _run("release", "acme", "--serving", address)
    assert canary.exit_code == 0 and shadow.exit_code == 0, canary.output + shadow.output
    start, shadow_start, promote = inference.release_updates
    assert (start.action, start.candidate_version, start.mode) == (
        serving_pb2.RELEASE_ACTION_START,
        3,
        common_pb2.RELEASE_MODE_CANARY,
    )
    assert start.canary_share == pytest.approx(0.25) and start.reason == "more steps" and start.stable_version == 0
    assert (shadow_start.mode, shadow_start.stable_version, shadow_start.HasField("canary_share")) == (
        common_pb2.RELEASE_MODE_SHADOW,
        2,
        False,
    )
    assert promote.action == serving_pb2.RELEASE_ACTION_PROMOTE and promoted.exit_code == 0
    assert len(inference.release_updates) == 3, "status changes nothing"
    assert "acme: stable v2, candidate v3 (canary 10%)" in shown.output
    rows = {cells[0]: cells[1:] for cells in _table_rows(shown.output)}
    assert rows["requests"] == ["120", "14", "", ""]
    assert rows["error_rate"] == ["0.000", "0.250", "0.02", "too few samples"], "both versions side by side"
    assert rows["feedback_score"] == ["0.900", "-", "0.1", "too few samples"]
    assert "trying: 14 of 100 requests" in shown.output
    assert rows["1"] == ["2023-11-14 22:13:20", "start", "ops", "stable v2, candidate v3 (canary 10%)", "more steps"]


def test_release_refuses_a_malformed_share_or_version_before_calling() -> None:
    inference = FakeInference()
    with _service(inference) as (address, _):
        share = _run("release", "acme", "--candidate", "v3", "--canary", "10", "--serving", address)
        version = _run("release", "acme", "--candidate", "latest", "--serving", address)
    assert share.exit_code == 2 and "write 10% or 0.1" in share.output
    assert version.exit_code == 2 and "candidate" in version.output
    assert inference.release_updates == []


def test_capture_turns_capture_on_and_off_and_captures_prints_json_lines() -> None:
    inference = FakeInference()
    with _service(inference) as (address, _):
        shown = _run("capture", "acme", "--serving", address)
        on = _run("capture", "acme", "on", "--share", "10%", "--retention-days", "7", "--serving", address)
        off = _run("capture", "acme", "off", "--serving", address)
        exported = _run("captures", "acme", "--since", "2026-12-01", "--serving", address)
        refused = _run("captures", "acme", "--since", "last week", "--serving", address)
    assert "acme: capture off" in shown.output and inference.capture_updates[0].enabled
    assert "acme: capturing 10% of requests, kept 7 days and at most 1000 bytes (set by ops)" in on.output
    first, second = inference.capture_updates
    assert first.sample_share == pytest.approx(0.1) and first.retention_days == 7
    assert not first.HasField("retention_bytes"), "what the options leave out stays as the policy has it"
    assert not second.enabled and not second.HasField("sample_share") and "capture off" in off.output
    lines = [Capture.model_validate_json(line) for line in exported.output.splitlines()]
    assert [capture.request.prompt for capture in lines] == [[CapturedTurn(role="user", content="hi [email]")], "hi"]
    assert lines[0].feedback is None and lines[1].feedback is not None and lines[1].feedback.correction == "Hello"
    assert inference.exports[0].since.ToDatetime() == datetime(2026, 12, 1)
    assert refused.exit_code == 2 and "not an ISO 8601 time" in refused.output and len(inference.exports) == 1


def test_retrain_and_retraining_send_what_the_options_say() -> None:
    trainer = FakeTrainer(SUCCEEDED)
    with _service(trainer) as (address, _):
        started = _run("retrain", "acme", "--since", "2026-12-01", "--trainer", address)
        policy = _run("retraining", "acme", "on", "--cooldown", "600", "--canary", "25%", "--trainer", address)
    retrain, change = trainer.requests
    assert retrain.adapter == "acme" and retrain.since.ToDatetime() == datetime(2026, 12, 1)
    assert "retrain job job-1 continues acme@v2" in started.output
    assert (change.enabled, change.cooldown_seconds, change.canary_share) == (True, 600, 0.25)
    assert "acme: retraining on alerts on, at most one job per 600 s, passing versions tried on 25% of traffic" in (
        policy.output
    )


def _table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


def test_status_waits_only_for_the_service_it_names() -> None:
    nobody = f"127.0.0.1:{free_port()}"  # no trainer on this machine
    with _service(FakeInference()) as (serving, _):
        started = time.monotonic()
        named = _run("status", "--wait", "60", "--service", "serving", "--serving", serving, "--trainer", nobody)
        took = time.monotonic() - started
        both = _run("status", "--wait", "1", "--serving", serving, "--trainer", nobody)
    assert named.exit_code == 0, named.output
    assert took < 10, "it did not wait out the trainer"
    assert named.output.split() == ["serving:", "SERVING"]
    assert both.exit_code == 1
    assert both.output.split() == ["trainer:", "not", "serving", "serving:", "SERVING"]


def test_status_returns_once_the_service_named_turns_serving() -> None:
    with _service(FakeInference(), serving=False) as (serving, checks):
        turn = threading.Timer(1.0, checks.set, ("", health_pb2.HealthCheckResponse.SERVING))
        turn.start()
        started = time.monotonic()
        result = _run("status", "--wait", "60", "--service", "serving", "--serving", serving)
        took = time.monotonic() - started
        turn.join()
    assert result.exit_code == 0, result.output
    assert 1.0 <= took < 10
