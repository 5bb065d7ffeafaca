"""A job continued from a published version: the version pinned, its LoRA shape and prompt format kept, and
what does not fit it refused naming the field. The versions are published in a folder store; the base
model is a folder with the files its fingerprint reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplane.artifact import ArtifactRepository
from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound
from loraplane.fingerprint import base_model_fingerprint
from loraplane.storage import FileStore
from loraplane.training import Method
from tests.support.fake_engine import publish_fake_adapter
from trainer_svc.parent import ParentVersions
from trainer_svc.spec import JobSpec, LoraParameters


def _spec(**fields: object) -> JobSpec:
    values: dict[str, object] = {"base_model": "tiny", "adapter_name": "acme", "training_data": {"uri": "x"}}
    return JobSpec.model_validate({**values, **fields})


@pytest.fixture
def repository(tmp_path: Path) -> ArtifactRepository:
    return ArtifactRepository(FileStore(tmp_path / "store"))


@pytest.fixture
def parents(tmp_path: Path, repository: ArtifactRepository) -> ParentVersions:
    base = tmp_path / "tiny"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (base / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    fingerprint = base_model_fingerprint(base)
    publish_fake_adapter(repository, tmp_path / "src", "acme", rank=8, fingerprint=fingerprint)
    publish_fake_adapter(repository, tmp_path / "src", "acme", rank=4, fingerprint=fingerprint)
    publish_fake_adapter(repository, tmp_path / "src", "dora", method="dora", fingerprint=fingerprint)
    publish_fake_adapter(repository, tmp_path / "src", "elsewhere")  # on another base model
    return ParentVersions(lambda: repository, lambda name: base)


def test_a_job_without_a_parent_is_left_as_it_is(parents: ParentVersions) -> None:
    spec = _spec()
    assert parents.pin(spec) is spec


def test_the_parent_is_pinned_and_its_shape_and_format_kept(parents: ParentVersions) -> None:
    newest = parents.pin(_spec(parent="acme"))
    assert newest.parent == "acme@v2" and newest.lora == LoraParameters(rank=4, alpha=8)
    pinned = parents.pin(_spec(parent="acme@v1", method=Method.QLORA))
    assert (pinned.parent, pinned.lora.rank, pinned.prompt_format) == ("acme@v1", 8, "raw")
    assert parents.pin(_spec(parent="dora@v1", method=Method.DORA)).parent == "dora@v1"


@pytest.mark.parametrize(
    ("fields", "error", "field", "message"),
    [
        ({"parent": "acme@v9"}, NotFound, "spec.parent", "does not exist"),
        ({"parent": "Acme"}, InvalidArgument, "spec.parent", "adapter name"),
        ({"parent": "elsewhere@v1"}, FailedPrecondition, "spec.parent", "fingerprints differ"),
        ({"parent": "dora@v1"}, InvalidArgument, "spec.method", "use method dora"),
        ({"parent": "acme@v1", "method": Method.DORA}, InvalidArgument, "spec.method", "lora, qlora or dpo"),
        ({"parent": "acme@v1", "lora": {"rank": 32}}, InvalidArgument, "spec.lora", "keeps its LoRA shape"),
        ({"parent": "acme@v1", "prompt_format": "chat"}, InvalidArgument, "spec.prompt_format", "raw format"),
    ],
    ids=["unknown", "malformed", "other-base", "dora-parent", "dora-job", "own-shape", "other-format"],
)
def test_what_does_not_fit_the_parent_is_refused_naming_its_field(
    parents: ParentVersions, fields: dict[str, object], error: type[Exception], field: str, message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        parents.pin(_spec(**fields))
    assert info.value.field == field  # type: ignore[attr-defined]
