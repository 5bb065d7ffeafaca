"""A job's datasets on their way in: read from the request or the store, validated, cleaned, and written
to the job's folder for its worker.

The job service calls this before it stores a job (nothing is stored on bad data) and again to
write the examples once the job exists. Every limit is checked before the data is held whole:
a store object's size before it is read, the bytes and lines before they are parsed. Examples
are deduplicated within each dataset, and a held-out example that is also a training example is
counted (or refused, where the spec asks), since a score on it would measure memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loraplane.artifact import ArtifactRepository
from loraplane.captures import CaptureStore
from loraplane.errors import InvalidArgument, LoraplaneError
from loraplane.names import parse_adapter_spec
from loraplane.storage import ObjectStore
from loraplane.training import NEAR_COPY_WARNING, HeldOutSet
from trainer_svc import dataset, held_out
from trainer_svc.captured_data import CapturedExamples, captured_examples, mix_in_parent_data
from trainer_svc.dataset import PreferenceExample, SourcedExample
from trainer_svc.held_out import NearCopies
from trainer_svc.spec import DatasetSource, JobSpec

TRAIN_DATA = "train.jsonl"
VALIDATION_DATA = "validation.jsonl"
"""The names of a job's examples in its folder, and in the version it publishes (its data/)."""


@dataclass(frozen=True)
class DatasetLimits:
    """What a dataset may be, and where in the store it may come from."""

    max_bytes: int
    max_rows: int
    store_prefixes: tuple[str, ...]
    """Key prefixes a dataset URI may point under: adapters and the rest of the store stay out of reach."""


@dataclass(frozen=True)
class JobData:
    """A job's examples as accepted, and what cleaning them found."""

    train: list[SourcedExample]
    validation: list[SourcedExample]
    test: list[SourcedExample]
    duplicates_removed: int
    leaked_examples: int
    grouping: str | None = None
    """How the trainer's validation split found its groups, or why it drew every row at random; None when
    the caller gave the validation data."""
    near_copies: NearCopies | None = None
    """The caller's held-out prompts that near-copy training prompts; None when the caller gave none."""
    captured: CapturedExamples | None = None
    """What the captures the training data was made from gave, by rule; None for data the caller sent."""

    def metrics(self) -> dict[str, float]:
        metrics = {"duplicates_removed": float(self.duplicates_removed), "leaked_examples": float(self.leaked_examples)}
        if self.near_copies is not None:
            metrics["held_out_near_copy_share"] = self.near_copies.share
        if self.captured is not None:
            metrics.update(self.captured.metrics())
        return metrics

    def summary(self) -> str:
        test = f", {len(self.test)} test" if self.test else ""
        lines = [
            f"dataset valid: {len(self.train)} training, {len(self.validation)} validation{test} examples; "
            f"{self.duplicates_removed} duplicates removed, {self.leaked_examples} held-out examples also in training"
        ]
        if self.captured is not None:
            lines.insert(0, self.captured.summary())
        if self.grouping is not None:
            lines.append(self._split_summary(self.grouping))
        if self.near_copies is not None and self.near_copies.share >= NEAR_COPY_WARNING:
            copies = self.near_copies
            lines.append(
                f"warning: {copies.copies} of the {copies.prompts} held-out prompts scored share a template with "
                "training prompts or repeat most of one, so their scores say little about prompts phrased in a "
                "new way; hold out whole templates or entities (docs/training.md, Held-out sets)"
            )
        return "; ".join(lines)

    def _split_summary(self, grouping: str) -> str:
        unseen = sum(example.held_out is HeldOutSet.UNSEEN_GROUPS for example in self.validation)
        if not self.validation:
            return "nothing held out for validation"
        if not unseen:
            return f"validation rows drawn at random, so their scores are in-distribution ({grouping})"
        rows = len(self.validation) - unseen
        return f"validation: {unseen} examples of {grouping} not trained on, and {rows} rows drawn at random"


