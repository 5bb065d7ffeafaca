"""Admission on its own: the checks made before a job's data is read, each with the field or setting it
names. The job store is the real SQLite one; the base models are folders in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.artifact import ArtifactRepository
from loraplane.auth import ANONYMOUS, Caller, Role
from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from loraplane.storage import FileStore
from trainer_svc.admission import JobAdmission
from trainer_svc.executors.config import ExecutorCapabilities
from trainer_svc.job_store import SqliteJobStore
from trainer_svc.jobs import Job
from trainer_svc.parent import ParentVersions
from trainer_svc.spec import JobSpec, WorkerResources

ALICE = Caller(name="alice", roles=frozenset({Role.TRAIN}))


def _spec(**fields: object) -> JobSpec:
    values: dict[str, object] = {"base_model": "", "adapter_name": "support-bot", "training_data": {"uri": "x"}}
    return JobSpec.model_validate({**values, **fields})


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "jobs.sqlite3")


@pytest.fixture
def admission(tmp_path: Path, store: SqliteJobStore) -> JobAdmission:
    offered = {"tiny": tmp_path / "tiny", "unprepared": tmp_path / "unprepared"}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")

    def base_model_path(name: str) -> Path:
        if name and name not in offered:
            raise InvalidArgument(f"base model {name!r} is not offered here", field="spec.base_model")
        return offered[name or "tiny"]

    return JobAdmission(
        store,
        ExecutorCapabilities(per_job_resources=False, multi_node=False),
        base_model_path=base_model_path,
        default_base_model="tiny",
        max_unfinished_per_caller=2,
        parents=ParentVersions(lambda: ArtifactRepository(FileStore(tmp_path / "store")), base_model_path),
    )


async def test_an_admitted_spec_names_its_base_model(admission: JobAdmission) -> None:
    assert (await admission.admit(_spec(), ANONYMOUS)).base_model == "tiny"
    assert (await admission.admit(_spec(base_model="tiny"), ANONYMOUS)).base_model == "tiny"


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"adapter_name": "Not A Name"}, InvalidArgument, "adapter"),
        ({"resources": WorkerResources(gpus=1)}, InvalidArgument, "cannot ask for resources"),
        ({"base_model": "llama"}, InvalidArgument, "not offered"),
        ({"base_model": "unprepared"}, FailedPrecondition, "loraplane prepare-model"),
        ({"parent": "nobody@v1"}, NotFound, "does not exist"),
    ],
)
async def test_a_spec_the_trainer_cannot_take_is_refused(
    admission: JobAdmission, fields: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await admission.admit(_spec(**fields), ANONYMOUS)


async def test_a_caller_at_its_limit_of_unfinished_jobs_is_refused_the_anonymous_caller_never(
    admission: JobAdmission, store: SqliteJobStore
) -> None:
    for n in range(2):
        store.create(Job(id=f"job-{n}", owner="alice", spec=_spec()), "created")
    with pytest.raises(ResourceExhausted, match="LORAPLANE_TRAINER_MAX_UNFINISHED_JOBS_PER_CALLER"):
        await admission.admit(_spec(), ALICE)
    for n in range(2):
        store.create(Job(id=f"job-anon-{n}", owner="", spec=_spec()), "created")
    await admission.admit(_spec(), ANONYMOUS)


async def test_training_on_captured_traffic_needs_the_admin_role(admission: JobAdmission) -> None:
    captures = {"captures": {"adapter": "support-bot"}}
    with pytest.raises(PermissionDenied, match="needs the admin role") as info:
        await admission.admit(_spec(training_data=captures), ALICE)
    assert info.value.field == "spec.training_data.captures"
    admin = Caller(name="ops", roles=frozenset({Role.ADMIN}))
    assert (await admission.admit(_spec(training_data=captures), admin)).training_data.captures is not None
