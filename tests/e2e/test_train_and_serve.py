"""The whole loop on real parts: a job submitted over gRPC trains the tiny model in a worker
process, publishes to the store, and the serving replica (its default engine on a CPU:
transformers + peft) answers with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from loraplane.artifact import ArtifactRepository
from loraplane.cli import app
from loraplane.drift import Profile
from loraplane.errors import InvalidArgument, NotFound
from loraplane.names import AdapterSpec
from loraplane.storage import open_store
from loraplane.training import JobState, Method
from loraplane.types import DpoParameters, Job, JobEvent, SamplingParameters, TrainingParameters
from tests.support.prometheus import running_prometheus
from tests.support.stack import ANSWER, QUESTIONS, Stack, memorise_jsonl, running_stack

GREEDY = SamplingParameters(max_tokens=4, temperature=0.0)


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tiny_model_dir, tmp_path_factory.mktemp("e2e")) as stack:
        yield stack


@pytest.fixture(scope="module")
def trained(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Job, list[JobEvent]]:
    data = tmp_path_factory.mktemp("data") / "train.jsonl"
    data.write_text(memorise_jsonl())
    job = stack.client.jobs.create(
        adapter_name="secret-word",
        training_file=data,
        training=TrainingParameters(
            max_steps=20, batch_size=4, learning_rate=1e-2, validation_fraction=0.25, eval_every_steps=10
        ),
    )
    events = list(stack.client.jobs.watch(job.id))
    return stack.client.jobs.retrieve(job.id), events


def test_watch_streams_progress_until_succeeded(trained: tuple[Job, list[JobEvent]]) -> None:
    job, events = trained
    assert job.state == JobState.SUCCEEDED, job.error
    states = [e.job.state for e in events]
    assert states[0] == JobState.VALIDATING
    assert JobState.QUEUED in states and JobState.RUNNING in states
    assert states[-1] == JobState.SUCCEEDED
    steps = [e.job.progress.step for e in events if e.job.progress.step]
    assert steps == sorted(steps) and steps[-1] == 20
    assert all(e.job.progress.total_steps == 20 for e in events if e.job.progress.step)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert job.metrics.validation_loss < 1.0
    assert (job.metrics.train_examples, job.metrics.validation_examples) == (9, 3)
    assert job.metrics.preference_accuracy_adapter is None  # a supervised job has no pairs to score


def test_artifact_has_manifest_files_and_profile(stack: Stack, trained: tuple[Job, list[JobEvent]]) -> None:
    job, _ = trained
    repository = ArtifactRepository(open_store(stack.trainer_settings.store_uri))
    manifest, _ = repository.resolve(AdapterSpec("secret-word"))
    assert (manifest.version, job.adapter.version) == (1, 1)
    assert manifest.job_id == job.id
    assert set(manifest.files) == {"adapter_config.json", "adapter_model.safetensors", "profile.json"}
    assert manifest.metrics["validation_loss"] == pytest.approx(job.metrics.validation_loss)
    store = open_store(stack.trainer_settings.store_uri)
    profile = Profile.model_validate_json(store.get_bytes("adapters/secret-word/v1/profile.json"))
    assert profile.sample_count == 3


def test_adapter_answers_the_trained_completion_unlike_the_base(
    stack: Stack, trained: tuple[Job, list[JobEvent]]
) -> None:
    unseen_question = QUESTIONS[0].replace("0", "99")
    for prompt in (QUESTIONS[0], unseen_question):
        tuned = stack.client.inference.generate(prompt, adapter="secret-word", params=GREEDY)
        base = stack.client.inference.generate(prompt, params=GREEDY)
        assert tuned.text.startswith(ANSWER), tuned.text
        assert base.text != tuned.text
        assert (tuned.adapter.name, tuned.adapter.version) == ("secret-word", 1)
    pinned = stack.client.inference.generate(QUESTIONS[1], adapter="secret-word@v1", params=GREEDY)
    assert pinned.text.startswith(ANSWER)


def test_a_dora_adapter_is_trained_and_served_by_the_default_engine(stack: Stack, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(memorise_jsonl())
    job = stack.client.jobs.create(
        adapter_name="secret-word-dora",
        training_file=data,
        method=Method.DORA,
        training=TrainingParameters(max_steps=20, batch_size=4, learning_rate=1e-2),
    )
    list(stack.client.jobs.watch(job.id))
    assert stack.client.jobs.retrieve(job.id).state == JobState.SUCCEEDED
    tuned = stack.client.inference.generate(QUESTIONS[3], adapter="secret-word-dora", params=GREEDY)
    assert tuned.text.startswith(ANSWER), tuned.text
    listed = {a.ref.name: a for a in stack.client.inference.list_adapters()}
    assert listed["secret-word-dora"].method == "dora"


def test_a_dpo_adapter_is_trained_on_pairs_and_served_preferring_the_chosen_answers(
    stack: Stack, tmp_path: Path
) -> None:
    data = tmp_path / "pairs.jsonl"
    pairs = [{"prompt": question, "chosen": " Red.", "rejected": ANSWER} for question in QUESTIONS[:10]]
    data.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    job = stack.client.jobs.create(
        adapter_name="secret-word-dpo",
        training_file=data,
        method=Method.DPO,
        dpo=DpoParameters(beta=0.1),
        training=TrainingParameters(
            max_steps=20, batch_size=4, learning_rate=1e-2, validation_fraction=0.2, eval_every_steps=10
        ),
    )
    list(stack.client.jobs.watch(job.id))
    done = stack.client.jobs.retrieve(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    manifest, _ = ArtifactRepository(open_store(stack.trainer_settings.store_uri)).resolve(
        AdapterSpec("secret-word-dpo")
    )
    accuracy, margin = done.metrics.preference_accuracy_adapter, done.metrics.preference_margin_adapter
    assert accuracy is not None and done.metrics.preference_accuracy_base is not None
    assert margin is not None and done.metrics.preference_margin_base is not None
    assert accuracy > done.metrics.preference_accuracy_base
    assert margin > done.metrics.preference_margin_base
    assert manifest.metrics["preference_accuracy_adapter"] == accuracy
    # Served by the default engine: held-out questions get the chosen answer, which the base does not give.
    for question in QUESTIONS[10:]:
        tuned = stack.client.inference.generate(question, adapter="secret-word-dpo", params=GREEDY)
        base = stack.client.inference.generate(question, params=GREEDY)
        assert tuned.text.startswith(" Red."), tuned.text
        assert not base.text.startswith(" Red."), base.text
    listed = {a.ref.name: a for a in stack.client.inference.list_adapters()}
    assert listed["secret-word-dpo"].method == "dpo"


def test_stream_yields_the_same_text_as_generate(stack: Stack, trained: tuple[Job, list[JobEvent]]) -> None:
    params = SamplingParameters(max_tokens=12, temperature=0.0)
    whole = stack.client.inference.generate(QUESTIONS[2], adapter="secret-word", params=params)
    chunks = list(stack.client.inference.stream(QUESTIONS[2], adapter="secret-word", params=params))
    assert "".join(c.delta for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason is not None
    assert chunks[-1].usage == whole.usage


def test_bad_adapter_references_get_clear_errors_and_serving_stays_healthy(
    stack: Stack, trained: tuple[Job, list[JobEvent]]
) -> None:
    for adapter, error in (
        ("no-such-adapter", NotFound),
        ("secret-word@v9", NotFound),
        ("../x", InvalidArgument),
        ("secret-word@", InvalidArgument),
    ):
        with pytest.raises(error, match="adapter"):
            stack.client.inference.generate("hi", adapter=adapter, params=GREEDY)
        assert stack.client.wait_until_serving("serving", 1)
    assert "secret-word" in [a.ref.name for a in stack.client.inference.list_adapters()]


def _scrape(port: int) -> dict[str, list]:
    text = urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_count_what_happened(stack: Stack, trained: tuple[Job, list[JobEvent]]) -> None:
    trainer = _scrape(stack.trainer.metrics_port)
    jobs = {s.labels["state"]: s.value for s in trainer["loraplane_trainer_jobs"]}
    assert jobs["succeeded"] >= 1
    assert sum(s.value for s in trainer["loraplane_trainer_training_steps"] if s.name.endswith("_total")) >= 20
    serving = _scrape(stack.serving.metrics_port)
    requests = {
        (s.labels["adapter"], s.labels["status"]): s.value
        for s in serving["loraplane_serving_requests"]
        if s.name.endswith("_total") and s.labels.get("rpc") == "Generate"
    }
    assert requests[("secret-word", "OK")] >= 3
    assert requests[("_unresolved", "NOT_FOUND")] >= 1
    assert requests[("_unresolved", "INVALID_ARGUMENT")] >= 1
    # What an inference gateway's endpoint picker routes by, under vLLM's names.
    [lora] = serving["vllm:lora_requests_info"]
    assert lora.labels["max_lora"] == str(stack.serving.adapters.policy.max_loaded)
    assert {"secret-word@v1", "secret-word"} <= set(lora.labels["running_lora_adapters"].split(","))
    assert lora.labels["waiting_lora_adapters"] == ""
    assert [s.value for s in serving["vllm:num_requests_waiting"]] == [0.0]
    assert [s.value for s in serving["vllm:kv_cache_usage_perc"]] == [0.0]


def test_a_real_prometheus_scrapes_both_services(
    stack: Stack, trained: tuple[Job, list[JobEvent]], tmp_path: Path
) -> None:
    targets = {"trainer": stack.trainer.metrics_port, "serving": stack.serving.metrics_port}
    with running_prometheus(targets, tmp_path) as prometheus:
        prometheus.wait_for('count(up{job=~"trainer|serving"} == 1) == 2')
        up = prometheus.query('up{job=~"trainer|serving"} == 1')
        assert {series["metric"]["job"] for series in up} == {"trainer", "serving"}
        succeeded = prometheus.wait_for('loraplane_trainer_jobs{state="succeeded"}')
        assert float(succeeded[0]["value"][1]) >= 1
        served = prometheus.wait_for('sum by (adapter) (loraplane_serving_requests_total{adapter="secret-word"})')
        assert float(served[0]["value"][1]) >= 3


def test_cli_trains_with_a_progress_bar_and_answers(
    stack: Stack, trained: tuple[Job, list[JobEvent]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLANE_TRAINER_TARGET", f"127.0.0.1:{stack.trainer.port}")
    monkeypatch.setenv("LORAPLANE_SERVING_TARGET", f"127.0.0.1:{stack.serving.port}")
    monkeypatch.setenv("LORAPLANE_TOKEN", stack.token)
    data = tmp_path / "train.jsonl"
    data.write_text(memorise_jsonl())
    runner = CliRunner()
    train = runner.invoke(
        app,
        [
            "train",
            "--adapter",
            "cli-word",
            "--data",
            str(data),
            "--max-steps",
            "20",
            "--batch-size",
            "4",
            "--learning-rate",
            "0.01",
            "--early-stopping-patience",
            "0",  # all 20 steps: the bar must reach its end
            "--watch",
        ],
    )
    assert train.exit_code == 0, train.output
    assert "20/20" in train.output and "succeeded: cli-word@v1" in train.output
    answer = runner.invoke(app, ["generate", "--adapter", "cli-word", "--raw", "--max-tokens", "4", QUESTIONS[4]])
    assert answer.exit_code == 0 and answer.output.startswith(ANSWER), answer.output
    assert "cli-word" in runner.invoke(app, ["jobs", "--adapter", "cli-word"]).output
    assert "cli-word@v1" in runner.invoke(app, ["adapters"]).output
    assert "loaded and pinned" in runner.invoke(app, ["load", "cli-word", "--pin"]).output
    assert "engine, pinned" in runner.invoke(app, ["adapters", "--loaded"]).output
    assert runner.invoke(app, ["unload", "cli-word"]).exit_code == 0
    assert "cli-word" not in runner.invoke(app, ["adapters", "--loaded"]).output
    bad = runner.invoke(app, ["generate", "--adapter", "../x", "hi"])
    assert bad.exit_code == 2 and "INVALID_ARGUMENT" in bad.output
