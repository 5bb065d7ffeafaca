"""A real serving-svc process under faults: kill -9 while streams run (callers get UNAVAILABLE, a
restart serves again), SIGTERM while streams run (they finish whole, then the process exits 0), and
an adapter cache on a full disk (that request fails cleanly, the cache stays consistent, and the
same request succeeds once there is room)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from loraplane.artifact import ArtifactRepository
from loraplane.client import LoraplaneClient
from loraplane.errors import LoraplaneError, ResourceExhausted, Unavailable
from loraplane.fingerprint import base_model_fingerprint
from loraplane.serving import FinishReason
from loraplane.storage import FileStore
from loraplane.types import SamplingParameters, Usage
from serving_svc.server import create_server
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.servers import running
from tests.support.service_process import free_port, service_process
from tests.support.serving_settings import tiny_serving_settings

STREAMS = 8
LONG = SamplingParameters(max_tokens=400, ignore_eos=True, temperature=0)
"""Long enough that every stream is still generating when the signal lands."""
SHORT = SamplingParameters(max_tokens=4, ignore_eos=True, temperature=0)
"""Exactly four tokens whatever the sampled text: an end-of-sequence token does not stop it early."""


@pytest.fixture(scope="module")
def data_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("faults")
    repository = ArtifactRepository(FileStore(data_dir / "store"))
    adapter = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("faults-adapter") / "alpha", 1)
    publish_adapter(repository, adapter, "alpha", base_model_fingerprint(tiny_model_dir))
    return data_dir


@contextmanager
def _serving(data_dir: Path, tiny_model_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    settings = {
        "LORAPLANE_DATA_DIR": str(data_dir),
        "LORAPLANE_BASE_MODEL": str(tiny_model_dir),
        "LORAPLANE_BASE_MODEL_NAME": "tiny",
        "LORAPLANE_SERVING_ADDRESS": f"127.0.0.1:{port}",
        "LORAPLANE_SERVING_METRICS_PORT": "0",
        "LORAPLANE_SERVING_HTTP_PORT": "0",
        "LORAPLANE_SERVING_ENGINE": "transformers",
        "LORAPLANE_MAX_MODEL_LEN": "512",
        "LORAPLANE_AUTH": "off",
    }
    with service_process("serving-svc", settings, data_dir / f"serving-{port}.log") as process:
        yield process


@dataclass
class StreamResult:
    chunks: int = 0
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    error: LoraplaneError | None = None


def _signalled_during_streams(
    process: subprocess.Popen[bytes], client: LoraplaneClient, stop: signal.Signals
) -> list[StreamResult]:
    """STREAMS long streams; `stop` is sent once each has its first chunk; how each stream ended."""
    results = [StreamResult() for _ in range(STREAMS)]
    started = threading.Barrier(STREAMS + 1)

    def stream(result: StreamResult, adapter: str) -> None:
        try:
            for chunk in client.inference.stream("Once upon a time", adapter=adapter, params=LONG):
                result.chunks += 1
                if chunk.usage is not None:
                    result.usage, result.finish_reason = chunk.usage, chunk.finish_reason
                if result.chunks == 1:
                    started.wait(timeout=60)
        except LoraplaneError as exc:
            result.error = exc

    threads = [
        threading.Thread(target=stream, args=(result, "alpha" if i % 2 else ""), daemon=True)
        for i, result in enumerate(results)
    ]
    for thread in threads:
        thread.start()
    started.wait(timeout=60)
    process.send_signal(stop)
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_kill_9_during_streams_gives_unavailable_and_a_restart_serves_again(
    data_dir: Path, tiny_model_dir: Path
) -> None:
    port = free_port()
    with _serving(data_dir, tiny_model_dir, port) as process, LoraplaneClient(serving=f"127.0.0.1:{port}") as client:
        assert client.wait_until_serving("serving", 120)
        results = _signalled_during_streams(process, client, signal.SIGKILL)
    assert all(isinstance(result.error, Unavailable) for result in results), [r.error for r in results]
    assert all(result.usage is None for result in results), "no stream had finished when the process died"

    with _serving(data_dir, tiny_model_dir, port), LoraplaneClient(serving=f"127.0.0.1:{port}") as client:
        assert client.wait_until_serving("serving", 120)
        answer = client.inference.generate("Once upon a time", adapter="alpha", params=SHORT)
        assert answer.usage.completion_tokens == SHORT.max_tokens


def test_sigterm_lets_streams_in_flight_finish_whole_then_exits_cleanly(data_dir: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    with _serving(data_dir, tiny_model_dir, port) as process, LoraplaneClient(serving=f"127.0.0.1:{port}") as client:
        assert client.wait_until_serving("serving", 120)
        results = _signalled_during_streams(process, client, signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finished = [(r.error, r.usage and r.usage.completion_tokens, r.finish_reason) for r in results]
    assert finished == [(None, LONG.max_tokens, "length")] * STREAMS


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real filesystem that fills up (needs root, as on these machines and in CI)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_fails_the_cold_load_cleanly_and_the_cache_stays_consistent(
    data_dir: Path, tiny_model_dir: Path, small_disk: Path, tmp_path: Path
) -> None:
    weights = next((data_dir / "store" / "adapters" / "alpha").glob("v*/adapter_model.safetensors"))
    filler = small_disk / "filler"
    room = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (room.f_bavail * room.f_frsize - weights.stat().st_size // 2))  # half the weights fit
    settings = tiny_serving_settings(
        tiny_model_dir, tmp_path, store_uri=(data_dir / "store").as_uri(), adapter_cache_dir=small_disk / "cache"
    )
    with running(lambda: create_server(settings)) as server, LoraplaneClient(serving=f"127.0.0.1:{server.port}") as c:
        with pytest.raises(ResourceExhausted, match="no room to copy alpha@v1"):
            c.inference.generate("hello", adapter="alpha", params=SamplingParameters(max_tokens=2))
        leftovers = [p.relative_to(small_disk) for p in (small_disk / "cache").rglob("*")]
        assert leftovers == [Path("cache/alpha")], "no partial copy, no temporary file"
        assert c.inference.generate("hello", params=SHORT).usage.completion_tokens == SHORT.max_tokens
        filler.unlink()
        assert (
            c.inference.generate("hello", adapter="alpha", params=SamplingParameters(max_tokens=2)).adapter.name
            == "alpha"
        )
