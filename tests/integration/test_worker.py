"""The training worker as the executor runs it: a subprocess reading a WorkerInput, writing events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from loraplane.artifact import ArtifactRepository
from loraplane.drift import Profile
from loraplane.errors import ErrorCode
from loraplane.releases import ReleaseLog, TrialPlan
from loraplane.storage import FileStore
from loraplane.training import HeldOutSet
from trainer_svc import staged_input
from trainer_svc.dataset import ChatTurn, Example, PreferenceExample, PromptCompletion, SourcedExample, write_examples
from trainer_svc.progress import ErrorEvent, EvalEvent, PhaseEvent, ProgressEvent, ResultEvent, parse_event
from trainer_svc.spec import JobSpec
from trainer_svc.worker_input import WorkerInput

REPO_ROOT = Path(__file__).resolve().parents[2]
PHASES = ["loading_model", "tokenizing", "training", "evaluating", "publishing"]
# One answer for many prompts: the tiny model memorises it in a few steps.
THINGS = ["the sky", "the sea", "a sapphire", "a bluebird", "the ocean", "a blueberry", "denim", "a jay"]
TRAIN = [PromptCompletion(prompt=f"What colour is {thing}?", completion=" Blue.") for thing in THINGS[:6]]
VALIDATION = [PromptCompletion(prompt=f"What colour is {thing}?", completion=" Blue.") for thing in THINGS[6:]]


def _sourced(examples: list[Example], first_line: int) -> list[SourcedExample]:
    return [SourcedExample(line=first_line + i, example=e) for i, e in enumerate(examples)]


def _worker_input(
    tmp_path: Path,
    base_model: Path,
    *,
    train: list[Example] = TRAIN,  # type: ignore[assignment]  # a list of one kind of example is one of Examples
    validation: list[Example] = VALIDATION,  # type: ignore[assignment]
    test: list[Example] | None = None,
    store: Path | None = None,
    **spec: Any,
) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_examples(tmp_path / "train.jsonl", _sourced(train, first_line=1))
    write_examples(tmp_path / "validation.jsonl", _sourced(validation, first_line=len(train) + 1))
    if test is not None:
        write_examples(tmp_path / "test.jsonl", _sourced(test, first_line=1))
    worker_input = WorkerInput(
        job_id="job-1",
        spec=JobSpec(base_model="tiny-llama", adapter_name="blue", training_data={"inline_jsonl": "{}"}, **spec),
        base_model_path=base_model,
        train_file=tmp_path / "train.jsonl",
        validation_file=tmp_path / "validation.jsonl",
        test_file=tmp_path / "test.jsonl" if test is not None else None,
        store_uri=(store or tmp_path / "store").as_uri(),
        work_dir=tmp_path / "work",
    )
    path = tmp_path / "input.json"
    path.write_text(worker_input.model_dump_json())
    return path


def _worker(input_path: Path) -> list[str]:
    return [sys.executable, "-m", "trainer_svc.worker", str(input_path)]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(input_path: Path) -> tuple[int, list[Any]]:
    done = subprocess.run(_worker(input_path), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    events = [parse_event(line) for line in lines]
    # Library output goes to stderr: every stdout line is an event.
    assert None not in events, done.stdout
    return done.returncode, events


def _of(kind: type, events: list[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


def test_replay_adds_the_base_models_answers_to_the_training_set(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = [PromptCompletion(prompt=f"Name colour {index}.", completion=" Blue.") for index in range(40)]
    input_path = _worker_input(
        tmp_path, tiny_model_dir, train=train, training={"max_steps": 2, "batch_size": 4, "replay_fraction": 0.5}
    )
    code, events = _run(input_path)
    assert code == 0, events[-1]
    replayed = int(events[-1].metrics["replay_examples"])
    assert 0 < replayed <= 20, "at most half the training set, the tiny model's finished answers only"
    training = next(event for event in _of(PhaseEvent, events) if event.phase == "training")
    assert training.message == f"{replayed} replay examples (the base model's answers to general questions) added"
    assert events[-1].metrics["train_examples"] == 40, "replay is not counted as the caller's data"


def test_lora_run_learns_and_publishes(tiny_model_dir: Path, tmp_path: Path) -> None:
    test = [PromptCompletion(prompt=f"What colour is {thing}?", completion=" Blue.") for thing in ("ink", "a sky")]
    input_path = _worker_input(
        tmp_path,
        tiny_model_dir,
        test=test,
        training={"max_steps": 16, "batch_size": 3, "learning_rate": 1e-2, "eval_every_steps": 4},
    )
    code, events = _run(input_path)
    assert code == 0, events[-1]

    assert [event.phase for event in _of(PhaseEvent, events)] == PHASES
    progress = _of(ProgressEvent, events)
    assert [event.step for event in progress] == list(range(1, 17))
    assert all(event.total_steps == 16 for event in progress)
    assert [event.step for event in _of(EvalEvent, events)] == [4, 8, 12, 16]
    result = events[-1]
    assert isinstance(result, ResultEvent)

    # Training really learnt the data: the answer goes from unguessable to near certain.
    assert progress[0].loss > 4.0
    assert result.metrics["validation_loss"] < 0.5
    assert result.metrics["validation_perplexity"] < 1.7

    repository = ArtifactRepository(FileStore(tmp_path / "store"))
    manifest, _ = repository.read_manifest("blue", 1)
    assert (result.adapter.name, result.adapter.version) == ("blue", 1)
    assert result.adapter.uri == repository.version_uri("blue", 1)
    assert manifest.metrics == result.metrics
    assert {"train_loss", "forgetting_probe_base_loss", "forgetting_probe_adapter_loss"} <= set(manifest.metrics)
    assert manifest.method == "lora" and manifest.rank == 16
    assert manifest.hyperparameters["learning_rate"] == 1e-2
    assert (manifest.dataset.train_examples, manifest.dataset.validation_examples) == (6, 2)
    assert manifest.base_model.name == "tiny-llama"
    assert manifest.prompt_format == "chat"  # auto, on a model with a chat template
    assert result.metrics["best_step"] == 16 and result.metrics["steps_saved"] == 0
    assert [(c.step, c.published) for c in result.checkpoints] == [(4, False), (8, False), (12, False), (16, True)]
    assert all(c.facts_lost is not None for c in result.checkpoints), "the probe ran at each evaluation"

    # Generated answers to the test prompts: the adapter says "Blue." where the random base model cannot.
    scores = {score.metric: score for score in result.task_scores}
    assert set(scores) == {"exact_match", "normalized_exact_match", "rouge_l", "bleu", "chrf"}
    # The answers are not JSON: the JSON comparisons are left out of the report, and the job says why.
    evaluating = next(event for event in _of(PhaseEvent, events) if event.phase == "evaluating")
    assert "json_exact_match (2 of 2 reference answers are not JSON)" in evaluating.message
    assert scores["exact_match"].examples == 2
    assert {score.held_out for score in result.task_scores} == {HeldOutSet.TEST}
    assert (scores["exact_match"].base, scores["exact_match"].adapter) == (0.0, 1.0)
    assert scores["chrf"].adapter > scores["chrf"].base
    assert manifest.metrics["task_exact_match_adapter"] == 1.0
    assert result.metrics["probe_facts_lost"] <= result.metrics["probe_facts_known"]
    assert result.metrics["train_tokens"] >= 6 * result.metrics["example_tokens_p50"] / 2

    version_dir = tmp_path / "store" / "adapters" / "blue" / "v1"
    adapter_config = json.loads((version_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["peft_type"] == "LORA"
    assert (version_dir / "adapter_model.safetensors").stat().st_size > 0
    profile = Profile.load(version_dir / "profile.json")
    assert profile.sample_count == 2  # built from the validation prompts and what the adapter generates for them
    assert len(profile.prompts) == len(TRAIN) + len(VALIDATION), "prompt statistics count every prompt of the job"
    assert profile.form is not None and all(record.in_form is not None for record in profile.answers)
    assert profile.output_confidence is not None and profile.output_confidence < 0
    assert profile.prompt_surprise is not None and profile.prompt_surprise > 0


@pytest.mark.parametrize("method", ["dora", "qlora"])
def test_dora_and_qlora_publish(method: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    # No validation set: evaluation and the profile fall back to the training examples.
    input_path = _worker_input(
        tmp_path,
        tiny_model_dir,
        validation=[],
        method=method,
        prompt_format="raw",
        lora={"rank": 4},
        training={"max_steps": 4, "batch_size": 3, "learning_rate": 1e-2},
    )
    code, events = _run(input_path)
    assert code == 0, events[-1]
    assert [event.phase for event in _of(PhaseEvent, events)] == PHASES
    assert not _of(EvalEvent, events)
    result = events[-1]
    assert isinstance(result, ResultEvent)
    assert "validation_loss" not in result.metrics
    manifest, _ = ArtifactRepository(FileStore(tmp_path / "store")).read_manifest("blue", 1)
    assert manifest.method == method and manifest.rank == 4 and manifest.prompt_format == "raw"
    version_dir = tmp_path / "store" / "adapters" / "blue" / "v1"
    assert json.loads((version_dir / "adapter_config.json").read_text())["use_dora"] == (method == "dora")
    assert Profile.load(version_dir / "profile.json").sample_count == len(TRAIN)


def _pair(thing: str) -> PreferenceExample:
    # The random base model finds " Blue." the likelier answer: preference tuning must turn that round.
    return PreferenceExample(prompt=f"What colour is {thing}?", chosen=" Red.", rejected=" Blue.")


def test_dpo_run_learns_the_preferences_and_publishes_a_lora_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    # One pair is a conversation (TRL's conversational form); the job trains in chat format.
    conversation = PreferenceExample(
        prompt=[ChatTurn(role="system", content="Answer in one word."), ChatTurn(role="user", content="And ink?")],
        chosen=" Red.",
        rejected=" Blue.",
    )
    test = [_pair("a jay"), _pair("the night sky"), _pair("a cornflower")]
    input_path = _worker_input(
        tmp_path,
        tiny_model_dir,
        train=[*map(_pair, THINGS[:5]), conversation],
        validation=[_pair(thing) for thing in THINGS[5:7]],
        test=test,
        method="dpo",
        training={"max_steps": 12, "batch_size": 3, "learning_rate": 1e-2, "eval_every_steps": 4},
    )
    code, events = _run(input_path)
    assert code == 0, events[-1]
    assert [event.phase for event in _of(PhaseEvent, events)] == PHASES
    assert [event.step for event in _of(ProgressEvent, events)] == list(range(1, 13))
    evaluations = _of(EvalEvent, events)
    assert [event.step for event in evaluations] == [4, 8, 12]
    # The DPO loss starts at log 2 (the adapter starts equal to its reference) and falls on held-out pairs.
    assert _of(ProgressEvent, events)[0].loss == pytest.approx(0.693, abs=0.01)
    assert evaluations[-1].validation_loss < 0.6
    result = events[-1]
    assert isinstance(result, ResultEvent)

    # On the held-out test pairs the adapter prefers every chosen answer, by a wider margin than the base.
    metrics = result.metrics
    assert metrics["preference_accuracy_adapter"] == 1.0
    assert metrics["preference_accuracy_adapter"] > metrics["preference_accuracy_base"]
    assert metrics["preference_margin_adapter"] > metrics["preference_margin_base"] + 1.0

    manifest, _ = ArtifactRepository(FileStore(tmp_path / "store")).read_manifest("blue", 1)
    assert manifest.method == "dpo" and manifest.prompt_format == "chat"
    assert manifest.metrics == metrics
    assert manifest.hyperparameters["learning_rate"] == 1e-2 and manifest.hyperparameters["dpo_beta"] == 0.1
    version_dir = tmp_path / "store" / "adapters" / "blue" / "v1"
    adapter_config = json.loads((version_dir / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and not adapter_config["use_dora"]
    # The drift profile sees each held-out pair as its prompt with the chosen answer.
    assert Profile.load(version_dir / "profile.json").sample_count == 2
    scores = {score.metric: score for score in result.task_scores}
    assert scores["exact_match"].examples == len(test)


def test_dpo_run_refuses_an_overlong_rejected_answer_naming_its_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    overlong = PreferenceExample(prompt="What colour is the sea?", chosen=" Red.", rejected=" Blue, " * 20)
    input_path = _worker_input(
        tmp_path,
        tiny_model_dir,
        train=[_pair("the sky"), overlong],
        validation=[_pair("denim")],
        method="dpo",
        training={"max_seq_length": 40},
    )
    code, events = _run(input_path)
    assert code == 1
    error = events[-1]
    assert isinstance(error, ErrorEvent)
    assert (error.code, error.field) == (ErrorCode.INVALID_ARGUMENT, "spec.training_data")
    assert error.message.startswith("line 2: the example is")
    assert "training" not in [event.phase for event in _of(PhaseEvent, events)]


def test_each_held_out_set_the_trainer_made_is_scored_apart(tiny_model_dir: Path, tmp_path: Path) -> None:
    unseen = PromptCompletion(prompt="Tell me the colour of the ink.", completion=" Blue.")
    input_path = tmp_path / "input.json"
    _worker_input(tmp_path, tiny_model_dir, training={"max_steps": 4, "batch_size": 3})
    validation = [
        SourcedExample(line=7, example=VALIDATION[0], held_out=HeldOutSet.IN_DISTRIBUTION),
        SourcedExample(line=8, example=unseen, held_out=HeldOutSet.UNSEEN_GROUPS),
    ]
    write_examples(tmp_path / "validation.jsonl", validation)
    code, events = _run(input_path)
    assert code == 0, events[-1]
    exact = {score.held_out: score for score in events[-1].task_scores if score.metric == "exact_match"}
    assert set(exact) == {HeldOutSet.IN_DISTRIBUTION, HeldOutSet.UNSEEN_GROUPS}
    assert exact[HeldOutSet.UNSEEN_GROUPS].examples == exact[HeldOutSet.IN_DISTRIBUTION].examples == 1
    assert events[-1].checkpoints[-1].validation_loss == pytest.approx(events[-1].metrics["validation_loss"])


def test_early_stopping_keeps_the_best_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Learning "Blue." for everything makes a held-out "Red." worse after the first steps.
    validation = [PromptCompletion(prompt="What colour is a rose?", completion=" Red.")]
    input_path = _worker_input(
        tmp_path,
        tiny_model_dir,
        validation=validation,
        training={
            "max_steps": 60,
            "batch_size": 3,
            "learning_rate": 1e-2,
            "eval_every_steps": 2,
            "early_stopping_patience": 2,
        },
    )
    code, events = _run(input_path)
    assert code == 0, events[-1]
    evaluations = _of(EvalEvent, events)
    assert _of(ProgressEvent, events)[-1].step < 60
    best = min(evaluations, key=lambda event: event.validation_loss)
    assert evaluations[-1].validation_loss > best.validation_loss
    metrics = events[-1].metrics
    assert metrics["validation_loss"] == pytest.approx(best.validation_loss, rel=1e-4)  # the best was published
    assert metrics["best_step"] == best.step and metrics["stopped_early"] == 1.0
    assert metrics["steps_saved"] == 60 - evaluations[-1].step
    assert metrics["final_generalization_gap"] > metrics["best_generalization_gap"]


def test_overlong_example_fails_naming_its_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = [TRAIN[0], PromptCompletion(prompt="Describe the sea at length. " * 10, completion=" Blue.")]
    input_path = _worker_input(tmp_path, tiny_model_dir, train=train, training={"max_seq_length": 32})
    code, events = _run(input_path)
    assert code == 1
    error = events[-1]
    assert isinstance(error, ErrorEvent)
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.field == "spec.training_data"
    assert "line 2" in error.message
    assert "training" not in [event.phase for event in _of(PhaseEvent, events)]
    assert not (tmp_path / "store" / "adapters").exists()


def test_a_continued_job_starts_from_its_parents_weights_and_records_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    learn = {"max_steps": 16, "batch_size": 3, "learning_rate": 1e-2}
    code, first = _run(_worker_input(tmp_path / "v1", tiny_model_dir, training=learn))
    assert code == 0, first[-1]
    store = tmp_path / "v1" / "store"
    # v2 keeps training blue@v1 with steps too small to move it: it starts where v1 ended.
    barely = {"max_steps": 1, "batch_size": 3, "learning_rate": 1e-9, "replay_fraction": 0}
    continued = _worker_input(
        tmp_path / "v2", tiny_model_dir, store=store, parent="blue@v1", training=barely, release=TrialPlan()
    )
    code, events = _run(continued)
    assert code == 0, events[-1]
    loading = next(event for event in _of(PhaseEvent, events) if event.phase == "loading_model")
    assert loading.message.endswith("continuing blue@v1")
    assert _of(ProgressEvent, events)[0].loss < 0.5 < _of(ProgressEvent, first)[0].loss, "v1's answer, not a guess"
    v1, v2 = (load_file(store / "adapters" / "blue" / f"v{n}" / "adapter_model.safetensors") for n in (1, 2))
    assert v1.keys() == v2.keys() and all(torch.allclose(v1[key], v2[key], atol=1e-6) for key in v1)
    repository = ArtifactRepository(FileStore(store))
    manifest, _ = repository.read_manifest("blue", 2)
    assert manifest.parent == "blue@v1" and repository.read_manifest("blue", 1)[0].parent is None
    kept = [
        json.loads(line)["example"]["prompt"] for line in repository.read_data(manifest, "train.jsonl").splitlines()
    ]
    assert kept == [example.prompt for example in TRAIN], "the job's data is kept with its version"
    # v2 answers as v1 does: no worse on v1's task, no fact lost, but no better where it was trained.
    gate = manifest.gate
    assert gate is not None and gate.parent == "blue@v1" and not gate.passed
    assert [(check.name, check.passed) for check in gate.checks] == [
        ("parent_task", True),
        ("new_traffic", False),
        ("facts", True),
    ]
    assert events[-1].metrics["gate_passed"] == 0.0
    publishing = [event.message for event in _of(PhaseEvent, events) if event.phase == "publishing"]
    assert "is published but not on trial: it failed its gate against blue@v1" in publishing[-1]
    assert ReleaseLog(repository).current("blue") is None


def test_a_continued_job_better_on_its_new_task_and_as_good_on_the_old_passes_its_gate(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    learn = {"max_steps": 16, "batch_size": 3, "learning_rate": 1e-2, "replay_fraction": 0}
    code, first = _run(_worker_input(tmp_path / "v1", tiny_model_dir, training=learn))
    assert code == 0, first[-1]
    store = tmp_path / "v1" / "store"
    shapes = [PromptCompletion(prompt=f"What shape is {thing}?", completion=" Round.") for thing in THINGS]
    continued = _worker_input(
        tmp_path / "v2",
        tiny_model_dir,
        store=store,
        parent="blue@v1",
        train=[*TRAIN, *shapes[:6]],
        validation=shapes[6:],
        training={**learn, "max_steps": 24, "eval_every_steps": 12},
        release=TrialPlan(),
    )
    code, events = _run(continued)
    assert code == 0, events[-1]
    gate = ArtifactRepository(FileStore(store)).read_manifest("blue", 2)[0].gate
    assert gate is not None and gate.passed, gate
    new_traffic = next(check for check in gate.checks if check.name == "new_traffic")
    assert new_traffic.parent is not None and new_traffic.candidate is not None
    assert new_traffic.candidate > new_traffic.parent and new_traffic.examples == 2
    assert events[-1].metrics["gate_passed"] == 1.0
    release = ReleaseLog(ArtifactRepository(FileStore(store))).current("blue")
    assert release is not None and release.state.candidate == 2, "a version that passes goes on trial"


def test_a_parent_whose_weights_do_not_fit_fails_the_job_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, first = _run(_worker_input(tmp_path / "v1", tiny_model_dir, training={"max_steps": 1}))
    assert code == 0, first[-1]
    store = tmp_path / "v1" / "store"
    other_shape = _worker_input(tmp_path / "v2", tiny_model_dir, store=store, parent="blue@v1", lora={"rank": 4})
    code, events = _run(other_shape)
    assert code == 1 and isinstance(events[-1], ErrorEvent)
    assert (events[-1].code, events[-1].field) == (ErrorCode.FAILED_PRECONDITION, "spec.parent")
    assert "do not fit" in events[-1].message and not _of(ProgressEvent, events)
    assert ArtifactRepository(FileStore(store)).versions("blue") == [1]


def test_sigterm_stops_the_run_without_publishing(tiny_model_dir: Path, tmp_path: Path) -> None:
    input_path = _worker_input(tmp_path, tiny_model_dir, training={"max_steps": 100_000, "batch_size": 3})
    process = subprocess.Popen(
        _worker(input_path),
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if isinstance(parse_event(line), ProgressEvent):
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert ArtifactRepository(FileStore(tmp_path / "store")).versions("blue") == []


RESUMABLE = {"max_steps": 24, "batch_size": 3, "learning_rate": 1e-2, "eval_every_steps": 4}


def _adapter_weights(store: Path) -> dict[str, Any]:
    return load_file(store / "adapters" / "blue" / "v1" / "adapter_model.safetensors")


def _kill_after_step(input_path: Path, step: int) -> None:
    """Run the worker and SIGKILL it once it reports training step `step`."""
    process = subprocess.Popen(
        _worker(input_path), cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            event = parse_event(line)
            if isinstance(event, ProgressEvent) and event.step >= step:
                break
        process.kill()
        assert process.wait(timeout=20) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_run_killed_mid_training_resumes_from_its_checkpoint_to_the_same_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    whole_dir, killed_dir, moved_dir = tmp_path / "whole", tmp_path / "killed", tmp_path / "moved"
    for folder in (whole_dir, killed_dir, moved_dir):
        folder.mkdir()
    code, whole = _run(_worker_input(whole_dir, tiny_model_dir, training=RESUMABLE))
    assert code == 0, whole[-1]

    killed_input = _worker_input(killed_dir, tiny_model_dir, training=RESUMABLE)
    _kill_after_step(killed_input, 10)  # checkpoint-8 is saved before step 9 starts
    assert ArtifactRepository(FileStore(killed_dir / "store")).versions("blue") == []
    checkpoints = killed_dir / "work" / "checkpoints"
    assert (checkpoints / "checkpoint-8" / "trainer_state.json").is_file()

    # Resuming over another base model is refused, with the reason.
    shutil.copytree(killed_dir / "work", moved_dir / "work")
    record = moved_dir / "work" / "checkpoints" / "run.json"
    record.write_text(json.dumps({"base_model_fingerprint": "sha256:" + "0" * 64}))
    code, refused = _run(_worker_input(moved_dir, tiny_model_dir, training=RESUMABLE))
    assert code == 1 and isinstance(refused[-1], ErrorEvent)
    assert refused[-1].code is ErrorCode.FAILED_PRECONDITION and "cannot resume this job" in refused[-1].message

    code, resumed = _run(killed_input)
    assert code == 0, resumed[-1]
    training = next(event for event in _of(PhaseEvent, resumed) if event.phase == "training")
    assert training.message.split("; ")[0] == "resuming from the checkpoint at step 8"
    assert [event.step for event in _of(ProgressEvent, resumed)] == list(range(9, 25))
    assert resumed[-1].metrics["best_step"] == whole[-1].metrics["best_step"]
    expected, actual = _adapter_weights(whole_dir / "store"), _adapter_weights(killed_dir / "store")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        import torch

        torch.testing.assert_close(actual[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_a_dpo_run_killed_mid_training_resumes_to_the_same_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    pairs = {"train": [_pair(thing) for thing in THINGS[:6]], "validation": [_pair(thing) for thing in THINGS[6:]]}
    training = {"max_steps": 12, "batch_size": 3, "learning_rate": 1e-2, "eval_every_steps": 4}
    inputs = []
    for folder in (whole_dir, killed_dir):
        folder.mkdir()
        inputs.append(_worker_input(folder, tiny_model_dir, method="dpo", training=training, **pairs))
    code, whole = _run(inputs[0])
    assert code == 0, whole[-1]

    _kill_after_step(inputs[1], 6)  # checkpoint-4 is saved before step 5 starts
    code, resumed = _run(inputs[1])
    assert code == 0, resumed[-1]
    assert [event.step for event in _of(ProgressEvent, resumed)] == list(range(5, 13))
    expected, actual = _adapter_weights(whole_dir / "store"), _adapter_weights(killed_dir / "store")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        import torch

        torch.testing.assert_close(actual[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_a_worker_fetches_its_staged_input_from_the_store_as_a_kubernetes_pod_does(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The trainer's side: the input with its examples, staged in the store for a pod's paths.
    trainer_dir, pod_dir = tmp_path / "trainer", tmp_path / "pod"
    trainer_dir.mkdir()
    worker_input = WorkerInput.model_validate_json(
        _worker_input(trainer_dir, tiny_model_dir, training={"max_steps": 4, "batch_size": 3}).read_text()
    )
    store = FileStore(trainer_dir / "store")
    staged_input.stage(store, worker_input, pod_dir / "job")

    done = subprocess.run(
        [sys.executable, "-m", "trainer_svc.worker", "--from-store", store.uri, worker_input.job_id],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [parse_event(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, events[-1]
    assert isinstance(events[-1], ResultEvent) and events[-1].adapter.version == 1
    assert (pod_dir / "job" / "train.jsonl").read_bytes() == worker_input.train_file.read_bytes()
    assert ArtifactRepository(store).versions("blue") == [1]


def test_under_torchrun_every_rank_trains_and_the_first_alone_reports_and_publishes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Two processes on the CPU (gloo) stand in for two GPUs in one pod.
    input_path = _worker_input(
        tmp_path, tiny_model_dir, training={"max_steps": 4, "batch_size": 2, "eval_every_steps": 2}
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "trainer_svc.worker", str(input_path)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    events = [parse_event(line) for line in done.stdout.splitlines()]
    events = [event for event in events if event is not None]  # torchrun prints a line of its own
    assert done.returncode == 0, done.stderr[-3000:]
    assert [event.step for event in _of(ProgressEvent, events)] == [1, 2, 3, 4]  # once each, not once per rank
    assert [event.step for event in _of(EvalEvent, events)] == [2, 4]
    assert len(_of(ResultEvent, events)) == 1 and events[-1].adapter.version == 1
    assert ArtifactRepository(FileStore(tmp_path / "store")).versions("blue") == [1]