@dataclass(frozen=True)
class ExampleFiles:
    """Where in a job's folder its worker finds the examples: one JSON object per line."""

    train: Path
    validation: Path
    test: Path | None
    """None: the job has no test data (its task metrics are computed on the validation examples)."""

    @classmethod
    def in_folder(cls, work_dir: Path, *, with_test: bool) -> ExampleFiles:
        test = work_dir / "test.jsonl" if with_test else None
        return cls(train=work_dir / TRAIN_DATA, validation=work_dir / VALIDATION_DATA, test=test)


def write_examples(work_dir: Path, data: JobData) -> ExampleFiles:
    """Write the job's examples into `work_dir`, validation last: its presence means the rest is there."""
    work_dir.mkdir(parents=True, exist_ok=True)
    files = ExampleFiles.in_folder(work_dir, with_test=bool(data.test))
    dataset.write_examples(files.train, data.train)
    if files.test is not None:
        dataset.write_examples(files.test, data.test)
    dataset.write_examples(files.validation, data.validation)
    return files


def examples_ready(work_dir: Path) -> bool:
    """Whether `write_examples` finished in `work_dir` (a trainer that stopped while validating may not have)."""
    return ExampleFiles.in_folder(work_dir, with_test=False).validation.is_file()


class DatasetIntake:
    """Reads and validates a job's datasets: inline text, or objects under the dataset prefixes of the store
    `open_store` opens (only when a job names one, so a trainer whose jobs send their data inline needs
    no reachable store for it)."""

    def __init__(self, limits: DatasetLimits, open_store: Callable[[], ObjectStore]) -> None:
        """`open_store`: the trainer's store, where dataset URIs point, captures are and versions keep their
        data."""
        self._limits = limits
        self._open_store = open_store

    def read(self, spec: JobSpec) -> JobData:
        """The job's examples, deduplicated, with held-out examples that also appear in training counted (or
        refused, when the spec says so); InvalidArgument naming the spec field of the first mistake."""
        preferences = spec.method.learns_preferences
        validation: list[SourcedExample] = []
        test: list[SourcedExample] = []
        captured = self._from_captures(spec) if spec.training_data.captures is not None else None
        if captured is not None:
            train, removed = dataset.deduplicate(captured.train)
            if spec.test_data is None:
                test, repeats = dataset.deduplicate(captured.held_out)
                removed += repeats
        else:
            train, removed = self._parse(spec.training_data, "spec.training_data", preferences=preferences)
        if spec.validation_data is not None:
            validation, repeats = self._parse(spec.validation_data, "spec.validation_data", preferences=preferences)
            removed += repeats
        if spec.test_data is not None:
            test, repeats = self._parse(spec.test_data, "spec.test_data", preferences=preferences)
            removed += repeats
        split = None
        if spec.validation_data is None:  # split after deduplication: no example is on both sides
            split = held_out.split_validation(train, spec.training.validation_fraction, spec.training.seed)
            train = split.train
        validation, test, near = held_out.caller_held_out(train, validation, test)
        if split is not None:
            validation = split.validation
        grouping = split.grouping if split is not None else None
        leaks = sum(
            self._leaks(examples, train, field, spec.refuse_leakage)
            for field, examples in (("spec.validation_data", validation), ("spec.test_data", test))
        )
        return JobData(train, validation, test, removed, leaks, grouping, near if near.prompts else None, captured)

    @staticmethod
    def _leaks(examples: list[SourcedExample], train: list[SourcedExample], field: str, refuse: bool) -> int:
        """How many of the held-out `examples` also appear in training; InvalidArgument if any do and `refuse`."""
        lines = dataset.leaked(examples, train)
        if lines and refuse:
            shown = ", ".join(str(line) for line in lines[:10]) + (" ..." if len(lines) > 10 else "")
            raise InvalidArgument(
                f"{len(lines)} examples also appear in the training data (lines {shown}); remove them, or "
                "set spec.refuse_leakage to false to train anyway",
                field=field,
            )
        return len(lines)

    def _parse(self, source: DatasetSource, field: str, *, preferences: bool) -> tuple[list[SourcedExample], int]:
        """The source's examples without repeats, and how many repeats were removed."""
        text = self._read(source, field)
        return dataset.deduplicate(dataset.parse_jsonl(text, field=field, preferences=preferences))

    def _from_captures(self, spec: JobSpec) -> CapturedExamples:
        """The training and held-out examples the captures `spec` names make, with its parent's data mixed in;
        InvalidArgument when they make no training example."""
        source = spec.training_data.captures
        assert source is not None
        field = "spec.training_data.captures"
        store = self._open_store()
        try:
            captures = CaptureStore(store).read(source.adapter, source.since)
        except LoraplaneError as exc:
            raise type(exc)(exc.message, field=field) from None
        if len(captures) > self._limits.max_rows:
            raise InvalidArgument(
                f"{len(captures)} captures of {source.adapter!r}; the limit is {self._limits.max_rows}: set a later "
                "since",
                field=field,
            )
        preferences, seed = spec.method.learns_preferences, spec.training.seed
        made = captured_examples(captures, source, preferences=preferences, seed=seed)
        if not made.train:
            raise InvalidArgument(
                f"the {len(captures)} captures of {source.adapter!r} make no training example ({made.summary()}): "
                "send feedback with corrections, or wait for more",
                field=field,
            )
        if spec.parent is not None and not preferences:
            made = mix_in_parent_data(made, self._parent_data(store, spec.parent), source.parent_data_share, seed)
        return made

    @staticmethod
    def _parent_data(store: ObjectStore, parent: str) -> list[SourcedExample]:
        """The supervised training examples the version `parent` kept; none for a version that kept none."""
        repository = ArtifactRepository(store)
        manifest, _ = repository.resolve(parse_adapter_spec(parent, field="spec.parent"))
        if TRAIN_DATA not in manifest.data_files:
            return []
        lines = repository.read_data(manifest, TRAIN_DATA).decode().split("\n")
        examples = [SourcedExample.model_validate_json(line) for line in lines if line]
        return [example for example in examples if not isinstance(example.example, PreferenceExample)]

    def _read(self, source: DatasetSource, field: str) -> str:
        if source.captures is not None:
            raise InvalidArgument("captures can be a job's training data only", field=field)
        if source.inline_jsonl is not None:
            data = source.inline_jsonl.encode()
        elif source.uri:
            data = self._read_from_store(source.uri, field)
        else:
            raise InvalidArgument("give the dataset as inline_jsonl or as a uri in the trainer's store", field=field)
        self._check_size(len(data), field)
        rows = data.count(b"\n") + (not data.endswith(b"\n"))
        if rows > self._limits.max_rows:
            raise InvalidArgument(
                f"dataset has {rows} lines; the limit is {self._limits.max_rows}: split it",
                field=field,
            )
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"dataset is not UTF-8 (byte {exc.start})", field=field) from None

    def _read_from_store(self, uri: str, field: str) -> bytes:
        """The object `uri` names, once it is known to lie under a dataset prefix and to be small enough."""
        store = self._open_store()
        try:
            key = store.key_for_uri(uri)
            prefixes = self._limits.store_prefixes
            if not key.startswith(prefixes):
                raise InvalidArgument(
                    f"URI {uri!r} is outside the store's dataset folders ({', '.join(prefixes)}); upload the "
                    "dataset under one of them (LORAPLANE_TRAINER_DATASET_PREFIXES)"
                )
            self._check_size(store.size(key), field)  # before reading it into memory
            return store.get_bytes(key)
        except LoraplaneError as exc:
            raise type(exc)(exc.message, field=field) from None

    def _check_size(self, size: int, field: str) -> None:
        if size > self._limits.max_bytes:
            raise InvalidArgument(
                f"dataset is {size} bytes; the limit is {self._limits.max_bytes}: split it",
                field=field,
            )
