"""Settings of a serving replica on the tiny model for tests: loopback, free ports, the transformers engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving_svc.settings import ServingSettings


def tiny_serving_settings(tiny_model_dir: Path, data_dir: Path, **overrides: Any) -> ServingSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "base_model": tiny_model_dir,
        "base_model_name": "tiny",
        "serving_address": "127.0.0.1:0",
        "serving_metrics_port": 0,
        "serving_http_port": 0,
        "serving_engine": "transformers",
        "max_model_len": 256,
        "auth": "off",  # tests/integration/test_auth.py covers tokens; here every call is the anonymous caller's
        **overrides,
    }
    return ServingSettings(**values)
