"""Errors over HTTP in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), for both services'
HTTP APIs: ours with the status that matches the gRPC one, the body's validation errors, the framework's own
refusals, and the unexpected."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraplane.errors import InternalError, InvalidArgument, LoraplaneError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
"""What a 429 tells the caller to wait: places free up as requests finish, within a second or so."""

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
}


class ErrorShape:
    """How one API words its errors: `parameter` turns a field our errors name into the API's parameter name;
    `models_looked_up`: a NOT_FOUND is about the `model` the request named (OpenAI's `model_not_found`) unless
    it names another field."""

    def __init__(self, parameter: Callable[[str], str] = str, *, models_looked_up: bool = False) -> None:
        self._parameter = parameter
        self._models_looked_up = models_looked_up

    def body(self, error: LoraplaneError) -> tuple[int, dict[str, Any]]:
        """The HTTP status of `error` and OpenAI's error object for it."""
        status, kind = _HTTP_STATUS.get(error.code, (500, "internal_error"))
        if (
            self._models_looked_up
            and error.code == grpc.StatusCode.NOT_FOUND
            and error.field in ("", "adapter", "model")
        ):
            return status, {
                "error": {"message": error.message, "type": kind, "param": "model", "code": "model_not_found"}
            }
        param = self._parameter(error.field) if error.field else None
        code = error.code.name.lower()
        return status, {"error": {"message": error.message, "type": kind, "param": param, "code": code}}

    def response(self, error: LoraplaneError) -> JSONResponse:
        status, body = self.body(error)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(body, status_code=status, headers=headers)

    def _validation_error(self, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 turned into OpenAI's 400, naming the first parameter at fault (messages[0].role)."""
        first = error.errors()[0]
        location = [part for part in first.get("loc", ()) if part != "body"]
        param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', message)})", ""
        return self.response(InvalidArgument(f"{param}: {message}" if param else message, field=param))

    def install(self, app: FastAPI) -> None:
        """Make every error `app` answers leave in this shape."""

        @app.exception_handler(LoraplaneError)
        async def domain_error(request: Request, error: LoraplaneError) -> JSONResponse:
            return self.response(error)

        @app.exception_handler(RequestValidationError)
        async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
            return self._validation_error(error)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
            """What the framework refuses itself (an unknown path, a wrong method, a body that is not text)."""
            kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
            code = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
            body = {"error": {"message": str(error.detail), "type": kind, "param": None, "code": code}}
            return JSONResponse(body, status_code=error.status_code, headers=error.headers)

        @app.exception_handler(Exception)
        async def unexpected(request: Request, error: Exception) -> JSONResponse:
            log.exception("unhandled error in %s", request.url.path, exc_info=error)
            return self.response(InternalError("internal error; the server log has details"))
