"""A real Prometheus server (Debian's `prometheus`) that scrapes the services under test."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlencode
from urllib.request import urlopen

from tests.support.service_process import free_port


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict]:
        """The instant vector `promql` evaluates to now."""
        with urlopen(f"{self.url}/api/v1/query?{urlencode({'query': promql})}", timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def query_range(self, promql: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        """The series `promql` evaluates to at any point of [start, end] (what a dashboard panel draws)."""
        params = urlencode({"query": promql, "start": start, "end": end, "step": step})
        with urlopen(f"{self.url}/api/v1/query_range?{params}", timeout=30) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def alerts(self) -> list[dict]:
        """Alerts pending or firing now, from Prometheus's own alerts API."""
        with urlopen(f"{self.url}/api/v1/alerts", timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return list(body["data"]["alerts"])

    def wait_for(self, promql: str, timeout: float = 60) -> list[dict]:
        """Poll until `promql` returns data (the next scrape has happened), or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := self.query(promql):
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus returned no data for {promql!r} within {timeout}s")


@contextmanager
def running_prometheus(
    targets: dict[str, int], workdir: Path, rule_files: Sequence[Path] = (), alertmanager: str | None = None
) -> Iterator[Prometheus]:
    """Prometheus scraping 127.0.0.1:<port>/metrics of each job every second, evaluating `rule_files`
    every second too, and sending its alerts to `alertmanager` (host:port) where given."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: scripts/install.sh --test installs it (apt: prometheus)"
    scrape_configs = [
        {"job_name": job, "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        for job, port in targets.items()
    ]
    config = workdir / "prometheus.yml"
    settings = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": scrape_configs,
    }
    if alertmanager is not None:
        settings["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    config.write_text(json.dumps(settings))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urlopen(f"{server.url}/-/ready", timeout=2).close()
                break
            except (URLError, ConnectionError):
                assert process.poll() is None, (workdir / "prometheus.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "Prometheus did not become ready in 30 s"
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(10)
        log.close()
