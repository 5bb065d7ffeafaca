"""The captures in the store: policies, files written once, read back joined with feedback, and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loraplane.captures import (
    CapturedFeedback,
    CapturedRequest,
    CapturePolicy,
    CapturePolicyChange,
    CaptureStore,
)
from loraplane.errors import InvalidArgument
from loraplane.storage import FileStore

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> CaptureStore:
    return CaptureStore(FileStore(tmp_path / "store"))


def _request(request_id: str, at: datetime, answer: str = "a") -> CapturedRequest:
    return CapturedRequest(
        request_id=request_id, adapter="acme", version=1, at=at, prompt="q", answer=answer, finish_reason="stop"
    )


def _feedback(request_id: str, at: datetime, score: float, correction: str | None = None) -> CapturedFeedback:
    return CapturedFeedback(request_id=request_id, adapter="acme", version=1, at=at, score=score, correction=correction)


def test_an_adapter_without_a_policy_is_not_captured_and_a_change_keeps_what_it_leaves_out(
    store: CaptureStore,
) -> None:
    assert store.policy("acme") == CapturePolicy(enabled=False)
    on = CapturePolicyChange(enabled=True, sample_share=0.25).apply(store.policy("acme"), actor="ops", at=NOW)
    store.set_policy("acme", on)
    off = CapturePolicyChange(enabled=False).apply(store.policy("acme"), actor="ops2", at=NOW)
    assert (off.enabled, off.sample_share, off.actor, off.at) == (False, 0.25, "ops2", NOW)
    assert store.adapters() == ["acme"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (CapturePolicyChange(enabled=True, sample_share=0.0), "sample_share"),
        (CapturePolicyChange(enabled=True, sample_share=1.5), "sample_share"),
        (CapturePolicyChange(enabled=True, retention_days=0), "retention_days"),
    ],
    ids=["no-share", "share-over-one", "no-days"],
)
def test_a_change_out_of_range_names_its_field(change: CapturePolicyChange, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field) as info:
        change.apply(CapturePolicy(), actor="ops", at=NOW)
    assert info.value.field == field


def test_requests_are_read_back_oldest_first_each_with_its_newest_feedback(store: CaptureStore) -> None:
    first, second = NOW - timedelta(days=1), NOW
    store.write("acme", "requests", [_request("r2", second), _request("r1", first)], at=second, writer="w1")
    store.write("acme", "feedback", [_feedback("r1", second, 0.0, "right answer")], at=second, writer="w1")
    store.write(
        "acme", "feedback", [_feedback("r1", second + timedelta(minutes=1), 0.0, "better")], at=second, writer="w2"
    )
    store.write("acme", "feedback", [_feedback("not-captured", second, 1.0)], at=second, writer="w1")
    captures = store.read("acme")
    assert [capture.request.request_id for capture in captures] == ["r1", "r2"]
    assert captures[0].feedback is not None and captures[0].feedback.correction == "better"
    assert captures[1].feedback is None
    assert [capture.request.request_id for capture in store.read("acme", since=NOW)] == ["r2"]


def test_retention_deletes_what_is_older_than_its_days_then_the_oldest_past_its_bytes(store: CaptureStore) -> None:
    for days_ago in (40, 3, 2, 1):
        at = NOW - timedelta(days=days_ago)
        store.write("acme", "requests", [_request(f"r{days_ago}", at, answer="x" * 100)], at=at, writer="w")
    size = len(_request("r1", NOW, answer="x" * 100).model_dump_json()) + 1
    deleted = store.enforce_retention("acme", CapturePolicy(retention_days=30, retention_bytes=2 * size), now=NOW)
    assert deleted == 2, "the one past 30 days, and the oldest of the three that do not fit in two files' bytes"
    assert [capture.request.request_id for capture in store.read("acme")] == ["r2", "r1"]
