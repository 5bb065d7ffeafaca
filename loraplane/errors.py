"""Typed domain errors, one class per gRPC status a caller can act on.

Code below the servicers raises these; `loraplane.grpc_errors` maps them to gRPC statuses in
one place and the client maps statuses back, so no layer matches on message strings.
"""

from __future__ import annotations

import enum

import grpc


class ErrorCode(enum.StrEnum):
    """A failure's status where it is kept or sent as data (a job's error, a training worker's last
    event): the name of its gRPC status code, which it maps to and from."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"

    @classmethod
    def of(cls, status: grpc.StatusCode) -> ErrorCode:
        """The code of a gRPC status (INTERNAL for OK, which is no failure)."""
        return cls.__members__.get(status.name, cls.INTERNAL)

    @property
    def status(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.value]


class LoraplaneError(Exception):
    """Base class. `field` names the request field at fault, when there is one."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    @property
    def error_code(self) -> ErrorCode:
        return ErrorCode.of(self.code)


class InvalidArgument(LoraplaneError):
    """The request is malformed; retrying it unchanged fails again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LoraplaneError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LoraplaneError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(LoraplaneError):
    """The request is well formed but the system is not in a state to run it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(LoraplaneError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class Unauthenticated(LoraplaneError):
    """No valid token came with the request."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LoraplaneError):
    """The caller's token is valid but lacks the role the call needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(LoraplaneError):
    """A dependency (store, engine) is not ready; the same request may succeed later."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class Cancelled(LoraplaneError):
    code = grpc.StatusCode.CANCELLED


class InternalError(LoraplaneError):
    code = grpc.StatusCode.INTERNAL


class StartupError(Exception):
    """A service cannot start with its settings; the message names the setting to change."""


ERRORS_BY_CODE: dict[grpc.StatusCode, type[LoraplaneError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        Cancelled,
        InternalError,
    )
}


def error_for_code(code: ErrorCode, message: str, field: str = "") -> LoraplaneError:
    """Rebuild a typed error from its code, e.g. a job's recorded error."""
    return ERRORS_BY_CODE.get(code.status, InternalError)(message, field=field)
