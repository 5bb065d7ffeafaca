"""UpdateRelease and GetRelease messages to release changes and back: every bad value named by its field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from loraplane import convert as client_convert
from loraplane.errors import InvalidArgument
from loraplane.proto import serving_pb2
from loraplane.releases import Guardrail, ReleaseAction, ReleaseChange, ReleaseMode, ReleaseRecord, ReleaseState
from serving_svc import convert
from serving_svc.release_analysis import ReleaseReport, Verdict, VersionFigures, compare
from serving_svc.releases import ReleaseView


def _update(**fields: object) -> serving_pb2.UpdateReleaseRequest:
    fields.setdefault("adapter", "acme")
    return serving_pb2.UpdateReleaseRequest(**fields)  # type: ignore[arg-type]


def test_a_start_takes_its_defaults_and_zero_means_unset() -> None:
    name, change = convert.release_change(_update(action=serving_pb2.RELEASE_ACTION_START, candidate_version=3))
    assert name == "acme"
    assert change == ReleaseChange(
        action=ReleaseAction.START, candidate=3, mode=ReleaseMode.CANARY, canary_share=convert.DEFAULT_CANARY_SHARE
    )
    _, promote = convert.release_change(
        _update(action=serving_pb2.RELEASE_ACTION_PROMOTE, expected_candidate_version=3, reason="r")
    )
    assert promote == ReleaseChange(action=ReleaseAction.PROMOTE, expected_candidate=3, canary_share=0.1)


@pytest.mark.parametrize(
    ("request_fields", "field", "message"),
    [
        ({"action": serving_pb2.RELEASE_ACTION_PROMOTE, "adapter": ""}, "adapter", "name the adapter"),
        ({"action": serving_pb2.RELEASE_ACTION_PROMOTE, "adapter": "acme@v2"}, "adapter", "without '@vN'"),
        ({"action": serving_pb2.RELEASE_ACTION_PROMOTE, "adapter": "Acme"}, "adapter", "invalid"),
        ({}, "action", "RELEASE_ACTION_START, RELEASE_ACTION_PROMOTE"),
        ({"action": 99}, "action", "unknown ReleaseAction 99"),
        ({"action": serving_pb2.RELEASE_ACTION_START}, "candidate_version", "name the version"),
        (
            {"action": serving_pb2.RELEASE_ACTION_START, "candidate_version": 2, "canary_share": 1.5},
            "canary_share",
            "[0, 1]",
        ),
        ({"action": serving_pb2.RELEASE_ACTION_START, "candidate_version": 2, "mode": 7}, "mode", "ReleaseMode 7"),
    ],
    ids=["no-name", "pinned-name", "bad-name", "no-action", "unknown-action", "no-candidate", "share", "mode"],
)
def test_a_malformed_update_is_refused_naming_its_field(
    request_fields: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        convert.release_change(_update(**request_fields))
    assert info.value.field == field


def test_a_release_reaches_the_client_as_it_was_recorded() -> None:
    state = ReleaseState(stable=2, candidate=3, mode=ReleaseMode.SHADOW, trial=4)
    record = ReleaseRecord(
        adapter="acme",
        sequence=4,
        action=ReleaseAction.START,
        state=state,
        actor="ops",
        reason="more steps",
        figures={"agreement": 0.75},
        at=datetime(2026, 12, 7, 12, 0, tzinfo=UTC),
    )
    stable = VersionFigures(2, 40, 0, {Guardrail.SHADOW_AGREEMENT: None}, {Guardrail.SHADOW_AGREEMENT: 0})
    candidate = VersionFigures(3, 0, 0, {Guardrail.SHADOW_AGREEMENT: 0.25}, {Guardrail.SHADOW_AGREEMENT: 30})
    check = compare(Guardrail.SHADOW_AGREEMENT, stable, candidate, 0.5)
    verdict = Verdict("acme", 4, state, stable, candidate, [check], ReleaseAction.ROLLBACK, check.describe())
    report = ReleaseReport(ReleaseView("acme", record, [record], stale=True), verdict)
    shown = client_convert.release(convert.release(report))
    assert (shown.adapter, shown.state, shown.history, shown.stale) == ("acme", state, (record,), True)
    assert [figures.values for figures in shown.versions] == [{}, {"shadow_agreement": 0.25}]
    assert shown.versions[1].samples == {"shadow_agreement": 30}
    [shown_check] = shown.checks
    assert (shown_check.guardrail, shown_check.candidate, shown_check.worse) == ("shadow_agreement", 0.25, True)
    assert shown_check.excess == pytest.approx(0.25)
    assert shown.verdict.startswith("rollback: shadow_agreement: candidate 0.25")
    empty = client_convert.release(convert.release(ReleaseReport(ReleaseView("acme", None, [], stale=False), None)))
    assert empty.state is None and empty.versions == () and empty.verdict == ""
