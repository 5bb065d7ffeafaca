"""TLS for every port a service opens (gRPC, HTTP, metrics), and mutual TLS when a client CA is set.

One certificate and key serve all of a service's ports. With a client CA, a caller must
present a certificate that CA signed, on every port (a Prometheus that scrapes the metrics
port gets a client certificate of its own).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from loraplane.errors import StartupError


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def _read(self, path: Path, setting: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StartupError(f"cannot read {setting} {path}: {exc.strerror}") from None

    def check(self) -> None:
        """Load the files once as Python's ssl would, so a bad one stops start-up with its setting named."""
        self._read(self.cert_file, "LORAPLANE_TLS_CERT_FILE")
        self._read(self.key_file, "LORAPLANE_TLS_KEY_FILE")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise StartupError(
                f"LORAPLANE_TLS_CERT_FILE and LORAPLANE_TLS_KEY_FILE are not a certificate and its key: {exc}"
            ) from None
        if self.client_ca_file is not None:
            self._read(self.client_ca_file, "LORAPLANE_TLS_CLIENT_CA_FILE")
            try:
                context.load_verify_locations(self.client_ca_file)
            except ssl.SSLError as exc:
                raise StartupError(f"LORAPLANE_TLS_CLIENT_CA_FILE holds no CA certificate: {exc}") from None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        pair = (
            self._read(self.key_file, "LORAPLANE_TLS_KEY_FILE"),
            self._read(self.cert_file, "LORAPLANE_TLS_CERT_FILE"),
        )
        client_ca = self._read(self.client_ca_file, "LORAPLANE_TLS_CLIENT_CA_FILE") if self.client_ca_file else None
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=self.mutual)

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}
        if self.client_ca_file is not None:
            options.update(ssl_ca_certs=str(self.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options

    def metrics_options(self) -> dict[str, Any]:
        """prometheus_client.start_http_server's TLS arguments."""
        options: dict[str, Any] = {"certfile": str(self.cert_file), "keyfile": str(self.key_file)}
        if self.client_ca_file is not None:
            options.update(client_cafile=str(self.client_ca_file), client_auth_required=True)
        return options


def server_tls(cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None) -> ServerTls | None:
    """The TLS the three settings ask for: None (plain text) when no certificate is set."""
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise StartupError("LORAPLANE_TLS_CLIENT_CA_FILE needs LORAPLANE_TLS_CERT_FILE and LORAPLANE_TLS_KEY_FILE")
        return None
    if cert_file is None or key_file is None:
        raise StartupError("set both LORAPLANE_TLS_CERT_FILE and LORAPLANE_TLS_KEY_FILE, or neither")
    tls = ServerTls(cert_file, key_file, client_ca_file)
    tls.check()
    return tls
