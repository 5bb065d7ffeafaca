"""Retraining through a real trainer on loopback: by hand (gRPC and HTTP) and from Alertmanager's webhook
payload, one retrain job per adapter at a time, the cooldown, and the policy that allows it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraplane.artifact import ArtifactRepository
from loraplane.captures import CapturedFeedback, CapturedRequest, CaptureStore
from loraplane.client import LoraplaneClient
from loraplane.errors import FailedPrecondition
from loraplane.fingerprint import base_model_fingerprint
from loraplane.storage import open_store
from loraplane.training import RetrainOutcome
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.servers import running
from tests.support.trainer_settings import tiny_trainer_settings
from trainer_svc.server import TrainerServer, create_server

AT = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


@dataclass
class Trainer:
    server: TrainerServer
    client: LoraplaneClient

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.server.http.port}{path}", json=body, timeout=30)

    def put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.put(f"http://127.0.0.1:{self.server.http.port}{path}", json=body, timeout=30)


def _alert(adapter: str, alertname: str = "LoraplaneAdapterDrift", status: str = "firing") -> dict[str, Any]:
    labels = {"alertname": alertname, "adapter": adapter, "version": "1", "severity": "warning"}
    return {"status": status, "labels": labels, "annotations": {}, "startsAt": AT.isoformat()}


def _webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for `alerts`."""
    return {"version": "4", "status": "firing", "receiver": "loraplane-trainer", "alerts": list(alerts)}


def _capture(store: CaptureStore, adapter: str, count: int) -> None:
    requests = [
        CapturedRequest(
            request_id=f"{adapter}-{n}",
            adapter=adapter,
            version=1,
            at=AT,
            prompt=f"q{n}",
            answer="a",
            finish_reason="stop",
        )
        for n in range(count)
    ]
    verdicts = [
        CapturedFeedback(request_id=f"{adapter}-{n}", adapter=adapter, version=1, at=AT, score=0.0, correction=f"c{n}")
        for n in range(count)
    ]
    store.write(adapter, "requests", requests, at=AT, writer="test")
    store.write(adapter, "feedback", verdicts, at=AT, writer="test")


@pytest.fixture(scope="module")
def trainer(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trainer]:
    settings = tiny_trainer_settings(tiny_model_dir, tmp_path_factory.mktemp("retrain"))
    store = open_store(settings.store_uri)
    sources = tmp_path_factory.mktemp("retrain-adapters")
    fingerprint = base_model_fingerprint(tiny_model_dir)
    for name in ("blue", "green", "quiet", "silent"):
        adapter = make_adapter(tiny_model_dir, sources / name, 1)
        publish_adapter(ArtifactRepository(store), adapter, name, fingerprint, "lora", "chat")
        if name != "silent":  # nothing captured: a retrain of it has no data
            _capture(CaptureStore(store), name, 10)
    with (
        running(lambda: create_server(settings)) as server,
        LoraplaneClient(trainer=f"127.0.0.1:{server.port}") as client,
    ):
        yield Trainer(server, client)


def test_an_alert_retrains_an_adapter_whose_policy_allows_it_once_at_a_time(trainer: Trainer) -> None:
    policy = {"enabled": True, "cooldown_seconds": 3600, "training": {"max_steps": 7}}
    turned_on = trainer.put("/v1/retraining/blue/policy", policy)
    assert turned_on.status_code == 200 and turned_on.json()["enabled"] is True
    answer = trainer.post(
        "/v1/alerts",
        _webhook(
            _alert("blue"),
            _alert("quiet"),  # its policy is off
            _alert("_other"),  # the adapters without a label of their own: not one adapter
            _alert("green", alertname="LoraplaneServingErrors"),  # not an alert that retrains
            _alert("green", status="resolved"),
        ),
    )
    assert answer.status_code == 200, answer.text
    outcomes = {entry["adapter"]: entry for entry in answer.json()["retrains"]}
    assert {name: entry["outcome"] for name, entry in outcomes.items()} == {"blue": "started", "quiet": "policy_off"}
    job = trainer.client.jobs.retrieve(outcomes["blue"]["job_id"])
    assert job.spec.parent == "blue@v1" and job.spec.training_data.captures is not None
    assert job.spec.training_data.captures.adapter == "blue" and job.spec.release is not None
    assert job.spec.training.max_steps == 7, "the policy says how retrain jobs train"
    assert job.spec.labels == {"loraplane.trigger": "alert", "loraplane.alert": "LoraplaneAdapterDrift"}
    again = trainer.post("/v1/alerts", _webhook(_alert("blue", alertname="LoraplaneFeedbackScoreLow")))
    assert again.json()["retrains"][0]["outcome"] == "in_flight", "a second alert during the retrain starts nothing"
    with pytest.raises(FailedPrecondition, match="must end first"):
        trainer.client.jobs.retrain("blue")
    trainer.client.jobs.cancel(job.id)
    cooling = trainer.post("/v1/alerts", _webhook(_alert("blue")))
    assert cooling.json()["retrains"][0]["outcome"] == "cooling_down"
    metrics = httpx.get(f"http://127.0.0.1:{trainer.server.endpoints.metrics_port}/metrics").text
    assert 'loraplane_trainer_retrains_total{outcome="started",trigger="alert"} 1.0' in metrics
    assert 'loraplane_trainer_retrains_total{outcome="in_flight",trigger="alert"} 1.0' in metrics


def test_an_alert_whose_retrain_cannot_be_made_is_answered_refused_and_others_go_on(trainer: Trainer) -> None:
    assert trainer.put("/v1/retraining/silent/policy", {"enabled": True}).status_code == 200
    answer = trainer.post("/v1/alerts", _webhook(_alert("silent"), _alert("quiet")))
    outcomes = {entry["adapter"]: entry for entry in answer.json()["retrains"]}
    assert outcomes["silent"]["outcome"] == "refused" and "make no training example" in outcomes["silent"]["message"]
    assert outcomes["quiet"]["outcome"] == "policy_off"


def test_retraining_by_hand_needs_no_policy_and_takes_a_since(trainer: Trainer) -> None:
    started = trainer.client.jobs.retrain("green", since=AT)
    assert started.outcome is RetrainOutcome.STARTED and started.job is not None
    assert started.job.spec.training_data.captures is not None
    assert started.job.spec.training_data.captures.since == AT
    assert started.job.spec.labels == {"loraplane.trigger": "manual"}
    trainer.client.jobs.cancel(started.job.id)
    over_http = trainer.post("/v1/retrain/green", {})
    assert over_http.status_code == 200 and over_http.json()["outcome"] == "RETRAIN_OUTCOME_STARTED"
    trainer.client.jobs.cancel(over_http.json()["job"]["id"])
    assert trainer.client.jobs.retrain_policy("green").enabled is False


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/v1/retrain/nobody", {}, 404, "adapter"),
        ("POST", "/v1/retrain/blue@v1", {}, 400, "adapter"),
        ("PUT", "/v1/retraining/blue/policy", {"enabled": True, "canary_share": 2}, 400, "canary_share"),
        ("POST", "/v1/alerts", {"alerts": [{"labels": {}}]}, 400, "alerts[0].status"),
    ],
    ids=["unknown-adapter", "version", "share", "not-a-webhook"],
)
def test_mistakes_are_refused_naming_what_to_fix(
    trainer: Trainer, method: str, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    response = httpx.request(method, f"http://127.0.0.1:{trainer.server.http.port}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
