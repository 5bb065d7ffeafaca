"""A real Alertmanager (Debian's `prometheus-alertmanager`) that sends loraplane's retraining alerts to the
trainer's webhook, as docs/loop.md configures it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from tests.support.service_process import free_port


@contextmanager
def running_alertmanager(webhook_url: str, token: str, workdir: Path) -> Iterator[str]:
    """Alertmanager routing the drift and feedback alerts, grouped by adapter, at once, to `webhook_url` with
    `token` as the bearer token ("": none, for a trainer without authentication); yields its address
    (host:port) for Prometheus's alerting config."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "alertmanager is missing: scripts/install.sh --test installs it (apt: prometheus-alertmanager)"
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "nobody",
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
            "routes": [
                {
                    "matchers": ['alertname=~"LoraplaneAdapterDrift|LoraplaneFeedbackScoreLow"'],
                    "receiver": "loraplane-trainer",
                    "group_by": ["adapter"],
                }
            ],
        },
        "receivers": [
            {"name": "nobody"},
            {
                "name": "loraplane-trainer",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": False,
                        **({"http_config": {"authorization": {"credentials": token}}} if token else {}),
                    }
                ],
            },
        ],
    }
    path = workdir / "alertmanager.yml"
    path.write_text(json.dumps(config))
    port = free_port()
    log = (workdir / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).close()
                break
            except (URLError, ConnectionError):
                assert process.poll() is None, (workdir / "alertmanager.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "Alertmanager did not become ready in 30 s"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()
