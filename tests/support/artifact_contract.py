"""The adapter artifact's promises (publish, resolve, fetch), as one suite for every store.

A test module subclasses `ArtifactRepositoryContract` and supplies a `store` fixture returning
an empty store. `write_fake_adapter` and `make_draft` build inputs for other tests too: the
repository checks files and digests, never their contents, so arbitrary bytes will do.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loraplane.artifact import (
    ADAPTER_FILES,
    MANIFEST,
    ArtifactRepository,
    BaseModelInfo,
    DatasetInfo,
    Manifest,
    ManifestDraft,
)
from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound
from loraplane.names import AdapterSpec
from loraplane.storage import ObjectStore


def write_fake_adapter(folder: Path, seed: str) -> dict[str, bytes]:
    """Write the adapter files into `folder` with contents derived from `seed`; return them."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        "adapter_config.json": json.dumps({"r": 8, "seed": seed}).encode(),
        "adapter_model.safetensors": hashlib.sha256(seed.encode()).digest() * 64,
        "profile.json": json.dumps({"prompt_length": [1, 2, 3], "seed": seed}).encode(),
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return contents


def make_draft(name: str, job_id: str = "job-1") -> ManifestDraft:
    return ManifestDraft(
        name=name,
        base_model=BaseModelInfo(name="smollm2-135m-instruct", fingerprint="sha256:" + "0" * 64),
        method="lora",
        hyperparameters={"rank": 8, "alpha": 16, "learning_rate": 2e-4},
        metrics={"train_loss": 0.5, "val_loss": 0.6},
        dataset=DatasetInfo(fingerprint="sha256:" + "1" * 64, train_examples=10, validation_examples=2),
        job_id=job_id,
    )


def _prefix(name: str, version: int) -> str:
    return f"adapters/{name}/v{version}/"


