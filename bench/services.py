"""Both loraplane services as a user runs them, on loopback, for benchmarks that go through the API."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.serving import processes
from bench.serving.ours import free_port
from loraplane.client import LoraplaneClient, ServiceName

SERVICES: tuple[ServiceName, ...] = ("trainer", "serving")


def console_script(name: str) -> str:
    """A console script of this environment (trainer-svc, serving-svc)."""
    return str(Path(sys.executable).with_name(name))


def service_env(model_dir: Path, scratch: Path, trainer_port: int, serving_port: int) -> dict[str, str]:
    """Both services on their defaults but for where they listen, keep data and find the model."""
    return {
        **os.environ,
        "LORAPLANE_DATA_DIR": str(scratch / "data"),
        "LORAPLANE_BASE_MODEL": str(model_dir),
        "LORAPLANE_BASE_MODEL_NAME": "smollm2",
        "LORAPLANE_TRAINER_ADDRESS": f"127.0.0.1:{trainer_port}",
        "LORAPLANE_TRAINER_METRICS_PORT": "0",
        "LORAPLANE_TRAINER_HTTP_PORT": "0",
        "LORAPLANE_SERVING_ADDRESS": f"127.0.0.1:{serving_port}",
        "LORAPLANE_SERVING_METRICS_PORT": "0",
        "LORAPLANE_SERVING_HTTP_PORT": "0",
        "LORAPLANE_AUTH": "off",  # both services on loopback, called by this benchmark alone
    }


@contextmanager
def running_services(
    model_dir: Path, scratch: Path, settings: dict[str, str] | None = None
) -> Iterator[LoraplaneClient]:
    """trainer-svc and serving-svc started on free ports with their data under `scratch` (and `settings`,
    LORAPLANE_* variables, over their defaults), a client to both once they report SERVING; both stopped on
    the way out."""
    trainer_port, serving_port = free_port(), free_port()
    env = {**service_env(model_dir, scratch, trainer_port, serving_port), **(settings or {})}
    servers = [
        processes.spawn([console_script(name)], env=env, log_path=scratch / f"{name}.log")
        for name in ("trainer-svc", "serving-svc")
    ]
    try:
        with LoraplaneClient(trainer=f"127.0.0.1:{trainer_port}", serving=f"127.0.0.1:{serving_port}") as client:
            for service in SERVICES:
                if not client.wait_until_serving(service, 300):
                    raise RuntimeError(f"{service} did not start; see {scratch}")
            yield client
    finally:
        for server in servers:
            processes.stop(server)
