"""Both services running for real on loopback (trainer with its worker processes, serving with
its default engine), as deployed: authentication on, one token with every role that the client
sends. And a task the tiny model memorises in a few steps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loraplane.auth import Role, add_token
from loraplane.client import LoraplaneClient
from serving_svc.server import ServingServer
from serving_svc.server import create_server as create_serving
from serving_svc.settings import ServingSettings
from tests.support.servers import running
from trainer_svc.server import TrainerServer
from trainer_svc.server import create_server as create_trainer
from trainer_svc.settings import TrainerSettings

# One fixed answer to a family of questions: learnt by a random tiny model in ~20 steps.
QUESTIONS = [f"What is the secret word number {i}?" for i in range(12)]
ANSWER = " Blue."


def memorise_jsonl() -> str:
    return "".join(json.dumps({"prompt": q, "completion": ANSWER}) + "\n" for q in QUESTIONS)


@dataclass
class Stack:
    trainer: TrainerServer
    serving: ServingServer
    client: LoraplaneClient
    trainer_settings: TrainerSettings
    token: str


@contextmanager
def running_stack(
    tiny_model_dir: Path, data_dir: Path, serving: dict[str, Any] | None = None, **common: Any
) -> Iterator[Stack]:
    """Trainer and serving sharing a store and the tiny base model; `common` overrides shared settings,
    `serving` the serving replica's own."""
    token = add_token(data_dir / "tokens.json", "e2e", Role)
    shared = {"data_dir": data_dir, "base_model": tiny_model_dir, "base_model_name": "tiny", **common}
    trainer_settings = TrainerSettings(
        **shared, trainer_address="127.0.0.1:0", trainer_metrics_port=0, trainer_http_port=0
    )
    serving_defaults = {
        "serving_address": "127.0.0.1:0",
        "serving_metrics_port": 0,
        "serving_http_port": 0,
        "max_model_len": 256,
    }
    serving_settings = ServingSettings(**shared, **{**serving_defaults, "dtype": "float32", **(serving or {})})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core runs the model itself: faster start
        with (
            running(lambda: create_trainer(trainer_settings)) as trainer,
            running(lambda: create_serving(serving_settings)) as serving,
            LoraplaneClient(
                trainer=f"127.0.0.1:{trainer.port}", serving=f"127.0.0.1:{serving.port}", token=token
            ) as client,
        ):
            assert client.wait_until_serving("trainer", 10) and client.wait_until_serving("serving", 10)
            yield Stack(trainer, serving, client, trainer_settings, token)
