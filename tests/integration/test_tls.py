"""TLS and mutual TLS on every port of both services (gRPC, OpenAI HTTP, metrics), with certificates this
test makes: the right certificate gets through, anything else is refused at the handshake."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from loraplane.client import ClientTls, LoraplaneClient
from loraplane.errors import StartupError, Unavailable
from loraplane.types import SamplingParameters
from serving_svc.server import create_server as create_serving
from tests.support.certs import Pki, make_pki
from tests.support.servers import running
from tests.support.serving_settings import tiny_serving_settings
from tests.support.trainer_settings import tiny_trainer_settings
from trainer_svc.server import create_server as create_trainer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _https(pki: Pki, *, client_cert: bool) -> httpx.Client:
    context = ssl.create_default_context(cafile=pki.ca)
    if client_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return httpx.Client(verify=context, timeout=10)


def test_tls_on_the_trainer_serves_clients_that_trust_its_ca(pki: Pki, tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = tiny_trainer_settings(
        tiny_model_dir, tmp_path, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    with running(lambda: create_trainer(settings)) as trainer:
        target = f"127.0.0.1:{trainer.port}"
        with LoraplaneClient(trainer=target, tls=ClientTls(ca_file=pki.ca)) as client:
            assert client.wait_until_serving("trainer", 10)
            assert list(client.jobs.list()) == []
        with LoraplaneClient(trainer=target, token="") as plain:  # no TLS: the handshake never completes
            assert not plain.wait_until_serving("trainer", 1)
            with pytest.raises(Unavailable):
                list(plain.jobs.list())
        with _https(pki, client_cert=False) as https:
            assert "loraplane_trainer" in https.get(f"https://127.0.0.1:{trainer.metrics_port}/metrics").text
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS metrics port
            httpx.get(f"http://127.0.0.1:{trainer.metrics_port}/metrics", timeout=5)


def test_mutual_tls_on_serving_needs_a_client_certificate_on_every_port(
    pki: Pki, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = tiny_serving_settings(
        tiny_model_dir,
        tmp_path,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    )
    with running(lambda: create_serving(settings)) as serving:
        target = f"127.0.0.1:{serving.port}"
        mutual = ClientTls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        with LoraplaneClient(serving=target, tls=mutual) as client:
            exactly_two = SamplingParameters(max_tokens=2, ignore_eos=True)
            assert client.inference.generate("hello", params=exactly_two).usage.completion_tokens == 2
        no_certificate = LoraplaneClient(serving=target, tls=ClientTls(ca_file=pki.ca))
        with no_certificate, pytest.raises(Unavailable):
            no_certificate.inference.model_info()
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
        for port, method, path in (
            (serving.http.port, "POST", "/v1/completions"),
            (serving.metrics_port, "GET", "/metrics"),
        ):
            url = f"https://127.0.0.1:{port}{path}"
            with _https(pki, client_cert=True) as https:
                assert https.request(method, url, json=body if method == "POST" else None).status_code == 200
            with _https(pki, client_cert=False) as https, pytest.raises(httpx.HTTPError):
                https.request(method, url, json=body if method == "POST" else None)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tls_cert_file": "server.pem"}, "set both LORAPLANE_TLS_CERT_FILE and LORAPLANE_TLS_KEY_FILE"),
        ({"tls_client_ca_file": "ca.pem"}, "LORAPLANE_TLS_CLIENT_CA_FILE needs"),
        ({"tls_cert_file": "client.key", "tls_key_file": "server.key"}, "are not a certificate and its key"),
        ({"tls_cert_file": "server.pem", "tls_key_file": "absent.key"}, "cannot read LORAPLANE_TLS_KEY_FILE"),
    ],
)
def test_unusable_tls_settings_stop_start_up_naming_the_setting(
    pki: Pki, tiny_model_dir: Path, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    paths = {setting: pki.ca.parent / name for setting, name in files.items()}
    settings = tiny_trainer_settings(tiny_model_dir, tmp_path, **paths)
    with pytest.raises(StartupError, match=message):
        create_trainer(settings)
