"""ErrorCode, the form a failure's status takes as data, against gRPC's own status codes."""

from __future__ import annotations

import grpc
import pytest

from loraplane.errors import ErrorCode, FailedPrecondition, InternalError, ResourceExhausted, error_for_code


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
