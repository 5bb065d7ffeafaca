import sqlite3
from pathlib import Path

import pytest

from loraplane.errors import InvalidArgument, NotFound, StartupError, Unavailable
from loraplane.training import JobState
from trainer_svc.job_store import SqliteJobStore
from trainer_svc.jobs import Job
from trainer_svc.spec import DatasetSource, JobSpec


def _job(job_id: str, adapter: str = "acme", request_id: str = "", owner: str = "") -> Job:
    spec = JobSpec(base_model="m", adapter_name=adapter, training_data=DatasetSource(inline_jsonl="{}"))
    return Job(id=job_id, request_id=request_id, spec=spec, owner=owner)


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "jobs.sqlite3")


def test_same_request_id_returns_the_first_job(store: SqliteJobStore) -> None:
    first, created = store.create(_job("j1", request_id="r1"), "created")
    again, created_again = store.create(_job("j2", request_id="r1"), "created")
    assert created and not created_again
    assert again.id == first.id == "j1"


def test_request_id_reused_with_another_spec_is_refused(store: SqliteJobStore) -> None:
    store.create(_job("j1", request_id="r1"), "created")
    with pytest.raises(InvalidArgument) as info:
        store.create(_job("j2", adapter="other", request_id="r1"), "created")
    assert info.value.field == "request_id"


def test_request_ids_are_per_owner(store: SqliteJobStore) -> None:
    alice, _ = store.create(_job("j1", request_id="r1", owner="alice"), "created")
    bob, created = store.create(_job("j2", request_id="r1", owner="bob"), "created")
    assert created and (alice.id, bob.id) == ("j1", "j2")  # bob's retry key never returns alice's job


def test_listing_and_counting_by_owner(store: SqliteJobStore) -> None:
    for i, owner in enumerate(["alice", "bob", "alice"]):
        store.create(_job(f"j{i}", owner=owner), "created")
    finished = store.get("j2")
    finished.state = JobState.SUCCEEDED
    store.update(finished, "done")
    alices, _ = store.list_jobs(owner="alice", state=None, adapter_name="", page_size=10, page_token="")
    assert [job.id for job in alices] == ["j2", "j0"]
    everyone, _ = store.list_jobs(owner=None, state=None, adapter_name="", page_size=10, page_token="")
    assert len(everyone) == 3
    assert (store.count_unfinished("alice"), store.count_unfinished("bob"), store.count_unfinished("eve")) == (1, 1, 0)


def test_a_store_from_before_owners_gains_the_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as old:  # the schema as it was, with one job in it
        old.executescript(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, request_id TEXT, "
            "adapter_name TEXT NOT NULL, state TEXT NOT NULL, body TEXT NOT NULL);"
            "CREATE UNIQUE INDEX jobs_request_id ON jobs(request_id) WHERE request_id != '';"
        )
        old.execute(
            "INSERT INTO jobs (id, request_id, adapter_name, state, body) VALUES (?, ?, ?, ?, ?)",
            ("j0", "r1", "acme", "QUEUED", _job("j0", request_id="r1").model_dump_json()),
        )
    store = SqliteJobStore(path)
    assert store.count_unfinished("") == 1
    _, created = store.create(_job("j1", request_id="r1", owner="alice"), "created")
    assert created  # the old global key no longer collides across owners


def test_events_are_sequenced_and_replayable(store: SqliteJobStore) -> None:
    job, _ = store.create(_job("j1"), "created")
    job.state = JobState.QUEUED
    store.update(job, "queued")
    job.state = JobState.RUNNING
    store.update(job, "running")
    events = store.events("j1", 0)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert [e.job.state for e in events] == [JobState.VALIDATING, JobState.QUEUED, JobState.RUNNING]
    assert [e.message for e in store.events("j1", 2)] == ["running"]


def test_unknown_job_is_not_found(store: SqliteJobStore) -> None:
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        store.events("nope", 0)


def test_list_pages_newest_first_and_filters(store: SqliteJobStore) -> None:
    for i in range(5):
        store.create(_job(f"j{i}", adapter="a" if i % 2 else "b"), "created")
    page, token = store.list_jobs(owner=None, state=None, adapter_name="", page_size=2, page_token="")
    assert [j.id for j in page] == ["j4", "j3"]
    page2, token2 = store.list_jobs(owner=None, state=None, adapter_name="", page_size=2, page_token=token)
    assert [j.id for j in page2] == ["j2", "j1"]
    page3, token3 = store.list_jobs(owner=None, state=None, adapter_name="", page_size=2, page_token=token2)
    assert ([j.id for j in page3], token3) == (["j0"], "")
    only_a, _ = store.list_jobs(owner=None, state=None, adapter_name="a", page_size=10, page_token="")
    assert [j.id for j in only_a] == ["j3", "j1"]
    queued, _ = store.list_jobs(owner=None, state=JobState.QUEUED, adapter_name="", page_size=10, page_token="")
    assert queued == []


def test_forged_page_token_is_invalid_argument(store: SqliteJobStore) -> None:
    with pytest.raises(InvalidArgument) as info:
        store.list_jobs(owner=None, state=None, adapter_name="", page_size=2, page_token="bm9wZQ==")
    assert info.value.field == "page_token"


def test_unfinished_survives_reopening(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job, _ = store.create(_job("j1"), "created")
    done, _ = store.create(_job("j2"), "created")
    done.state = JobState.SUCCEEDED
    store.update(done, "done")
    store.close()
    reopened = SqliteJobStore(tmp_path / "jobs.sqlite3")
    assert [j.id for j in reopened.unfinished()] == ["j1"]
    assert reopened.count_by_state()[JobState.SUCCEEDED] == 1


def test_a_locked_database_is_unavailable_and_nothing_is_half_written(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path, busy_timeout=0.2)
    store.create(_job("j1"), "created")
    other = sqlite3.connect(path, isolation_level=None)  # another process holding the write lock
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(Unavailable, match="database is locked"):
        store.create(_job("j2"), "created")
    other.execute("ROLLBACK")
    other.close()
    store.create(_job("j3"), "created")
    jobs, _ = store.list_jobs(owner=None, state=None, adapter_name="", page_size=10, page_token="")
    assert [job.id for job in jobs] == ["j3", "j1"]
    assert [event.sequence for event in store.events("j3", 0)] == [1]


def test_a_read_only_database_is_unavailable(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(_job("j1"), "created")
    # Fault injection through the store's own connection: what SQLite answers when the file or its
    # filesystem turns read-only under a running trainer (root ignores file modes, so chmod cannot).
    store._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(Unavailable, match="readonly database"):
        store.create(_job("j2"), "created")
    with pytest.raises(Unavailable):
        store.update(store.get("j1"), "changed")
    assert store.get("j1").state is JobState.VALIDATING and [e.sequence for e in store.events("j1", 0)] == [1]


def test_a_database_that_cannot_be_opened_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_text("plain text, not SQLite")
    with pytest.raises(StartupError, match="LORAPLANE_TRAINER_DB_PATH"):
        SqliteJobStore(tmp_path / "not-a-db")
