"""The capture writer: off by default, a sampled share written redacted and off the request path, feedback
kept for captured requests, and a store that fails costing dropped records but never a request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplane.captures import CapturePolicy, CaptureStore
from loraplane.redaction import Redactor
from loraplane.storage import FileStore
from serving_svc.capture import CaptureLimits, CaptureWriter
from serving_svc.engines.base import ChatMessage
from serving_svc.metrics import ServingMetrics
from tests.support.outage_store import FakeOutageStore


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _draws(*values: float) -> Iterator[float]:
    yield from values


def _captured(metrics: ServingMetrics, kind: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "loraplane_serving_captures_total", {"adapter": "acme", "kind": kind, "outcome": outcome}
    )
    return value or 0.0


def _writer(
    store: FakeOutageStore, metrics: ServingMetrics, clock: ManualClock, *draws: float, **limits: float
) -> CaptureWriter:
    drawn = _draws(*draws)
    metrics.adapter_label("acme")  # the adapter has answered requests, so it has a label of its own
    return CaptureWriter(
        CaptureStore(store),
        Redactor(),
        metrics,
        CaptureLimits(policy_ttl_seconds=0.0, pause_seconds=60.0, **limits),  # type: ignore[arg-type]
        clock=clock,
        draw=lambda: next(drawn),
    )


@pytest.fixture
def store(tmp_path: Path) -> FakeOutageStore:
    return FakeOutageStore(FileStore(tmp_path / "store"))


def _turn_on(store: FakeOutageStore, share: float = 1.0) -> None:
    CaptureStore(store).set_policy("acme", CapturePolicy(enabled=True, sample_share=share))


async def test_nothing_is_written_while_capture_is_off(store: FakeOutageStore) -> None:
    metrics = ServingMetrics(8)
    writer = _writer(store, metrics, ManualClock())
    writer.offer_request("r1", "acme", 1, "my mail is a@b.co", "ok", "stop")
    writer.offer_feedback("r1", "acme", 1, 0.0, "better")
    await writer.flush()
    assert list(store.list_keys("")) == []
    assert _captured(metrics, "requests", "stored") == 0


async def test_a_share_is_captured_redacted_with_the_feedback_on_captured_requests_only(store: FakeOutageStore) -> None:
    _turn_on(store, share=0.5)
    metrics = ServingMetrics(8)
    writer = _writer(store, metrics, ManualClock(), 0.1, 0.9)  # the first drawn under the share, the second not
    chat = [ChatMessage("system", "be brief"), ChatMessage("user", "I am jo@example.com, call 555-123-4567")]
    writer.offer_request("r1", "acme", 2, chat, "Hello jo@example.com", "stop")
    writer.offer_request("r2", "acme", 2, "plain text", "answer", "length")
    writer.offer_feedback("r1", "acme", 2, 0.0, "Hi, write to jo@example.com")
    writer.offer_feedback("r2", "acme", 2, 1.0, None)
    await writer.flush()
    raw = b"".join(store.get_bytes(key) for key in store.list_keys("captures/acme/"))
    assert b"jo@example.com" not in raw and b"555-123-4567" not in raw, "redacted before it reached the store"
    (capture,) = CaptureStore(store).read("acme")
    assert capture.request.request_id == "r1" and capture.request.version == 2
    assert [turn.content for turn in capture.request.prompt] == ["be brief", "I am [email], call [phone]"]  # type: ignore[union-attr]
    assert capture.request.answer == "Hello [email]"
    assert capture.feedback is not None and capture.feedback.correction == "Hi, write to [email]"
    assert (_captured(metrics, "requests", "stored"), _captured(metrics, "feedback", "stored")) == (1, 1)


async def test_a_store_that_fails_drops_records_and_pauses_capture_then_resumes(store: FakeOutageStore) -> None:
    _turn_on(store)
    metrics, clock = ServingMetrics(8), ManualClock()
    writer = _writer(store, metrics, clock, 0.0, 0.0, 0.0)
    store.down = True
    writer.offer_request("r1", "acme", 1, "q", "a", "stop")  # never raises: the request path only enqueues
    await writer.flush()
    assert _captured(metrics, "requests", "store_error") == 1
    assert metrics.registry.get_sample_value("loraplane_serving_capture_paused") == 1
    store.down = False
    writer.offer_request("r2", "acme", 1, "q", "a", "stop")
    await writer.flush()
    assert _captured(metrics, "requests", "paused") == 1, "within the pause nothing is tried"
    clock.now = 61.0
    writer.offer_request("r3", "acme", 1, "q", "a", "stop")
    await writer.flush()
    assert [capture.request.request_id for capture in CaptureStore(store).read("acme")] == ["r3"]
    assert metrics.registry.get_sample_value("loraplane_serving_capture_paused") == 0


async def test_a_full_queue_drops_and_counts(store: FakeOutageStore) -> None:
    metrics = ServingMetrics(8)
    writer = _writer(store, metrics, ManualClock(), queue_records=1)
    writer.offer_request("r1", "acme", 1, "q", "a", "stop")
    writer.offer_request("r2", "acme", 1, "q", "a", "stop")
    assert _captured(metrics, "requests", "queue_full") == 1


async def test_what_waits_is_written_when_the_writer_stops(store: FakeOutageStore) -> None:
    _turn_on(store)
    writer = _writer(store, ServingMetrics(8), ManualClock(), 0.0, 0.0, flush_seconds=3600.0)
    task = asyncio.create_task(writer.run())
    writer.offer_request("r1", "acme", 1, "q", "a", "stop")
    writer.offer_request("r2", "acme", 1, "q", "a", "stop")
    await asyncio.sleep(0.05)  # the writer has taken r1 and waits for its batch to fill
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [capture.request.request_id for capture in CaptureStore(store).read("acme")] == ["r1", "r2"]


def _refuse_boom(text: str) -> str:
    if "boom" in text:
        raise ValueError("the operator's hook refuses this text")
    return text


async def test_a_record_the_redaction_hook_fails_on_is_dropped_never_stored_and_the_rest_are_kept(
    store: FakeOutageStore,
) -> None:
    _turn_on(store)
    metrics = ServingMetrics(8)
    metrics.adapter_label("acme")
    writer = CaptureWriter(
        CaptureStore(store),
        Redactor(hook=f"{__name__}:_refuse_boom"),
        metrics,
        CaptureLimits(policy_ttl_seconds=0.0),
        clock=ManualClock(),
        draw=lambda: 0.0,
    )
    writer.offer_request("r1", "acme", 1, "boom", "a", "stop")
    writer.offer_request("r2", "acme", 1, "fine", "a", "stop")
    await writer.flush()
    assert [capture.request.request_id for capture in CaptureStore(store).read("acme")] == ["r2"]
    assert _captured(metrics, "requests", "redaction_error") == 1
