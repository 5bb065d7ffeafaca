"""Dataset intake on its own: the limits, the store's dataset prefixes, cleaning, and the job folder's files.
The store is a real file store in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.errors import InvalidArgument, NotFound
from loraplane.storage import FileStore, ObjectStore
from trainer_svc.dataset import read_examples
from trainer_svc.intake import DatasetIntake, DatasetLimits, ExampleFiles, examples_ready, write_examples
from trainer_svc.spec import DatasetSource, JobSpec

LIMITS = DatasetLimits(max_bytes=1024, max_rows=10, store_prefixes=("datasets/",))


def _line(n: int) -> str:
    return f'{{"prompt": "question {n}", "completion": "answer {n}"}}\n'


def _spec(training_data: DatasetSource, **fields: object) -> JobSpec:
    return JobSpec(base_model="tiny", adapter_name="a", training_data=training_data, **fields)  # type: ignore[arg-type]


def _inline(*lines: str) -> DatasetSource:
    return DatasetSource(inline_jsonl="".join(lines))


def _no_store() -> ObjectStore:
    raise AssertionError("a job with inline data must not open the store")


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def intake(store: FileStore) -> DatasetIntake:
    return DatasetIntake(LIMITS, lambda: store)


def test_inline_data_is_deduplicated_split_and_never_opens_the_store() -> None:
    lines = [_line(n) for n in range(5)]
    data = DatasetIntake(LIMITS, _no_store).read(
        _spec(
            _inline(*lines, '{"prompt": "Question  0", "completion": "ANSWER 0"}\n'),
            training={"validation_fraction": 0.2},
        )
    )
    assert (len(data.train), len(data.validation), data.test) == (4, 1, [])
    assert data.duplicates_removed == 1  # the first, in other case and spacing
    assert sorted(e.line for e in data.train + data.validation) == [1, 2, 3, 4, 5]


def test_a_dataset_in_the_store_is_read_from_under_a_dataset_prefix(intake: DatasetIntake, store: FileStore) -> None:
    store.put_bytes("datasets/train.jsonl", (_line(1) + _line(2)).encode())
    data = intake.read(
        _spec(DatasetSource(uri=store.uri_for("datasets/train.jsonl")), validation_data=_inline(_line(3)))
    )
    assert [e.line for e in data.train] == [1, 2] and [e.line for e in data.validation] == [1]


@pytest.mark.parametrize(
    ("key", "content", "error", "message"),
    [
        ("adapters/a/manifest.json", _line(1), InvalidArgument, "outside the store's dataset folders"),
        ("datasets/big.jsonl", _line(1) * 40, InvalidArgument, "bytes; the limit is 1024"),
        ("datasets/missing.jsonl", None, NotFound, "no object"),
    ],
)
def test_a_store_dataset_out_of_reach_too_big_or_missing_is_refused_naming_its_field(
    intake: DatasetIntake, store: FileStore, key: str, content: str | None, error: type[Exception], message: str
) -> None:
    if content is not None:
        store.put_bytes(key, content.encode())
    spec = _spec(_inline(_line(1)), validation_data=DatasetSource(uri=store.uri_for(key)))
    with pytest.raises(error, match=message) as refused:
        intake.read(spec)
    assert refused.value.field == "spec.validation_data"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (_inline(*(_line(n) for n in range(11))), "11 lines; the limit is 10"),
        (DatasetSource(inline_jsonl="x" * 1025), "1025 bytes; the limit is 1024"),
        (DatasetSource(), "give the dataset as inline_jsonl or as a uri"),
    ],
)
def test_inline_data_past_the_limits_or_absent_is_refused(source: DatasetSource, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as refused:
        DatasetIntake(LIMITS, _no_store).read(_spec(source))
    assert refused.value.field == "spec.training_data"


def test_held_out_examples_also_in_training_are_counted_or_refused_when_the_spec_says_so() -> None:
    spec = _spec(_inline(_line(1), _line(2)), validation_data=_inline(_line(2)), test_data=_inline(_line(1), _line(3)))
    intake = DatasetIntake(LIMITS, _no_store)
    assert intake.read(spec).leaked_examples == 2
    with pytest.raises(InvalidArgument, match=r"1 examples also appear in the training data \(lines 1\)") as refused:
        intake.read(spec.model_copy(update={"refuse_leakage": True}))
    assert refused.value.field == "spec.validation_data"


def test_the_examples_are_written_where_the_worker_input_names_them_validation_marking_them_complete(
    tmp_path: Path,
) -> None:
    spec = _spec(_inline(_line(1), _line(2)), validation_data=_inline(_line(3)), test_data=_inline(_line(4)))
    data = DatasetIntake(LIMITS, _no_store).read(spec)
    work_dir = tmp_path / "job-1"
    assert not examples_ready(work_dir)
    files = write_examples(work_dir, data)
    assert files == ExampleFiles.in_folder(work_dir, with_test=True)
    assert examples_ready(work_dir)
    assert read_examples(files.train) == data.train and read_examples(files.validation) == data.validation
    assert files.test is not None and read_examples(files.test) == data.test
    assert ExampleFiles.in_folder(work_dir, with_test=False).test is None