class ArtifactRepositoryContract:
    """Subclass with a `store` fixture returning an empty store."""

    @pytest.fixture
    def repo(self, store: ObjectStore) -> ArtifactRepository:
        return ArtifactRepository(store)

    def publish(self, repo: ArtifactRepository, tmp_path: Path, name: str, seed: str) -> Manifest:
        manifest, _ = repo.publish(tmp_path / f"src-{seed}", make_draft(name, job_id=f"job-{seed}"))
        return manifest

    def test_publish_writes_files_and_manifest(
        self, repo: ArtifactRepository, store: ObjectStore, tmp_path: Path
    ) -> None:
        contents = write_fake_adapter(tmp_path / "src", "a")
        manifest, raw = repo.publish(tmp_path / "src", make_draft("chat"))
        assert (manifest.name, manifest.version) == ("chat", 1)
        assert manifest.files == {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
        assert store.get_bytes(_prefix("chat", 1) + MANIFEST) == raw
        for name, data in contents.items():
            assert store.get_bytes(_prefix("chat", 1) + name) == data
        assert repo.version_uri("chat", 1) == store.uri_for(_prefix("chat", 1) + MANIFEST).rsplit("/", 1)[0]

    def test_the_jobs_data_is_kept_with_its_version_and_checked_when_read(
        self, repo: ArtifactRepository, store: ObjectStore, tmp_path: Path
    ) -> None:
        write_fake_adapter(tmp_path / "src", "a")
        data = tmp_path / "train.jsonl"
        data.write_text('{"line": 1, "example": {"prompt": "q", "completion": "a"}}\n')
        manifest, _ = repo.publish(tmp_path / "src", make_draft("chat"), [data])
        assert set(manifest.data_files) == {"train.jsonl"} and set(manifest.files) == set(ADAPTER_FILES)
        assert repo.read_data(manifest, "train.jsonl") == data.read_bytes()
        with pytest.raises(NotFound, match="keeps no data file 'validation.jsonl'"):
            repo.read_data(manifest, "validation.jsonl")
        store.put_bytes(_prefix("chat", 1) + "data/train.jsonl", b"other examples\n")
        with pytest.raises(FailedPrecondition, match="does not match"):
            repo.read_data(manifest, "train.jsonl")

    def test_resolve_newest_and_pinned(self, repo: ArtifactRepository, tmp_path: Path) -> None:
        for seed in ("a", "b", "c"):
            write_fake_adapter(tmp_path / f"src-{seed}", seed)
            self.publish(repo, tmp_path, "chat", seed)
        assert repo.versions("chat") == [1, 2, 3]
        newest, _ = repo.resolve(AdapterSpec("chat"))
        assert (newest.version, newest.job_id) == (3, "job-c")
        pinned, raw = repo.resolve(AdapterSpec("chat", 1))
        assert (pinned.version, pinned.job_id) == (1, "job-a")
        assert Manifest.model_validate_json(raw) == pinned

    def test_resolve_missing(self, repo: ArtifactRepository, tmp_path: Path) -> None:
        with pytest.raises(NotFound):
            repo.resolve(AdapterSpec("nobody"))
        write_fake_adapter(tmp_path / "src-a", "a")
        self.publish(repo, tmp_path, "chat", "a")
        with pytest.raises(NotFound):
            repo.resolve(AdapterSpec("chat", 2))

    def test_illegal_names_are_refused(self, repo: ArtifactRepository, tmp_path: Path) -> None:
        write_fake_adapter(tmp_path / "src", "a")
        for name in ("../etc", "Upper", "a/b", ""):
            with pytest.raises(InvalidArgument):
                repo.resolve(AdapterSpec(name))
            with pytest.raises(InvalidArgument):
                repo.publish(tmp_path / "src", make_draft(name))

    def test_publish_refuses_incomplete_folder(
        self, repo: ArtifactRepository, store: ObjectStore, tmp_path: Path
    ) -> None:
        write_fake_adapter(tmp_path / "src", "a")
        (tmp_path / "src" / "profile.json").unlink()
        with pytest.raises(FailedPrecondition, match="profile.json"):
            repo.publish(tmp_path / "src", make_draft("chat"))
        assert list(store.list_keys("adapters/")) == []

    def test_concurrent_publishers_get_distinct_versions(self, repo: ArtifactRepository, tmp_path: Path) -> None:
        publishers = 4
        seeds = [f"p{i}" for i in range(publishers)]
        for seed in seeds:
            write_fake_adapter(tmp_path / f"src-{seed}", seed)
        start = threading.Barrier(publishers)

        def publish(seed: str) -> Manifest:
            start.wait()
            return self.publish(repo, tmp_path, "shared", seed)

        with ThreadPoolExecutor(publishers) as pool:
            manifests = list(pool.map(publish, seeds))
        assert sorted(m.version for m in manifests) == list(range(1, publishers + 1))
        assert repo.versions("shared") == list(range(1, publishers + 1))
        for manifest in manifests:
            assert repo.resolve(manifest.spec)[0].job_id == manifest.job_id

    def test_fetch_downloads_and_verifies(self, repo: ArtifactRepository, tmp_path: Path) -> None:
        contents = write_fake_adapter(tmp_path / "src-a", "a")
        manifest = self.publish(repo, tmp_path, "chat", "a")
        dest = repo.fetch(manifest, tmp_path / "cache" / "chat" / "v1")
        for name, data in contents.items():
            assert (dest / name).read_bytes() == data
        assert Manifest.model_validate_json((dest / MANIFEST).read_text()) == manifest
        assert sorted(p.name for p in dest.parent.iterdir()) == ["v1"]

    def test_fetch_refuses_tampered_file(self, repo: ArtifactRepository, store: ObjectStore, tmp_path: Path) -> None:
        write_fake_adapter(tmp_path / "src-a", "a")
        manifest = self.publish(repo, tmp_path, "chat", "a")
        store.put_bytes(_prefix("chat", 1) + "adapter_model.safetensors", b"not the published weights")
        dest = tmp_path / "cache" / "chat" / "v1"
        with pytest.raises(FailedPrecondition, match="sha256"):
            repo.fetch(manifest, dest)
        assert list(dest.parent.iterdir()) == []  # neither the destination nor a staging folder is left

    def test_version_without_manifest_is_invisible(
        self, repo: ArtifactRepository, store: ObjectStore, tmp_path: Path
    ) -> None:
        contents = write_fake_adapter(tmp_path / "src-a", "a")
        self.publish(repo, tmp_path, "chat", "a")
        for name in ADAPTER_FILES:  # a publisher that died before writing its manifest
            store.put_bytes(_prefix("chat", 2) + name, contents[name])
        assert repo.versions("chat") == [1]
        assert repo.resolve(AdapterSpec("chat"))[0].version == 1
        with pytest.raises(NotFound):
            repo.resolve(AdapterSpec("chat", 2))
        assert [m.version for m, _ in repo.list_latest()] == [1]
        write_fake_adapter(tmp_path / "src-b", "b")
        assert self.publish(repo, tmp_path, "chat", "b").version == 3  # v2 stays claimed

    def test_list_latest(self, repo: ArtifactRepository, store: ObjectStore, tmp_path: Path) -> None:
        for name, seed in (("alpha", "a"), ("beta", "b"), ("alpha", "c")):
            write_fake_adapter(tmp_path / f"src-{seed}", seed)
            self.publish(repo, tmp_path, name, seed)
        store.put_bytes("adapters/Not_Legal/v1/manifest.json", b"{}")
        latest = sorted((m for m, _ in repo.list_latest()), key=lambda m: m.name)
        assert [(m.name, m.version) for m in latest] == [("alpha", 2), ("beta", 1)]
