"""ErrorCode, the form a failure's status takes as data, against gRPC's own status codes; and the status an
error leaves as."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from loraplane.errors import (
    ErrorCode,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    error_for_code,
)
from loraplane.grpc_errors import MAX_STATUS_MESSAGE_BYTES, to_status


@pytest.mark.parametrize("status", [status for status in grpc.StatusCode if status is not grpc.StatusCode.OK])
def test_every_failure_status_has_a_code_that_maps_back(status: grpc.StatusCode) -> None:
    code = ErrorCode.of(status)
    assert code.status is status and code == status.name


def test_ok_is_no_failure_and_maps_to_internal() -> None:
    assert ErrorCode.of(grpc.StatusCode.OK) is ErrorCode.INTERNAL


def test_a_typed_error_round_trips_through_its_code() -> None:
    original = FailedPrecondition("no such base model", field="spec.base_model")
    rebuilt = error_for_code(original.error_code, original.message, original.field)
    assert type(rebuilt) is FailedPrecondition and str(rebuilt) == str(original)
    assert type(error_for_code(ResourceExhausted("x").error_code, "x")) is ResourceExhausted
    assert type(error_for_code(ErrorCode.DATA_LOSS, "x")) is InternalError, "codes with no class of ours are internal"


def test_a_status_quoting_a_huge_field_stays_small_enough_for_grpc_metadata() -> None:
    """Clients refuse trailing metadata past 8-16 KiB: a message quoting a 5,000-character field (4 bytes a
    character) must still arrive as its own status."""
    error = InvalidArgument(f"adapter name {'😀' * 5000!r} is invalid", field="adapter")
    status = to_status(error)
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    for text in (status.message, detail.field_violations[0].description):
        assert len(text.encode()) <= MAX_STATUS_MESSAGE_BYTES + 40 and text.endswith("more characters)")
    assert status.message.startswith("adapter: adapter name '😀")
