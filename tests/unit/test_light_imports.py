"""The client, CLI, store, servicers and the engine's scheduler never load torch, transformers or vLLM."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "vllm", "peft", "bitsandbytes")


@pytest.mark.parametrize(
    "module",
    [
        "loraplane.client",
        "loraplane.cli",
        "loraplane.artifact",
        "loraplane.drift",
        "loraplane.answers",  # the task metrics' comparisons: the benchmarks and the CLI's vocabulary import it
        "trainer_svc.server",
        "serving_svc.server",
        "serving_svc.servicer",
        "serving_svc.engines.scheduler",  # decides only: the model runner and output processor hold torch
    ],
)
def test_module_imports_without_heavy_libraries(module: str) -> None:
    probe = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"


def test_the_engines_take_their_config_not_the_settings() -> None:
    """The engine package (its interface and factory) is handed an EngineConfig; it never reads settings."""
    probe = "import sys, serving_svc.engines; print('serving_svc.settings' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
