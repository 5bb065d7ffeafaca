"""A real S3 server for tests: single-node Ceph radosgw, started once per session.

Ceph is what CI installs (apt: radosgw ceph-mon ceph-osd), so a missing binary fails the run
instead of skipping it: a skipped S3 suite would pass green while testing nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from botocore.client import BaseClient

CEPH_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ceph-s3.sh"
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin")
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class S3Endpoint:
    """Where the test S3 server listens and the keys of its one user."""

    endpoint_url: str
    access_key: str
    secret_key: str
    ceph_dir: Path
    region: str = "us-east-1"

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """radosgw really stopped (killed) inside the block, and started again after it on the same port;
        the objects stay in the cluster behind it."""
        port = self.endpoint_url.rsplit(":", 1)[1]
        subprocess.run([str(CEPH_SCRIPT), "gateway-stop", str(self.ceph_dir)], check=True, timeout=30)
        try:
            yield
        finally:
            subprocess.run(
                [str(CEPH_SCRIPT), "gateway-start", str(self.ceph_dir), port], check=True, timeout=START_TIMEOUT_S
            )

    def env(self) -> dict[str, str]:
        """Variables that point boto3 (in this or a child process) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> BaseClient:
        """An admin-side boto3 client, independent of the environment."""
        import boto3  # here, not at the top: every test session loads this plugin, few use S3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse_exports(stdout: str) -> dict[str, str]:
    """`export NAME=value` lines -> {NAME: value}."""
    exports = {}
    for line in stdout.splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and sep:
            exports[name] = value
    return exports


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A radosgw on a free loopback port for the whole session; stopped at its end."""
    missing = [binary for binary in CEPH_BINARIES if shutil.which(binary) is None]
    if missing:
        pytest.fail(
            f"S3 tests need Ceph, which is missing {', '.join(missing)}: apt-get install radosgw ceph-mon ceph-osd",
            pytrace=False,
        )
    ceph_dir = tmp_path_factory.mktemp("ceph")
    try:
        started = subprocess.run(
            [str(CEPH_SCRIPT), "start", str(ceph_dir), str(_free_port())],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        subprocess.run([str(CEPH_SCRIPT), "stop", str(ceph_dir)], check=False)
        pytest.fail(f"Ceph S3 did not start within {START_TIMEOUT_S}s; logs in {ceph_dir}/log", pytrace=False)
    if started.returncode != 0:
        pytest.fail(f"Ceph S3 did not start:\n{started.stderr}", pytrace=False)
    exports = _parse_exports(started.stdout)
    try:
        yield S3Endpoint(
            endpoint_url=exports["AWS_ENDPOINT_URL"],
            access_key=exports["AWS_ACCESS_KEY_ID"],
            secret_key=exports["AWS_SECRET_ACCESS_KEY"],
            region=exports["AWS_DEFAULT_REGION"],
            ceph_dir=ceph_dir,
        )
    finally:
        subprocess.run([str(CEPH_SCRIPT), "stop", str(ceph_dir)], check=True, timeout=60)


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket; for this test only, boto3's credential chain finds the server's keys.

    AWS_ENDPOINT_URL stays unset so code under test must pass the endpoint it was configured with.
    """
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_endpoint.env().items():
        if name != "AWS_ENDPOINT_URL":
            monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_endpoint.client().create_bucket(Bucket=bucket)
    return bucket
