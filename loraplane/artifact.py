"""The adapter artifact: layout, manifest schema, publish, resolve, list and fetch.

    adapters/{name}/v{N}/reservation.json       claims version N (create-only)
                         adapter_config.json
                         adapter_model.safetensors
                         profile.json           drift reference profile
                         data/train.jsonl       the job's examples, which a later job may mix back in
                         data/validation.jsonl
                         manifest.json          written last: its presence = version complete

Publishing first claims a version number with a create-only write, so two publishers of the
same name never share a version; files follow; the manifest comes last with the sha256 of
every file. Readers only ever see versions that have a manifest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from loraplane.names import AdapterSpec, validate_adapter_name
from loraplane.storage import ObjectStore
from loraplane.training import Method, PromptFormat

PROFILE_FILE = "profile.json"
"""The drift reference profile (loraplane.drift.Profile) of an adapter version."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DATA_FOLDER = "data/"
"""Where in a version the examples of its job are kept."""
ADAPTER_FILES = ("adapter_config.json", ADAPTER_WEIGHTS, PROFILE_FILE)
MANIFEST = "manifest.json"
RESERVATION = "reservation.json"
_MAX_VERSION_CLAIMS = 100


class BaseModelInfo(BaseModel):
    name: str
    fingerprint: str


class DatasetInfo(BaseModel):
    fingerprint: str
    train_examples: int
    validation_examples: int


GateCheckName = Literal["parent_task", "new_traffic", "facts"]


class GateCheck(BaseModel):
    """One comparison of a version with the version it continued (its parent)."""

    name: GateCheckName
    """parent_task: the parent's own held-out examples; new_traffic: the job's held-out examples (captured
    traffic, for a job made from captures); facts: the knowledge probe's facts the parent answered right."""
    parent: float | None = None
    candidate: float | None = None
    examples: int = 0
    passed: bool
    rule: str
    """What passing means, for people: `within 0.02 of the parent`, `above the parent`, `none lost`."""


class GateVerdict(BaseModel):
    """Whether a continued version may go to traffic: better than its parent where it was trained to be, no
    worse on the parent's task, no fact lost that the parent knew. A failed verdict keeps the version from
    being released by automation."""

    parent: str
    metric: str
    passed: bool
    checks: list[GateCheck]

    def describe(self) -> str:
        def figure(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        parts = [
            f"{check.name} {figure(check.parent)} -> {figure(check.candidate)} ({check.rule}: "
            f"{'pass' if check.passed else 'FAIL'})"
            for check in self.checks
        ]
        verdict = "passed" if self.passed else "failed"
        return f"gate against {self.parent} on {self.metric} {verdict}: " + "; ".join(parts)


class ManifestDraft(BaseModel):
    """The manifest fields the publisher knows before a version number and digests exist."""

    name: str
    base_model: BaseModelInfo
    method: Method
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]
    dataset: DatasetInfo
    job_id: str
    prompt_format: PromptFormat = Field(
        "raw", description="versions published before the field existed were all trained raw"
    )
    parent: str | None = Field(None, description="the version (name@vN) this one continued training from")
    gate: GateVerdict | None = Field(None, description="how this version compared with its parent")


class Manifest(ManifestDraft):
    """Everything a reader needs to trust and describe one adapter version."""

    schema_version: Literal[1] = 1
    version: int = Field(ge=1)
    created_at: datetime
    files: dict[str, str] = Field(description="file name -> sha256 hex digest")
    data_files: dict[str, str] = Field(
        default_factory=dict,
        description="the job's examples kept with the version, under data/ (file name -> sha256 hex digest), "
        "which a later job may mix back in",
    )

    @property
    def rank(self) -> int:
        return int(self.hyperparameters.get("rank", 0))

    @property
    def spec(self) -> AdapterSpec:
        return AdapterSpec(self.name, self.version)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def _version_prefix(name: str, version: int) -> str:
    return f"adapters/{name}/v{version}/"


