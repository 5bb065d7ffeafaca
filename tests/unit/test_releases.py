"""Release records in a real file store: transitions, the audit trail, concurrent writers, the canary split."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplane.artifact import ArtifactRepository
from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound
from loraplane.releases import (
    ReleaseAction,
    ReleaseChange,
    ReleaseLog,
    ReleaseMode,
    ReleaseRecord,
    ReleaseState,
    VersionRole,
    canary_point,
    parse_share,
)
from loraplane.storage import FileStore
from tests.support.fake_engine import publish_fake_adapter

NAME = "alpha"


@pytest.fixture
def repository(tmp_path: Path) -> ArtifactRepository:
    repository = ArtifactRepository(FileStore(tmp_path / "store"))
    for _ in range(4):
        publish_fake_adapter(repository, tmp_path / "sources", NAME)
    return repository


@pytest.fixture
def releases(repository: ArtifactRepository) -> ReleaseLog:
    return ReleaseLog(repository)


def _start(candidate: int, **fields: object) -> ReleaseChange:
    return ReleaseChange(action=ReleaseAction.START, candidate=candidate, **fields)


def _act(action: ReleaseAction, **fields: object) -> ReleaseChange:
    return ReleaseChange(action=action, **fields)


def test_an_adapter_without_records_has_no_release(releases: ReleaseLog) -> None:
    assert releases.current(NAME) is None
    assert releases.history(NAME) == []


def test_a_first_candidate_keeps_the_newest_other_version_stable(releases: ReleaseLog) -> None:
    record = releases.change(NAME, _start(4, canary_share=0.25), actor="ops", reason="try v4")
    assert record.sequence == 1
    assert record.state == ReleaseState(stable=3, candidate=4, mode=ReleaseMode.CANARY, canary_share=0.25, trial=1)
    assert releases.current(NAME) == record


def test_the_life_of_a_release_is_kept_in_order_with_who_why_and_figures(releases: ReleaseLog) -> None:
    releases.change(NAME, _start(2, stable=1, canary_share=0.1), actor="ops", reason="first trial")
    releases.change(NAME, _act(ReleaseAction.PAUSE), actor="ops", reason="look closer")
    releases.change(NAME, _act(ReleaseAction.RESUME), actor="ops")
    releases.change(NAME, _act(ReleaseAction.PROMOTE), actor="auto", figures={"error_rate_delta": 0.0})
    releases.change(NAME, _start(3, mode=ReleaseMode.SHADOW), actor="trainer")
    releases.change(NAME, _act(ReleaseAction.ROLLBACK), actor="auto", reason="agreement 0.2 < 0.8")

    history = releases.history(NAME)
    assert [record.sequence for record in history] == [1, 2, 3, 4, 5, 6]
    assert [record.action for record in history] == [
        ReleaseAction.START,
        ReleaseAction.PAUSE,
        ReleaseAction.RESUME,
        ReleaseAction.PROMOTE,
        ReleaseAction.START,
        ReleaseAction.ROLLBACK,
    ]
    assert history[1].state.paused and not history[2].state.paused
    assert {record.state.trial for record in history[:3]} == {1}, "pausing and resuming keep the trial"
    assert history[3].state == ReleaseState(stable=2, previous_stable=1)
    assert history[3].figures == {"error_rate_delta": 0.0}
    assert history[4].state == ReleaseState(stable=2, candidate=3, mode=ReleaseMode.SHADOW, trial=5)
    assert history[5].state == ReleaseState(stable=2), "a new trial ends the undo of the last promotion"
    assert history[5].actor == "auto" and history[5].reason == "agreement 0.2 < 0.8"
    assert releases.history(NAME, limit=2) == history[-2:]


def test_a_rollback_without_a_candidate_returns_to_the_stable_before_the_promotion(releases: ReleaseLog) -> None:
    releases.change(NAME, _start(2, stable=1), actor="ops")
    releases.change(NAME, _act(ReleaseAction.PROMOTE), actor="ops")
    record = releases.change(NAME, _act(ReleaseAction.ROLLBACK), actor="ops", reason="v2 misbehaves")
    assert record.state == ReleaseState(stable=1)
    with pytest.raises(FailedPrecondition, match="last change was not a promotion to undo"):
        releases.change(NAME, _act(ReleaseAction.ROLLBACK), actor="ops")


def test_a_second_rollback_never_demotes_stable(releases: ReleaseLog) -> None:
    releases.change(NAME, _start(2, stable=1), actor="ops")
    releases.change(NAME, _act(ReleaseAction.PROMOTE), actor="ops")
    releases.change(NAME, _start(3), actor="ops")
    releases.change(NAME, _act(ReleaseAction.ROLLBACK), actor="auto", reason="v3 worse")
    with pytest.raises(FailedPrecondition, match="no candidate on trial"):
        releases.change(NAME, _act(ReleaseAction.ROLLBACK), actor="ops", reason="roll back v3")
    current = releases.current(NAME)
    assert current is not None and current.state == ReleaseState(stable=2)


def test_restarting_a_running_trial_keeps_it_paused_and_keeps_its_number(releases: ReleaseLog) -> None:
    releases.change(NAME, _start(2, stable=1), actor="ops")
    releases.change(NAME, _act(ReleaseAction.PAUSE), actor="ops")
    record = releases.change(NAME, _start(2, canary_share=0.5), actor="ops")
    assert record.state.paused and record.state.trial == 1 and record.state.canary_share == 0.5


def test_a_change_conditional_on_the_newest_record_is_refused_once_another_came(releases: ReleaseLog) -> None:
    first = releases.change(NAME, _start(2, stable=1), actor="ops")
    releases.change(NAME, _act(ReleaseAction.PAUSE), actor="ops")
    with pytest.raises(FailedPrecondition, match="changed after record 1: it is at record 2"):
        releases.change(NAME, _act(ReleaseAction.PROMOTE, expected_sequence=first.sequence), actor="auto")


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (None, _act(ReleaseAction.PROMOTE), "has no release to promote"),
        (_start(2, stable=1), _start(3), "v2 is already on trial"),
        (_start(2, stable=1), _start(2, stable=3), "released with stable v1"),
        (_start(2, stable=1), _act(ReleaseAction.PROMOTE, expected_candidate=3), "v3 is no longer the candidate"),
        (None, _start(1, stable=1), "v1 is the stable version"),
    ],
    ids=["nothing-to-promote", "second-candidate", "other-stable", "stale-verdict", "candidate-is-stable"],
)
def test_a_change_that_does_not_apply_is_refused_and_writes_nothing(
    releases: ReleaseLog, first: ReleaseChange | None, second: ReleaseChange, message: str
) -> None:
    if first is not None:
        releases.change(NAME, first, actor="ops")
    before = releases.history(NAME)
    with pytest.raises(FailedPrecondition, match=message):
        releases.change(NAME, second, actor="ops")
    assert releases.history(NAME) == before


def test_pause_and_resume_need_a_candidate(releases: ReleaseLog) -> None:
    releases.change(NAME, _start(2, stable=1), actor="ops")
    releases.change(NAME, _act(ReleaseAction.PROMOTE), actor="ops")
    with pytest.raises(FailedPrecondition, match="no candidate to pause"):
        releases.change(NAME, _act(ReleaseAction.PAUSE), actor="ops")


def test_a_version_that_is_not_published_is_not_found(releases: ReleaseLog) -> None:
    with pytest.raises(NotFound, match="alpha@v9"):
        releases.change(NAME, _start(9), actor="ops")
    with pytest.raises(NotFound, match="alpha@v7"):
        releases.change(NAME, _start(2, stable=7), actor="ops")
    assert releases.current(NAME) is None


def test_a_single_version_cannot_be_its_own_stable(tmp_path: Path) -> None:
    repository = ArtifactRepository(FileStore(tmp_path / "store"))
    publish_fake_adapter(repository, tmp_path / "sources", "solo")
    with pytest.raises(FailedPrecondition, match="no version besides v1"):
        ReleaseLog(repository).change("solo", _start(1), actor="ops")


def test_an_invalid_name_is_refused_before_the_store_is_read(releases: ReleaseLog) -> None:
    with pytest.raises(InvalidArgument, match="invalid"):
        releases.current("../x")


def test_concurrent_writers_each_get_their_own_record_and_the_log_replays(releases: ReleaseLog) -> None:
    """Eight writers pause and resume at once; then a promote races a rollback. Every change that was
    written has its own sequence number, and each record's state is its change applied to the record
    before it: one consistent history, nothing lost."""
    releases.change(NAME, _start(2, stable=1), actor="ops")
    changes = [_act(ReleaseAction.PAUSE if i % 2 else ReleaseAction.RESUME) for i in range(8)]
    changes += [_act(ReleaseAction.PROMOTE), _act(ReleaseAction.ROLLBACK)]
    outcomes: list[ReleaseRecord | FailedPrecondition] = []
    barrier = threading.Barrier(len(changes))

    def write(change: ReleaseChange) -> None:
        barrier.wait()
        try:
            outcomes.append(releases.change(NAME, change, actor=f"writer-{change.action}"))
        except FailedPrecondition as refused:
            outcomes.append(refused)

    threads = [threading.Thread(target=write, args=(change,)) for change in changes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    history = releases.history(NAME)
    written = [outcome for outcome in outcomes if isinstance(outcome, ReleaseRecord)]
    assert len(history) == 1 + len(written)
    assert [record.sequence for record in history] == list(range(1, len(history) + 1))
    assert {record.sequence for record in written} == {record.sequence for record in history[1:]}
    for before, record in zip(history, history[1:], strict=False):
        assert _act(record.action).apply(NAME, before.state, sequence=record.sequence) == record.state
    actions = [record.action for record in history]
    assert ReleaseAction.PROMOTE in actions or ReleaseAction.ROLLBACK in actions
    # a promote and a rollback both land (rollback after promote returns to v1), or the later is refused
    refused = [outcome for outcome in outcomes if isinstance(outcome, FailedPrecondition)]
    assert all("no candidate" in str(error) for error in refused)


def test_the_state_routes_only_the_canary_share_to_the_candidate() -> None:
    canary = ReleaseState(stable=1, candidate=2, mode=ReleaseMode.CANARY, canary_share=0.3)
    keys = [f"user-{i}" for i in range(4000)]
    routed = [canary.route(NAME, key) for key in keys]
    share = sum(role is VersionRole.CANDIDATE for _, role in routed) / len(keys)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(keys))
    assert all(version == (2 if role is VersionRole.CANDIDATE else 1) for version, role in routed)
    assert canary.shadow is None
    paused = canary.model_copy(update={"paused": True})
    assert {paused.route(NAME, key) for key in keys} == {(1, VersionRole.STABLE)}
    shadow = ReleaseState(stable=1, candidate=2, mode=ReleaseMode.SHADOW)
    assert {shadow.route(NAME, key) for key in keys} == {(1, VersionRole.STABLE)}
    assert shadow.shadow == 2


@settings(max_examples=50, deadline=None)
@given(key=st.text(max_size=40), low=st.floats(0, 1), high=st.floats(0, 1))
def test_a_key_keeps_its_side_and_joins_the_candidate_only_as_the_share_grows(
    key: str, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    point = canary_point(NAME, key)
    assert 0.0 <= point < 1.0
    assert canary_point(NAME, key) == point
    on_low = ReleaseState(stable=1, candidate=2, mode=ReleaseMode.CANARY, canary_share=low).route(NAME, key)
    on_high = ReleaseState(stable=1, candidate=2, mode=ReleaseMode.CANARY, canary_share=high).route(NAME, key)
    assert on_low[1] is VersionRole.STABLE or on_high[1] is VersionRole.CANDIDATE


def test_a_caller_is_not_in_every_adapters_canary_at_once() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    both = sum(canary_point("alpha", key) < 0.1 and canary_point("beta", key) < 0.1 for key in keys)
    assert both < 2000 * 0.1 * 0.5  # independent splits put ~1% in both, one shared split 10%


@pytest.mark.parametrize(("text", "share"), [("10%", 0.1), ("0.25", 0.25), ("100%", 1.0), (" 5 %", 0.05), ("0", 0.0)])
def test_a_share_is_a_percentage_or_a_fraction(text: str, share: float) -> None:
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["10", "abc", "150%", "-1%", ""])
def test_an_ambiguous_or_impossible_share_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_share(text)
    assert info.value.field == "canary"
