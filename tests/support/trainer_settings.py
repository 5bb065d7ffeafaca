"""Settings of a trainer on the tiny model for tests: loopback, free ports, authentication off unless asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer_svc.settings import TrainerSettings


def tiny_trainer_settings(tiny_model_dir: Path, data_dir: Path, **overrides: Any) -> TrainerSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "base_model": tiny_model_dir,
        "base_model_name": "tiny",
        "trainer_address": "127.0.0.1:0",
        "trainer_metrics_port": 0,
        "trainer_http_port": 0,
        "auth": "off",  # tests/integration/test_auth.py covers tokens; here every call is the anonymous caller's
        **overrides,
    }
    return TrainerSettings(**values)
