"""A job that asks for it starts its published version as the adapter's release candidate, in a real file
store; a release that cannot take the version leaves it published and says why."""

from __future__ import annotations

from pathlib import Path

from loraplane.artifact import ArtifactRepository
from loraplane.releases import ReleaseAction, ReleaseLog, ReleaseMode, ReleaseState, TrialPlan
from loraplane.storage import FileStore
from tests.support.fake_engine import publish_fake_adapter
from trainer_svc.progress import PublishedAdapter
from trainer_svc.spec import DatasetSource, JobSpec
from trainer_svc.worker.publish import start_trial
from trainer_svc.worker_input import WorkerInput


def _published(tmp_path: Path, versions: int) -> tuple[WorkerInput, PublishedAdapter, ReleaseLog]:
    repository = ArtifactRepository(FileStore(tmp_path / "store"))
    for _ in range(versions):
        manifest = publish_fake_adapter(repository, tmp_path / "sources", "acme")
    worker_input = WorkerInput(
        job_id="job-7",
        spec=JobSpec(base_model="tiny", adapter_name="acme", training_data=DatasetSource(uri="file:///x")),
        base_model_path=tmp_path,
        train_file=tmp_path / "train.jsonl",
        validation_file=tmp_path / "validation.jsonl",
        store_uri=repository.store.uri,
        work_dir=tmp_path / "work",
    )
    adapter = PublishedAdapter(
        name="acme", version=manifest.version, uri=repository.version_uri("acme", manifest.version), manifest_sha256=""
    )
    return worker_input, adapter, ReleaseLog(repository)


def test_the_published_version_becomes_the_candidate_with_the_job_as_its_actor(tmp_path: Path) -> None:
    worker_input, adapter, releases = _published(tmp_path, versions=3)
    message = start_trial(adapter, TrialPlan(canary_share=0.2), worker_input)
    assert message == "release of acme: stable v2, candidate v3 (canary 20%)"
    record = releases.current("acme")
    assert record is not None and record.action is ReleaseAction.START
    assert record.state == ReleaseState(stable=2, candidate=3, mode=ReleaseMode.CANARY, canary_share=0.2, trial=1)
    assert record.actor == "job job-7" and record.reason == "published by job job-7"


def test_a_release_that_cannot_take_the_version_leaves_it_published_with_a_warning(tmp_path: Path) -> None:
    worker_input, first, releases = _published(tmp_path, versions=1)
    message = start_trial(first, TrialPlan(), worker_input)
    assert message.startswith("warning: acme@v1 is published but not on trial: adapter 'acme' has no version besides")
    assert releases.current("acme") is None
