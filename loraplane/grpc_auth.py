"""The gRPC side of authentication: every call of a service needs a token holding its role.

Health stays open (probes and load balancers carry no token) and reflection too unless closed
by a setting. A method the role table does not name is refused: a new RPC is closed until it
is given a role.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from loraplane.auth import Authenticator, Caller, Role, set_current_caller
from loraplane.errors import LoraplaneError, PermissionDenied
from loraplane.grpc_handlers import Around, AroundEachCall

HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
REFLECTION_PREFIXES = (f"/{reflection.SERVICE_NAME}/", "/grpc.reflection.v1.ServerReflection/")


def method_roles(service_name: str, roles: Mapping[str, Role]) -> dict[str, frozenset[Role]]:
    """Full method paths (/package.Service/Method) -> the roles that may call them.

    Admin may call everything; `roles` names the other role of each method.
    """
    return {f"/{service_name}/{method}": frozenset({role, Role.ADMIN}) for method, role in roles.items()}


class AuthInterceptor(AroundEachCall):
    """Authenticates each call from its `authorization` metadata and makes the caller current for it.

    Refusals are raised inside the call, so the error interceptor turns them into
    UNAUTHENTICATED or PERMISSION_DENIED like any domain error.
    """

    def __init__(
        self, authenticator: Authenticator, roles: Mapping[str, frozenset[Role]], *, reflection_open: bool
    ) -> None:
        self._authenticator = authenticator
        self._roles = roles
        self._open_prefixes = (HEALTH_PREFIX, *REFLECTION_PREFIXES) if reflection_open else (HEALTH_PREFIX,)

    def _required(self, method: str) -> frozenset[Role]:
        """The roles that may call `method`; none for reflection when closed (any valid token will do)."""
        if method.startswith(REFLECTION_PREFIXES):
            return frozenset()
        required = self._roles.get(method)
        if required is None:
            raise PermissionDenied(f"{method} is not open to any role")
        return required

    def around(self, details: grpc.HandlerCallDetails) -> Around | None:
        """Nothing for an open method; else the call as its authenticated caller, or its refusal."""
        method: str = details.method  # type: ignore[attr-defined]
        if method.startswith(self._open_prefixes):
            return None
        metadata = dict(details.invocation_metadata or ())  # type: ignore[attr-defined]
        authorization = metadata.get("authorization")
        try:
            outcome: Caller | LoraplaneError = self._authenticator.caller(
                authorization if isinstance(authorization, str) else None, self._required(method)
            )
        except LoraplaneError as refusal:
            outcome = refusal

        @asynccontextmanager
        async def as_caller(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            if isinstance(outcome, LoraplaneError):
                raise outcome
            set_current_caller(outcome)  # the call runs in a task of its own: this ends with it
            yield

        return as_caller
