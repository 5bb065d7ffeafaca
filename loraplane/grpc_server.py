"""What both gRPC servers share: the aio server with health, reflection, authentication, TLS and
error mapping, and the Prometheus HTTP endpoint. Each service adds its own servicer
(`ServiceEndpoints`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from loraplane.auth import Authenticator, Role, create_authenticator
from loraplane.errors import FailedPrecondition
from loraplane.grpc_auth import AuthInterceptor, method_roles
from loraplane.grpc_errors import DomainErrorInterceptor
from loraplane.settings import CommonSettings
from loraplane.tls import ServerTls, server_tls


@dataclass(frozen=True)
class EndpointSecurity:
    """Who may call a service's ports and how they connect: the same for gRPC, HTTP and metrics."""

    authenticator: Authenticator
    reflection_open: bool
    tls: ServerTls | None
    max_message_bytes: int


def endpoint_security(settings: CommonSettings) -> EndpointSecurity:
    """From the settings; StartupError for a missing token file or unusable certificates."""
    return EndpointSecurity(
        authenticator=create_authenticator(settings.auth, settings.auth_tokens_file),
        reflection_open=settings.auth_reflection_open,
        tls=server_tls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file),
        max_message_bytes=settings.max_message_bytes,
    )


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]

    async def set_serving(self, serving: bool) -> None:
        """Flip the health status of the server ('') and of each service, for probes that name one."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING to every watcher, let calls in flight finish for `grace` seconds, stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def build_grpc_server(
    address: str, service_name: str, roles: Mapping[str, Role], security: EndpointSecurity
) -> GrpcServer:
    """A grpc.aio server bound to `address` (port 0 = free port), each method of `service_name` open to
    the role `roles` gives it (and to admin).

    Add the service's own servicer to `.server`, then `set_serving(False)` before starting it:
    grpc's health servicer starts out SERVING, and readiness must wait for the service
    (`ServiceEndpoints` does both).
    """
    auth = AuthInterceptor(
        security.authenticator, method_roles(service_name, roles), reflection_open=security.reflection_open
    )
    server = grpc.aio.server(
        interceptors=[DomainErrorInterceptor(), auth],  # errors outermost: refusals leave as statuses too
        options=[
            ("grpc.max_send_message_length", security.max_message_bytes),
            ("grpc.max_receive_message_length", security.max_message_bytes),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if security.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, security.tls.grpc_credentials())
    if port == 0:
        raise FailedPrecondition(f"cannot listen on {address}: address in use or invalid")
    return GrpcServer(server=server, port=port, health=health_servicer, service_names=[service_name])


@dataclass
class MetricsEndpoint:
    httpd: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_metrics_endpoint(
    port: int, registry: CollectorRegistry, host: str = "0.0.0.0", tls: ServerTls | None = None
) -> MetricsEndpoint:
    """Serve `registry` at http(s)://host:port/metrics on a thread (port 0 = free port)."""
    httpd, thread = start_http_server(port, addr=host, registry=registry, **(tls.metrics_options() if tls else {}))
    return MetricsEndpoint(httpd=httpd, thread=thread)


def host_of(address: str) -> str:
    """The host part of host:port ("[::]:50052" -> "::"), where the metrics endpoint listens too."""
    return address.rsplit(":", 1)[0].strip("[]")


class ServiceEndpoints:
    """A service's gRPC server and metrics endpoint, opened and closed together.

    The gRPC port is bound at construction (so `port` is known before start); health reports
    NOT_SERVING from `open()` until the service calls `set_serving(True)`.
    """

    def __init__(
        self,
        address: str,
        service_name: str,
        roles: Mapping[str, Role],
        security: EndpointSecurity,
        metrics_port: int,
        registry: CollectorRegistry,
    ) -> None:
        self.grpc = build_grpc_server(address, service_name, roles, security)
        self._tls = security.tls
        self._metrics_host = host_of(address)
        self._metrics_port = metrics_port
        self._registry = registry
        self._metrics: MetricsEndpoint | None = None

    @property
    def server(self) -> grpc.aio.Server:
        return self.grpc.server

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def metrics_port(self) -> int:
        assert self._metrics is not None, "open() the endpoints first"
        return self._metrics.port

    async def open(self) -> None:
        await self.grpc.set_serving(False)  # grpc's health servicer starts out SERVING
        self._metrics = start_metrics_endpoint(self._metrics_port, self._registry, self._metrics_host, self._tls)
        await self.grpc.server.start()

    async def set_serving(self, serving: bool) -> None:
        await self.grpc.set_serving(serving)

    async def close(self, grace: float) -> None:
        """NOT_SERVING to every watcher, calls in flight get `grace` seconds, then both endpoints stop."""
        await self.grpc.stop(grace)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


class EndpointsHost:
    """Base of both services' servers: the ports they listen on, read from their endpoints."""

    endpoints: ServiceEndpoints

    @property
    def port(self) -> int:
        return self.endpoints.port

    @property
    def metrics_port(self) -> int:
        return self.endpoints.metrics_port
