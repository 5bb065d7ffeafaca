"""The real engines on the tiny model keep the promises every engine makes (tests/support/engine_contract.py),
as the fake engine of the unit tests does. The transformers engine's adapters are plain LoRA (stacked)
and DoRA (applied by peft), which take different paths through it; vLLM cannot apply DoRA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serving_svc.engines.base import Engine
from tests.support.adapters import make_adapter
from tests.support.engine_contract import EngineContract
from tests.support.tiny_model import tiny_engine_config


class TestTransformersEngine(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def new_engine(cls, tiny_model_dir: Path) -> Callable[[], Engine]:
        from serving_svc.engines.transformers import TransformersEngine

        return lambda: TransformersEngine(tiny_engine_config(tiny_model_dir, max_batch_size=4, adapters=2))

    @pytest.fixture(scope="class", params=["lora", "dora"])
    @classmethod
    def adapter_dir(
        cls, request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> Path:
        dest = tmp_path_factory.mktemp(f"contract-{request.param}")
        return make_adapter(tiny_model_dir, dest, seed=7, dora=request.param == "dora")


class TestVllmEngine(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def new_engine(cls, tiny_model_dir: Path) -> Iterator[Callable[[], Engine]]:
        from serving_svc.engines.vllm import VllmEngine

        with pytest.MonkeyPatch.context() as env:
            # The engine core runs in this process rather than one more: seconds to start instead of many.
            env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            yield lambda: VllmEngine(tiny_engine_config(tiny_model_dir, max_batch_size=4, adapters=2))

    @pytest.fixture(scope="class")
    @classmethod
    def adapter_dir(cls, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("contract-vllm"), seed=7)
