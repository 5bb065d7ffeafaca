"""The trainer's HTTP API: retraining by hand, the retraining policies, and Alertmanager's webhook.

- `POST /v1/retrain/{adapter}` (`{"since": ...}` optional): the gRPC `Retrain`, answered as its
  `RetrainResponse` in JSON;
- `GET` / `PUT /v1/retraining/{adapter}/policy`: the adapter's retraining policy (changing it needs the
  admin role);
- `POST /v1/alerts`: Alertmanager's webhook (`webhook_configs` with `http_config.authorization` carrying
  a token with the train role). Each firing alert named in RETRAIN_ALERTS with an `adapter` label asks
  for a retrain of that adapter, which its policy allows or not; the answer lists what each did.
- `GET /health`, open, for probes.

Routes translate only: the Retrainer decides. Errors leave in the same JSON shape as serving's HTTP API.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from google.protobuf.json_format import MessageToDict
from pydantic import AfterValidator, BaseModel, ConfigDict

from loraplane.auth import Authenticator, Caller, Role
from loraplane.body_limit import BodySizeLimit
from loraplane.captures import in_utc
from loraplane.errors import InvalidArgument
from loraplane.http_errors import ErrorShape
from loraplane.names import validate_adapter_name, whole_adapter_name
from loraplane.training import RetrainTrigger
from trainer_svc import convert
from trainer_svc.retrain import Retrainer, RetrainPolicyChange

RETRAIN_ALERTS = frozenset({"LoraplaneAdapterDrift", "LoraplaneFeedbackScoreLow"})
"""The alerts (k8s/monitoring/rules) that ask for a retrain of the adapter they name."""
ERRORS = ErrorShape()


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Annotated[datetime | None, AfterValidator(in_utc)] = None
    """UTC unless it says otherwise."""


class Alert(BaseModel):
    """One alert of Alertmanager's webhook payload (its other fields are ignored)."""

    status: str
    labels: dict[str, str]


class AlertmanagerPayload(BaseModel):
    """Alertmanager's webhook body, version 4: the alerts of one notification."""

    alerts: list[Alert]

    def retrain_requests(self) -> dict[str, str]:
        """adapter -> the alert asking for its retrain: firing alerts of RETRAIN_ALERTS whose `adapter` label
        names an adapter (not `_other`, the sum of the adapters without a label of their own)."""
        asked = {}
        for alert in self.alerts:
            alertname, adapter = alert.labels.get("alertname", ""), alert.labels.get("adapter", "")
            if alert.status == "firing" and alertname in RETRAIN_ALERTS and _is_adapter_name(adapter):
                asked[adapter] = alertname
        return asked


def _is_adapter_name(text: str) -> bool:
    try:
        validate_adapter_name(text)
    except InvalidArgument:
        return False
    return True


def create_app(retrainer: Retrainer, authenticator: Authenticator, *, max_body_bytes: int) -> FastAPI:
    app = FastAPI(title="loraplane trainer", docs_url=None, redoc_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    ERRORS.install(app)

    def training_caller(request: Request) -> Caller:
        return authenticator.caller(request.headers.get("authorization"), {Role.TRAIN, Role.ADMIN})

    def admin_caller(request: Request) -> Caller:
        return authenticator.caller(request.headers.get("authorization"), {Role.ADMIN})

    training, administering = Depends(training_caller), Depends(admin_caller)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/retrain/{adapter}")
    async def retrain(adapter: str, body: RetrainBody | None = None, caller: Caller = training) -> dict[str, Any]:
        name = whole_adapter_name(adapter, "retraining")
        since = body.since if body is not None else None
        done = await retrainer.retrain(name, trigger=RetrainTrigger.MANUAL, caller=caller, since=since)
        return MessageToDict(convert.retrain_response(done), preserving_proto_field_name=True)

    @app.get("/v1/retraining/{adapter}/policy", dependencies=[training])
    async def get_policy(adapter: str) -> dict[str, Any]:
        name = whole_adapter_name(adapter, "retraining policy")
        policy = await asyncio.to_thread(retrainer.policy, name)
        return MessageToDict(convert.retrain_policy(name, policy), preserving_proto_field_name=True)

    @app.put("/v1/retraining/{adapter}/policy")
    async def update_policy(adapter: str, body: RetrainPolicyChange, caller: Caller = administering) -> dict[str, Any]:
        name = whole_adapter_name(adapter, "retraining policy")
        policy = await asyncio.to_thread(retrainer.change_policy, name, body, actor=caller.name)
        return MessageToDict(convert.retrain_policy(name, policy), preserving_proto_field_name=True)

    @app.post("/v1/alerts")
    async def alerts(payload: AlertmanagerPayload, caller: Caller = training) -> dict[str, Any]:
        """What each firing alert about an adapter did; alerts of other names or without an adapter are
        ignored."""
        asked = sorted(payload.retrain_requests().items())
        done = [
            await retrainer.retrain(name, trigger=RetrainTrigger.ALERT, caller=caller, alert=alert)
            for name, alert in asked
        ]
        return {
            "retrains": [
                {
                    "adapter": retrain.adapter,
                    "outcome": retrain.outcome.value,
                    "job_id": retrain.job.id if retrain.job is not None else "",
                    "message": retrain.message,
                }
                for retrain in done
            ]
        }

    return app