class ArtifactRepository:
    """Adapter versions in an object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def version_uri(self, name: str, version: int) -> str:
        return self.store.uri_for(_version_prefix(name, version) + MANIFEST).rsplit("/", 1)[0]

    def _claimed_versions(self, name: str) -> list[int]:
        versions = []
        for child in self.store.list_children(f"adapters/{name}/"):
            if child.startswith("v") and child[1:].isdigit():
                versions.append(int(child[1:]))
        return sorted(versions)

    def versions(self, name: str) -> list[int]:
        """Complete versions of `name`, oldest first."""
        validate_adapter_name(name)
        return [v for v in self._claimed_versions(name) if self.store.exists(_version_prefix(name, v) + MANIFEST)]

    def _newest(self, name: str) -> tuple[Manifest, bytes] | None:
        """The newest complete version, reading manifests newest first and stopping at the first:
        one read per resolve however many versions exist (all but in-flight ones are complete)."""
        for version in reversed(self._claimed_versions(name)):
            try:
                return self.read_manifest(name, version)
            except NotFound:  # claimed, still being published (or abandoned)
                continue
        return None

    def publish(
        self, source_dir: Path, draft: ManifestDraft, data_files: Sequence[Path] = ()
    ) -> tuple[Manifest, bytes]:
        """Publish the adapter files in `source_dir` as the next version of `draft.name`, with the job's
        `data_files` under the version's data/."""
        validate_adapter_name(draft.name)
        missing = [f for f in ADAPTER_FILES if not (source_dir / f).is_file()]
        if missing:
            raise FailedPrecondition(f"cannot publish {draft.name}: {source_dir} lacks {', '.join(missing)}")
        version = self._claim_version(draft.name, draft.job_id)
        prefix = _version_prefix(draft.name, version)
        files = {name: self._upload(prefix + name, source_dir / name) for name in ADAPTER_FILES}
        data = {path.name: self._upload(f"{prefix}{DATA_FOLDER}{path.name}", path) for path in data_files}
        manifest = Manifest(
            **draft.model_dump(), version=version, created_at=datetime.now(UTC), files=files, data_files=data
        )
        manifest_bytes = manifest.model_dump_json(indent=2).encode()
        if not self.store.put_bytes_if_absent(prefix + MANIFEST, manifest_bytes):
            raise FailedPrecondition(f"{draft.name}@v{version} was completed by another publisher")
        return manifest, manifest_bytes

    def _upload(self, key: str, path: Path) -> str:
        """Put `path` at `key`; its sha256."""
        digest = sha256_file(path)
        self.store.put_file(key, path)
        return digest

    def read_data(self, manifest: Manifest, file_name: str) -> bytes:
        """One of the data files kept with a version, checked against its manifest."""
        expected = manifest.data_files.get(file_name)
        if expected is None:
            raise NotFound(f"{manifest.spec} keeps no data file {file_name!r} (it keeps {sorted(manifest.data_files)})")
        raw = self.store.get_bytes(f"{_version_prefix(manifest.name, manifest.version)}{DATA_FOLDER}{file_name}")
        if hashlib.sha256(raw).hexdigest() != expected:
            raise FailedPrecondition(f"{manifest.spec}: data file {file_name} does not match its manifest's sha256")
        return raw

    def _claim_version(self, name: str, job_id: str) -> int:
        claimed = self._claimed_versions(name)
        version = (claimed[-1] if claimed else 0) + 1
        for _ in range(_MAX_VERSION_CLAIMS):
            body = json.dumps({"job_id": job_id, "claimed_at": datetime.now(UTC).isoformat()}).encode()
            if self.store.put_bytes_if_absent(_version_prefix(name, version) + RESERVATION, body):
                return version
            version += 1
        raise FailedPrecondition(f"could not claim a version of {name} after {_MAX_VERSION_CLAIMS} tries")

    def read_manifest(self, name: str, version: int) -> tuple[Manifest, bytes]:
        raw = self.store.get_bytes(_version_prefix(name, version) + MANIFEST)
        return Manifest.model_validate_json(raw), raw

    def resolve(self, spec: AdapterSpec) -> tuple[Manifest, bytes]:
        """The manifest `spec` names: its pinned version, or the newest complete one."""
        validate_adapter_name(spec.name, field="adapter")
        if spec.version is not None:
            try:
                return self.read_manifest(spec.name, spec.version)
            except NotFound:
                raise NotFound(f"adapter {spec} does not exist (or is still being published)") from None
        newest = self._newest(spec.name)
        if newest is None:
            raise NotFound(f"adapter {spec.name!r} does not exist in {self.store.uri}")
        return newest

    def list_latest(self) -> list[tuple[Manifest, bytes]]:
        """The newest complete version of every adapter, by name, with its manifest's bytes."""
        names = [name for name in self.store.list_children("adapters/") if _is_legal_name(name)]
        return [newest for name in names if (newest := self._newest(name)) is not None]

    def fetch(self, manifest: Manifest, dest: Path) -> Path:
        """Download and verify a version into `dest` (created whole or not at all); reuse a verified copy."""
        if set(manifest.files) != set(ADAPTER_FILES):
            raise FailedPrecondition(
                f"{manifest.spec} lists files {sorted(manifest.files)}; an adapter has exactly {list(ADAPTER_FILES)} "
                "(safetensors weights only)"
            )
        if (dest / MANIFEST).is_file():
            return dest
        try:
            return self._fetch_into(manifest, dest)
        except OSError as exc:  # the local copy could not be written; nothing of it is left behind
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise ResourceExhausted(
                    f"no room to copy {manifest.spec} into {dest.parent} ({exc.strerror}); free disk space or "
                    "lower LORAPLANE_ADAPTER_CACHE_MAX_BYTES"
                ) from None
            raise Unavailable(f"cannot copy {manifest.spec} into {dest.parent} ({exc})") from None

    def _fetch_into(self, manifest: Manifest, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        try:
            prefix = _version_prefix(manifest.name, manifest.version)
            for file_name, expected in manifest.files.items():
                self.store.download_file(prefix + file_name, staging / file_name)
                actual = sha256_file(staging / file_name)
                if actual != expected:
                    raise FailedPrecondition(
                        f"{manifest.spec}: {file_name} has sha256 {actual}, manifest says {expected}"
                    )
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            try:
                os.rename(staging, dest)
            except OSError:
                if not (dest / MANIFEST).is_file():  # lost a race to a concurrent fetch: theirs is whole
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest


def _is_legal_name(name: str) -> bool:
    try:
        validate_adapter_name(name)
    except InvalidArgument:
        return False
    return True
