"""Capture: a sampled share of each adapter's answered requests, and the feedback on them, kept in the store.

Nothing here runs on a request's path but `offer_request` and `offer_feedback`, which put a record on a
bounded queue and return; when the queue is full the record is dropped and counted. A background task
(`run`) takes the records in batches, keeps those of adapters whose policy (loraplane.captures, read once
per TTL) turns capture on, draws the policy's share of requests, redacts every text, and writes one file
per adapter and kind. Feedback is kept for requests this replica captured (feedback reaches the replica
that answered, whose drift monitor knows the request). A write the store refuses drops its records,
counted and logged, and pauses capture for a while, so an unreachable store costs one failed write per
pause rather than one per batch; requests never wait for any of it. Retention runs in the same task.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from loraplane.captures import (
    Capture,
    CapturedFeedback,
    CapturedRequest,
    CapturedTurn,
    CaptureKind,
    CapturePolicy,
    CapturePolicyChange,
    CaptureStore,
)
from serving_svc.engines.base import Prompt
from serving_svc.metrics import ServingMetrics

log = logging.getLogger(__name__)

MAX_KNOWN_NAMES = 4096
"""Adapters whose capture policy a replica remembers, least recently read out first."""
POLL_SECONDS = 0.1
"""How often a batch being filled looks for more records."""
MAX_CAPTURED_IDS = 100_000
"""Captured request ids remembered for their feedback, oldest out first."""


@dataclass(frozen=True)
class CaptureLimits:
    queue_records: int = 10_000
    """Records waiting for the writer, at most; past it, records are dropped (`queue_full`)."""
    batch_records: int = 256
    flush_seconds: float = 5.0
    """A record waits at most this long before its batch is written."""
    pause_seconds: float = 60.0
    """After a write the store refused, records are dropped (`paused`) for this long."""
    policy_ttl_seconds: float = 30.0
    """How long a policy read from the store is used before it is read again: a change reaches every
    replica within it."""
    retention_check_seconds: float = 600.0


@dataclass(frozen=True)
class _Pending:
    kind: CaptureKind
    record: CapturedRequest | CapturedFeedback


def _turns(prompt: Prompt) -> str | list[CapturedTurn]:
    if isinstance(prompt, str):
        return prompt
    return [CapturedTurn(role=message.role, content=message.content) for message in prompt]


class CaptureWriter:
    def __init__(
        self,
        store: CaptureStore,
        redact: Callable[[str], str],
        metrics: ServingMetrics,
        limits: CaptureLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._redact = redact
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        self._draw = draw
        self._writer = uuid.uuid4().hex[:12]
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(limits.queue_records)
        self._batch: list[_Pending] = []
        """Records taken off the queue and not yet written: kept here so a stop writes them too."""
        self._policies: OrderedDict[str, tuple[CapturePolicy, float]] = OrderedDict()
        self._captured_ids: OrderedDict[str, None] = OrderedDict()
        self._paused_until = 0.0
        self._next_retention = 0.0
        self._lock = threading.Lock()
        self._generation = 0
        """Counts policy changes made through this replica: a store read begun before one is not cached."""
        self._writing: asyncio.Future[None] | None = None

    # -- on the request path: enqueue and return ---------------------------------------------------

    def offer_request(
        self, request_id: str, adapter: str, version: int, prompt: Prompt, answer: str, finish_reason: str
    ) -> None:
        record = CapturedRequest(
            request_id=request_id,
            adapter=adapter,
            version=version,
            at=datetime.now(UTC),
            prompt=_turns(prompt),
            answer=answer,
            finish_reason=finish_reason,
        )
        self._offer(_Pending("requests", record))

    def offer_feedback(self, request_id: str, adapter: str, version: int, score: float, correction: str | None) -> None:
        record = CapturedFeedback(
            request_id=request_id,
            adapter=adapter,
            version=version,
            at=datetime.now(UTC),
            score=score,
            correction=correction,
        )
        self._offer(_Pending("feedback", record))

    def _offer(self, pending: _Pending) -> None:
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self._metrics.captured(pending.record.adapter, pending.kind, "queue_full")

    # -- policies, read through a TTL cache ----------------------------------------------------------

    def policy(self, name: str, *, fresh: bool = False) -> CapturePolicy:
        """`name`'s capture policy as this replica applies it now, or as the store has it (`fresh`); blocking,
        so call it on a worker thread."""
        now = self._clock()
        with self._lock:
            cached = self._policies.get(name)
            generation = self._generation
        if not fresh and cached is not None and now - cached[1] < self._limits.policy_ttl_seconds:
            return cached[0]
        policy = self._store.policy(name)
        with self._lock:
            if self._generation == generation:  # else a change made here since: the read may predate it
                self._remember(name, policy, now)
        return policy

    def change_policy(self, name: str, change: CapturePolicyChange, *, actor: str) -> CapturePolicy:
        """Apply `change` to `name`'s stored policy, write it and apply it here at once (blocking)."""
        policy = change.apply(self._store.policy(name), actor=actor, at=datetime.now(UTC))
        self._store.set_policy(name, policy)
        with self._lock:
            self._generation += 1
            self._remember(name, policy, self._clock())
        return policy

    def captures(self, name: str, since: datetime | None) -> list[Capture]:
        """`name`'s captured requests since `since`, with their feedback (blocking)."""
        return self._store.read(name, since)

    def _remember(self, name: str, policy: CapturePolicy, at: float) -> None:
        """Cache `policy` (under `_lock`: the request path's threads and the writer's share the cache)."""
        self._policies[name] = (policy, at)
        self._policies.move_to_end(name)
        while len(self._policies) > MAX_KNOWN_NAMES:
            self._policies.popitem(last=False)

    # -- the background task ----------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until cancelled; then write what is left, once. A batch that fails to be written for
        any reason is dropped, counted and logged, and the writing goes on."""
        try:
            while True:
                await self._fill_batch()
                await self._write(self._take_batch())
                if self._clock() >= self._next_retention:
                    self._next_retention = self._clock() + self._limits.retention_check_seconds
                    await asyncio.to_thread(self._enforce_retention)
        except asyncio.CancelledError:
            await self.flush()
            raise

    async def flush(self) -> None:
        """Write every record waiting now, the batch being filled included, after the write in flight."""
        if self._writing is not None:
            await asyncio.wait([self._writing])
        while not self._queue.empty():
            self._batch.append(self._queue.get_nowait())
        await self._write(self._take_batch())

    async def _fill_batch(self) -> None:
        """Take records into the batch until it is full or its first record has waited `flush_seconds`."""
        self._batch.append(await self._queue.get())
        deadline = self._clock() + self._limits.flush_seconds
        while len(self._batch) < self._limits.batch_records and (left := deadline - self._clock()) > 0:
            if self._queue.empty():  # polled rather than a get under a timeout, which can lose the record it got
                await asyncio.sleep(min(left, POLL_SECONDS))
            else:
                self._batch.append(self._queue.get_nowait())

    def _take_batch(self) -> list[_Pending]:
        batch, self._batch = self._batch, []
        return batch

    async def _write(self, batch: list[_Pending]) -> None:
        """Write `batch` on a worker thread; a cancelled caller leaves the write to finish (flush waits for it)."""
        if not batch:
            return
        self._writing = asyncio.ensure_future(asyncio.to_thread(self._write_batch, batch))
        try:
            await asyncio.shield(self._writing)
        except Exception:  # a defect, not the store (counted in _write_batch): the writer must outlive it
            log.exception("writing %d captured records failed; they are dropped", len(batch))

    def _write_batch(self, batch: list[_Pending]) -> None:
        files: dict[tuple[str, CaptureKind], list[CapturedRequest | CapturedFeedback]] = {}
        for pending in batch:
            record = pending.record
            if self._clock() < self._paused_until:
                self._metrics.captured(record.adapter, pending.kind, "paused")
                continue
            try:
                policy = self.policy(record.adapter)
            except Exception as error:
                self._pause(f"reading the capture policy of {record.adapter!r} failed: {error}")
                self._metrics.captured(record.adapter, pending.kind, "store_error")
                continue
            if not self._kept(pending, policy):
                continue
            try:
                redacted = self._redacted(record)
            except Exception:  # the operator's hook failed on this text: never store it unredacted
                log.exception("redacting a captured record of %r failed; it is dropped", record.adapter)
                self._metrics.captured(record.adapter, pending.kind, "redaction_error")
                continue
            files.setdefault((record.adapter, pending.kind), []).append(redacted)
        for (adapter, kind), records in files.items():
            if self._clock() < self._paused_until:
                self._metrics.captured(adapter, kind, "paused", len(records))
                continue
            try:
                self._store.write(adapter, kind, records, at=datetime.now(UTC), writer=self._writer)
            except Exception as error:
                self._pause(f"writing {len(records)} captured {kind} of {adapter!r} failed: {error}")
                self._metrics.captured(adapter, kind, "store_error", len(records))
                continue
            self._metrics.captured(adapter, kind, "stored", len(records))
        if self._paused_until and self._clock() >= self._paused_until:
            self._paused_until = 0.0
            self._metrics.capture_paused(False)

    def _kept(self, pending: _Pending, policy: CapturePolicy) -> bool:
        """Whether the record is captured: a request drawn by the policy's share, feedback on one captured."""
        if not policy.enabled:
            return False
        request_id = pending.record.request_id
        if pending.kind == "feedback":
            return request_id in self._captured_ids
        if self._draw() >= policy.sample_share:
            return False
        self._captured_ids[request_id] = None
        while len(self._captured_ids) > MAX_CAPTURED_IDS:
            self._captured_ids.popitem(last=False)
        return True

    def _redacted(self, record: CapturedRequest | CapturedFeedback) -> CapturedRequest | CapturedFeedback:
        redact = self._redact
        if isinstance(record, CapturedFeedback):
            correction = redact(record.correction) if record.correction is not None else None
            return record.model_copy(update={"correction": correction})
        prompt = record.prompt
        redacted = (
            redact(prompt)
            if isinstance(prompt, str)
            else [turn.model_copy(update={"content": redact(turn.content)}) for turn in prompt]
        )
        return record.model_copy(update={"prompt": redacted, "answer": redact(record.answer)})

    def _pause(self, why: str) -> None:
        self._paused_until = self._clock() + self._limits.pause_seconds
        self._metrics.capture_paused(True)
        log.warning("%s; capture pauses for %.0f s", why, self._limits.pause_seconds)

    def _enforce_retention(self) -> None:
        """Apply every adapter's retention to its captures in the store (each replica does; deleting is
        idempotent, so several at once only repeat work). A failure waits for the next check."""
        now = datetime.now(UTC)
        try:
            names = self._store.adapters()
        except Exception:
            log.exception("listing the adapters with captures failed")
            return
        for name in names:
            try:
                deleted = self._store.enforce_retention(name, self.policy(name), now=now)
            except Exception:
                log.exception("enforcing the capture retention of %r failed", name)
                continue
            if deleted:
                log.info("capture retention deleted %d files of %r", deleted, name)
