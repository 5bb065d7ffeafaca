"""Domain errors <-> gRPC statuses, in one place for both servers and the client.

Servers install `DomainErrorInterceptor`; servicers and everything below them just raise
`loraplane.errors` types. A field violation travels as a google.rpc.BadRequest detail, which
any gRPC client can unpack (`rpc_status.from_call`); ours turns it back into the typed error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from loraplane.errors import ErrorCode, InternalError, LoraplaneError, error_for_code
from loraplane.grpc_handlers import Around, AroundEachCall

log = logging.getLogger(__name__)


MAX_STATUS_MESSAGE_BYTES = 512
"""Longest error text (UTF-8) a status carries. Messages quote what the request held, and a status
travels in trailing metadata that clients cap (grpc warns past 8 KiB and fails past 16 KiB, counting
the message percent-encoded, up to three bytes per byte, and again in the details): a message quoting
a huge field would otherwise reach the caller as RESOURCE_EXHAUSTED instead of its own status."""


def _capped(text: str) -> str:
    encoded = text.encode()
    if len(encoded) <= MAX_STATUS_MESSAGE_BYTES:
        return text
    kept = encoded[:MAX_STATUS_MESSAGE_BYTES].decode(errors="ignore")  # never half a character
    return f"{kept}... ({len(text) - len(kept)} more characters)"


def to_status(error: LoraplaneError) -> status_pb2.Status:
    status = status_pb2.Status(code=error.code.value[0], message=_capped(str(error)))
    if error.field:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=error.field, description=_capped(error.message))
                ]
            )
        )
        status.details.append(detail)
    return status


def from_rpc_error(error: grpc.RpcError) -> LoraplaneError:
    """The typed error a failed call stands for, with the field of a BadRequest detail."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or code.name  # type: ignore[attr-defined]
    field = ""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                if bad_request.field_violations:
                    field = bad_request.field_violations[0].field
                    message = bad_request.field_violations[0].description
    return error_for_code(ErrorCode.of(code), message, field)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if not isinstance(error, LoraplaneError):
        log.exception("unhandled error in RPC", exc_info=error)
        error = InternalError("internal error; the server log has details")
    await context.abort_with_status(rpc_status.to_status(to_status(error)))


@asynccontextmanager
async def _errors_as_status(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure must leave as a status
        await _abort(context, exc)


class DomainErrorInterceptor(AroundEachCall):
    """Turns LoraplaneError into its status; anything else unexpected into a logged INTERNAL."""

    def around(self, details: grpc.HandlerCallDetails) -> Around:
        return _errors_as_status
