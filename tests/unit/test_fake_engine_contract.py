"""The fake engine the unit tests lean on keeps the promises of a real engine (tests/support/engine_contract.py);
tests/integration/test_engine_contract.py holds the real engines to the same suite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from serving_svc.engines.base import Engine
from tests.support.engine_contract import EngineContract
from tests.support.fake_engine import FakeEngine


class TestFakeEngine(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def new_engine(cls) -> Callable[[], Engine]:
        return FakeEngine

    @pytest.fixture(scope="class")
    @classmethod
    def adapter_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        folder = tmp_path_factory.mktemp("fake-adapter")
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
        return folder
