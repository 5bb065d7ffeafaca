"""Durable job state: an interface, and SQLite behind it (one trainer replica with a volume).

Every change to a job is stored together with the event that describes it, in one
transaction, so WatchJob can replay a job's history from any sequence number after a restart.
"""

from __future__ import annotations

import abc
import base64
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loraplane.errors import InvalidArgument, NotFound, StartupError, Unavailable
from loraplane.training import JobState
from trainer_svc.jobs import Job, JobEvent, utcnow

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT,
    adapter_name TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
"""
_OWNER_SCHEMA = """
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_request_id ON jobs(owner, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, state);
"""
"""Request ids are idempotency keys per owner: one caller's key never returns another's job."""


class JobStore(abc.ABC):
    @abc.abstractmethod
    def create(self, job: Job, message: str) -> tuple[Job, bool]:
        """Store a new job and its first event; for a request_id its owner used before, return that job and
        False."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job: ...

    @abc.abstractmethod
    def update(self, job: Job, message: str) -> JobEvent:
        """Store the job's new state and the event describing the change."""

    @abc.abstractmethod
    def list_jobs(
        self, *, owner: str | None, state: JobState | None, adapter_name: str, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        """Jobs of `owner` (None = every owner's) newest first, and the token of the next page ('' on the last)."""

    @abc.abstractmethod
    def count_unfinished(self, owner: str) -> int:
        """How many of `owner`'s jobs are not in a terminal state."""

    @abc.abstractmethod
    def events(self, job_id: str, after_sequence: int) -> list[JobEvent]: ...

    @abc.abstractmethod
    def unfinished(self) -> list[Job]:
        """Jobs not in a terminal state, oldest first: what a restarted trainer must pick up."""

    @abc.abstractmethod
    def count_by_state(self) -> dict[JobState, int]: ...


class SqliteJobStore(JobStore):
    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        """Open (creating if needed) the database; StartupError naming the setting when it cannot be used."""
        self._path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._add_owners()
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open the job store {path} ({exc}); check LORAPLANE_TRAINER_DB_PATH") from None
        self._lock = threading.Lock()

    def _add_owners(self) -> None:
        """A store from before jobs had owners: add the column (its jobs are the no-auth caller's) and move
        idempotency keys from global to per owner."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        if "owner" not in columns:
            self._conn.execute("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        self._conn.execute("DROP INDEX IF EXISTS jobs_request_id")
        self._conn.executescript(_OWNER_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _unavailable_on_database_errors(self) -> Iterator[None]:
        """A database that is locked past the busy timeout, read-only, full or failing is UNAVAILABLE (retry
        later), not a crash: the transaction it interrupted left nothing behind."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            log.error("job store %s: %s", self._path, exc)
            raise Unavailable(f"the job store cannot be used right now ({exc}); retry shortly") from None

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock, self._unavailable_on_database_errors():
            yield

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._unavailable_on_database_errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # a failed COMMIT can leave it open
                    self._conn.execute("ROLLBACK")
                raise

    def create(self, job: Job, message: str) -> tuple[Job, bool]:
        with self._transaction() as conn:
            if job.request_id:
                row = conn.execute(
                    "SELECT body FROM jobs WHERE owner = ? AND request_id = ?", (job.owner, job.request_id)
                ).fetchone()
                if row:
                    existing = Job.model_validate_json(row[0])
                    if existing.spec != job.spec:
                        raise InvalidArgument(
                            f"request_id {job.request_id!r} was used for job {existing.id} with a different "
                            "spec; use a new request_id for a new job",
                            field="request_id",
                        )
                    return existing, False
            conn.execute(
                "INSERT INTO jobs (id, request_id, adapter_name, state, body, owner) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.request_id, job.spec.adapter_name, job.state.value, job.model_dump_json(), job.owner),
            )
            self._append_event(conn, job, message)
        return job, True

    def get(self, job_id: str) -> Job:
        with self._reading():
            row = self._conn.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist", field="job_id")
        return Job.model_validate_json(row[0])

    def update(self, job: Job, message: str) -> JobEvent:
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET state = ?, body = ? WHERE id = ?", (job.state.value, job.model_dump_json(), job.id)
            )
            if cursor.rowcount != 1:
                raise NotFound(f"job {job.id!r} does not exist", field="job_id")
            return self._append_event(conn, job, message)

    @staticmethod
    def _append_event(conn: sqlite3.Connection, job: Job, message: str) -> JobEvent:
        (last,) = conn.execute(
            "SELECT COALESCE(MAX(sequence), 0) FROM job_events WHERE job_id = ?", (job.id,)
        ).fetchone()
        event = JobEvent(job_id=job.id, sequence=last + 1, time=utcnow(), message=message, job=job)
        conn.execute(
            "INSERT INTO job_events (job_id, sequence, body) VALUES (?, ?, ?)",
            (job.id, event.sequence, event.model_dump_json()),
        )
        return event

    def list_jobs(
        self, *, owner: str | None, state: JobState | None, adapter_name: str, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        clauses: list[str] = []
        params: list[object] = []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if page_token:
            clauses.append("seq < ?")
            params.append(_decode_page_token(page_token))
        if state is not None:
            clauses.append("state = ?")
            params.append(state.value)
        if adapter_name:
            clauses.append("adapter_name = ?")
            params.append(adapter_name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._reading():
            rows = self._conn.execute(
                f"SELECT seq, body FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*params, page_size + 1)
            ).fetchall()
        jobs = [Job.model_validate_json(body) for _, body in rows[:page_size]]
        next_token = _encode_page_token(rows[page_size - 1][0]) if len(rows) > page_size else ""
        return jobs, next_token

    def events(self, job_id: str, after_sequence: int) -> list[JobEvent]:
        self.get(job_id)
        with self._reading():
            rows = self._conn.execute(
                "SELECT body FROM job_events WHERE job_id = ? AND sequence > ? ORDER BY sequence",
                (job_id, after_sequence),
            ).fetchall()
        return [JobEvent.model_validate_json(body) for (body,) in rows]

    def count_unfinished(self, owner: str) -> int:
        live = [s.value for s in JobState if not s.terminal]
        with self._reading():
            (count,) = self._conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN ({','.join('?' * len(live))})", (owner, *live)
            ).fetchone()
        return int(count)

    def unfinished(self) -> list[Job]:
        live = [s.value for s in JobState if not s.terminal]
        with self._reading():
            rows = self._conn.execute(
                f"SELECT body FROM jobs WHERE state IN ({','.join('?' * len(live))}) ORDER BY seq", live
            ).fetchall()
        return [Job.model_validate_json(body) for (body,) in rows]

    def count_by_state(self) -> dict[JobState, int]:
        with self._reading():
            rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(JobState, 0)
        counts.update({JobState(state): n for state, n in rows})
        return counts


def _encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def _decode_page_token(token: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "seq":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this server issued", field="page_token") from None
