"""A job's data made from captured traffic: which captures become which examples, the held-out slice, the
parent's data mixed in, and the intake that reads them from the store (a real file store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loraplane.artifact import ArtifactRepository, ManifestDraft
from loraplane.captures import Capture, CapturedFeedback, CapturedRequest, CapturedTurn, CaptureStore
from loraplane.errors import InvalidArgument
from loraplane.storage import FileStore
from loraplane.training import HeldOutSet, Method
from tests.support.fake_engine import publish_fake_adapter
from trainer_svc.captured_data import captured_examples, mix_in_parent_data
from trainer_svc.dataset import ChatExample, PreferenceExample, PromptCompletion, SourcedExample, write_examples
from trainer_svc.intake import DatasetIntake, DatasetLimits
from trainer_svc.spec import CaptureSource, DatasetSource, JobSpec

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
SOURCE = CaptureSource(adapter="acme", held_out_share=0.0)


def _capture(
    n: int, score: float | None = None, correction: str | None = None, prompt: str | list[CapturedTurn] | None = None
) -> Capture:
    request = CapturedRequest(
        request_id=f"r{n}",
        adapter="acme",
        version=1,
        at=NOW + timedelta(seconds=n),
        prompt=prompt if prompt is not None else f"question {n}",
        answer=f"answer {n}",
        finish_reason="stop",
    )
    feedback = None
    if score is not None:
        feedback = CapturedFeedback(
            request_id=f"r{n}", adapter="acme", version=1, at=request.at, score=score, correction=correction
        )
    return Capture(request=request, feedback=feedback)


def test_corrections_and_well_scored_answers_teach_and_the_rest_is_left_out() -> None:
    chat = [CapturedTurn(role="system", content="be brief"), CapturedTurn(role="user", content="question 3")]
    captures = [
        _capture(1, 0.0, "right 1"),  # corrected
        _capture(2, 1.0),  # rated good
        _capture(3, 0.5, "right 3", prompt=chat),  # corrected, a conversation
        _capture(4, 0.2),  # scored low, no correction: nothing says what was right
        _capture(5),  # nobody scored it
        _capture(6, 0.9, "answer 6"),  # a "correction" equal to the answer is still the answer
    ]
    made = captured_examples(captures, SOURCE, preferences=False, seed=0)
    examples = sorted((e.example for e in made.train), key=str)
    assert PromptCompletion(prompt="question 1", completion="right 1") in examples
    assert PromptCompletion(prompt="question 2", completion="answer 2") in examples
    assert PromptCompletion(prompt="question 6", completion="answer 6") in examples
    assert (
        ChatExample.model_validate(
            {"messages": [*[t.model_dump() for t in chat], {"role": "assistant", "content": "right 3"}]}
        )
        in examples
    )
    assert (made.corrected, made.rated_good, made.left_out, len(made.train)) == (3, 1, 2, 4)


def test_a_preference_job_learns_each_correction_over_the_answer_given() -> None:
    captures = [_capture(1, 0.0, "right 1"), _capture(2, 1.0), _capture(3, 0.0, "answer 3")]
    made = captured_examples(captures, SOURCE, preferences=True, seed=0)
    assert [e.example for e in made.train] == [
        PreferenceExample(prompt="question 1", chosen="right 1", rejected="answer 1")
    ]
    assert (made.corrected, made.rated_good, made.left_out) == (1, 0, 2), "no pair without a worse answer"


def test_a_share_of_the_corrections_is_held_out_and_the_parents_data_mixed_in() -> None:
    captures = [_capture(n, 0.0, f"right {n}") for n in range(10)]
    made = captured_examples(captures, CaptureSource(adapter="acme", held_out_share=0.2), preferences=False, seed=3)
    held = {e.example.prompt for e in made.held_out}  # type: ignore[union-attr]
    assert len(held) == 2 and held.isdisjoint(e.example.prompt for e in made.train)  # type: ignore[union-attr]
    parent = [SourcedExample(line=n, example=PromptCompletion(prompt=f"old {n}", completion="x")) for n in range(50)]
    mixed = mix_in_parent_data(made, parent, 0.3, seed=0)
    old = [e for e in mixed.train if e.example.prompt.startswith("old")]  # type: ignore[union-attr]
    assert len(old) == mixed.parent_examples == round(8 * 0.3 / 0.7), "30% of the training examples"
    assert len(mixed.train) == 8 + len(old)


def _intake(store: FileStore) -> DatasetIntake:
    return DatasetIntake(DatasetLimits(max_bytes=1 << 20, max_rows=100, store_prefixes=("datasets/",)), lambda: store)


def test_the_intake_reads_the_captures_and_the_parents_kept_data(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    captures = CaptureStore(store)
    requests = [_capture(n).request for n in range(10)]
    verdicts = [_capture(n, 0.0, f"right {n}").feedback for n in range(10)]
    captures.write("acme", "requests", requests, at=NOW, writer="w")
    captures.write("acme", "feedback", [v for v in verdicts if v is not None], at=NOW, writer="w")
    kept = tmp_path / "train.jsonl"
    old = [PromptCompletion(prompt=f"old {n}", completion="x") for n in range(20)]
    write_examples(kept, [SourcedExample(line=n, example=example) for n, example in enumerate(old, start=1)])
    repository = ArtifactRepository(store)
    manifest = publish_fake_adapter(repository, tmp_path / "src", "acme")
    draft = ManifestDraft.model_validate(manifest.model_dump(include=set(ManifestDraft.model_fields)))
    with_data, _ = repository.publish(repository.fetch(manifest, tmp_path / "v1"), draft, [kept])
    source = DatasetSource(captures=CaptureSource(adapter="acme"))
    spec = JobSpec(base_model="tiny", adapter_name="acme", training_data=source, parent=f"acme@v{with_data.version}")
    data = _intake(store).read(spec)
    assert [e.held_out for e in data.test] == [HeldOutSet.TEST, HeldOutSet.TEST], "20% of the 10 corrections"
    training = data.train + data.validation
    assert sum(e.example.prompt.startswith("old") for e in training) == data.metrics()["parent_examples"] == 3  # type: ignore[union-attr]
    assert data.metrics()["capture_corrected"] == 10
    assert data.summary().startswith("from captures: 10 corrected, 0 rated good, 0 left out")
    preference = JobSpec(base_model="tiny", adapter_name="acme", training_data=source, method=Method.DPO)
    assert _intake(store).read(preference).metrics()["parent_examples"] == 0


def test_captures_that_teach_nothing_or_captures_as_held_out_data_are_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    CaptureStore(store).write("acme", "requests", [_capture(1).request], at=NOW, writer="w")
    source = DatasetSource(captures=CaptureSource(adapter="acme"))
    with pytest.raises(InvalidArgument, match="make no training example") as info:
        _intake(store).read(JobSpec(base_model="tiny", adapter_name="acme", training_data=source))
    assert info.value.field == "spec.training_data.captures"
    inline = DatasetSource(inline_jsonl='{"prompt": "q", "completion": "a"}\n')
    with pytest.raises(InvalidArgument, match="training data only") as held_out:
        _intake(store).read(JobSpec(base_model="tiny", adapter_name="acme", training_data=inline, test_data=source))
    assert held_out.value.field == "spec.test_data"


def test_a_prompt_asked_twice_is_held_out_whole_and_one_prompt_always_stays_for_training() -> None:
    captures = [_capture(n, 0.0, f"right {n % 3}", prompt=f"question {n % 3}") for n in range(9)]
    made = captured_examples(captures, CaptureSource(adapter="acme", held_out_share=0.4), preferences=False, seed=1)
    held = {e.example.prompt for e in made.held_out}  # type: ignore[union-attr]
    trained = {e.example.prompt for e in made.train}  # type: ignore[union-attr]
    assert held and trained and held.isdisjoint(trained)
    lone = captured_examples(
        [_capture(1, 0.0, "right")], CaptureSource(adapter="acme", held_out_share=0.9), preferences=False, seed=0
    )
    assert (len(lone.train), len(lone.held_out)) == (1, 0)
