"""Captured traffic: a sampled share of an adapter's requests and the feedback on them, kept in the store.

    captures/{name}/policy.json                                   whether and how much to capture
    captures/{name}/requests/{YYYY-MM-DD}/{time}-{writer}.jsonl   requests answered, redacted
    captures/{name}/feedback/{YYYY-MM-DD}/{time}-{writer}.jsonl   scores and corrections, by request id

Capture is off for every adapter until an admin turns it on (it stores what users wrote). Serving
writes each file once, whole, from a background writer (serving_svc.capture); a file is never
rewritten, so replicas never contend, and feedback is a record of its own joined to its request by id
when the captures are read (`CaptureStore.read`) rather than written into the request's file. The day
in every key is what retention deletes by, oldest first, past the policy's days or bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loraplane.errors import NotFound
from loraplane.names import validate_adapter_name
from loraplane.policies import changed_policy, read_policy, write_policy
from loraplane.storage import ObjectStore

CaptureKind = Literal["requests", "feedback"]
DEFAULT_RETENTION_DAYS = 30
DEFAULT_RETENTION_BYTES = 1 << 30


def in_utc(moment: datetime | None) -> datetime | None:
    """`moment` with a time zone: a time given without one is read as UTC (captures are kept in UTC)."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class CapturePolicy(BaseModel):
    """Whether an adapter's requests are captured, which share of them, and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    sample_share: float = Field(1.0, gt=0.0, le=1.0)
    """The share of the adapter's requests captured (each drawn at random); feedback on a captured
    request is always kept."""
    retention_days: int = Field(DEFAULT_RETENTION_DAYS, ge=1)
    """Captures older than this many days (by the day they were written) are deleted."""
    retention_bytes: int = Field(DEFAULT_RETENTION_BYTES, ge=1)
    """Past this many bytes of captures, the oldest are deleted."""
    actor: str = ""
    """Who set the policy (a token's name); empty while nobody has."""
    at: datetime | None = None


class CapturePolicyChange(BaseModel):
    """A change an admin asks for: capture on or off, and any of the policy's figures (None keeps them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool
    sample_share: float | None = None
    retention_days: int | None = None
    retention_bytes: int | None = None

    def apply(self, current: CapturePolicy, *, actor: str, at: datetime) -> CapturePolicy:
        """The policy after this change; InvalidArgument naming the field whose value is out of range."""
        return changed_policy(current, self, actor=actor, at=at)


class CapturedTurn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    content: str


class _CapturedRecord(BaseModel):
    """What every captured record says: which request, answered by which version, when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    adapter: str
    version: int = Field(ge=1)
    at: datetime


class CapturedRequest(_CapturedRecord):
    """One answered request, as the caller sent it (redacted) and as the adapter answered it."""

    prompt: str | list[CapturedTurn]
    """Text sent as is, or chat turns (rendered with the chat template the adapter was trained with)."""
    answer: str
    finish_reason: str


class CapturedFeedback(_CapturedRecord):
    """A caller's verdict on an answer (`at`: when it came): its score in [0, 1] and, where given, the answer
    it should have been."""

    score: float = Field(ge=0.0, le=1.0)
    correction: str | None = None


class Capture(BaseModel):
    """A captured request with the newest feedback on it, if any."""

    model_config = ConfigDict(frozen=True)

    request: CapturedRequest
    feedback: CapturedFeedback | None = None


def _adapter_prefix(name: str) -> str:
    return f"captures/{name}/"


def _policy_key(name: str) -> str:
    return f"{_adapter_prefix(name)}policy.json"


def _day_of(key: str) -> date | None:
    """The day in a capture file's key; None for a key that is not one."""
    parts = key.rsplit("/", 3)
    if len(parts) != 4 or parts[1] not in ("requests", "feedback") or not parts[3].endswith(".jsonl"):
        return None
    try:
        return date.fromisoformat(parts[2])
    except ValueError:
        return None


class CaptureStore:
    """The captures of every adapter in one store: policies, the files serving writes, and reading them back."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def policy(self, name: str) -> CapturePolicy:
        """`name`'s capture policy; off when nobody has set one."""
        validate_adapter_name(name, field="adapter")
        return read_policy(self._store, _policy_key(name), CapturePolicy)

    def set_policy(self, name: str, policy: CapturePolicy) -> None:
        validate_adapter_name(name, field="adapter")
        write_policy(self._store, _policy_key(name), policy)

    def adapters(self) -> list[str]:
        """The adapters with a capture policy or captures in the store."""
        return self._store.list_children("captures/")

    def write(self, name: str, kind: CaptureKind, records: Iterable[BaseModel], *, at: datetime, writer: str) -> str:
        """Write `records` as one new file of `name`'s `kind` captures, dated `at`; its key."""
        key = f"{_adapter_prefix(name)}{kind}/{at.date().isoformat()}/{at:%H%M%S%f}-{writer}.jsonl"
        self._store.put_bytes(key, b"".join(record.model_dump_json().encode() + b"\n" for record in records))
        return key

    def files(self, name: str) -> list[tuple[date, str]]:
        """Every capture file of `name` with its day, oldest first (requests before feedback on one day)."""
        validate_adapter_name(name, field="adapter")
        dated = [(day, key) for key in self._store.list_keys(_adapter_prefix(name)) if (day := _day_of(key))]
        return sorted(dated, key=lambda item: (item[0], item[1].rsplit("/", 1)[-1]))

    def read(self, name: str, since: datetime | None = None) -> list[Capture]:
        """`name`'s captured requests answered at or after `since` (every one kept, when None), oldest first,
        each with the newest feedback on it; feedback whose request was not captured is left out."""
        requests: dict[str, CapturedRequest] = {}
        feedback: dict[str, CapturedFeedback] = {}
        first_day = since.astimezone(UTC).date() if since else None
        for day, key in self.files(name):
            if first_day is not None and day < first_day:
                continue
            kind = key.rsplit("/", 3)[1]
            for line in self._lines(key):
                if kind == "requests":
                    request = CapturedRequest.model_validate_json(line)
                    if since is None or request.at >= since:
                        requests[request.request_id] = request
                else:
                    verdict = CapturedFeedback.model_validate_json(line)
                    newest = feedback.get(verdict.request_id)
                    if newest is None or verdict.at >= newest.at:
                        feedback[verdict.request_id] = verdict
        ordered = sorted(requests.values(), key=lambda request: request.at)
        return [Capture(request=request, feedback=feedback.get(request.request_id)) for request in ordered]

    def _lines(self, key: str) -> Iterator[bytes]:
        try:
            raw = self._store.get_bytes(key)
        except NotFound:  # deleted by retention between listing and reading
            return
        yield from (line for line in raw.split(b"\n") if line.strip())

    def _size(self, key: str) -> int:
        try:
            return self._store.size(key)
        except NotFound:  # another replica's retention deleted it a moment ago
            return 0

    def enforce_retention(self, name: str, policy: CapturePolicy, *, now: datetime) -> int:
        """Delete `name`'s captures older than the policy's days, then the oldest past its bytes; how many
        files were deleted."""
        files = self.files(name)
        oldest_kept = (now.astimezone(UTC) - timedelta(days=policy.retention_days)).date()
        expired = [key for day, key in files if day < oldest_kept]
        kept = [key for day, key in files if day >= oldest_kept]
        total = sum(sizes := [self._size(key) for key in kept])
        for key, size in zip(kept, sizes, strict=True):
            if total <= policy.retention_bytes:
                break
            expired.append(key)
            total -= size
        for key in expired:
            self._store.delete(key)
        return len(expired)
