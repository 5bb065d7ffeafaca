"""Inference engines behind one interface; `create_engine` is the one place a name picks a class.

Each engine module is imported only when chosen, so vLLM (or torch) loads only in a server
that runs it. Nothing here reads settings: the replica maps its settings to an `EngineConfig`
(`serving_svc.engine_config`) and hands that in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from serving_svc.engines.base import Engine, EngineChoice, EngineConfig, EngineName

__all__ = ["Engine", "create_engine", "resolve_engine"]


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(choice: EngineChoice, has_gpu: bool) -> EngineName:
    """auto: vLLM on a GPU; on a CPU the transformers engine, which serves adapters faster there."""
    if choice != "auto":
        return choice
    return "vllm" if has_gpu else "transformers"


def create_engine(config: EngineConfig, choice: EngineChoice, on_step: Callable[[int], None]) -> Engine:
    """The engine `choice` names (auto: the one for this machine), built but not started; `on_step` sees
    each step's batch size where the engine reports one (the transformers engine)."""
    has_gpu = _has_gpu()
    if config.dtype == "auto" and not has_gpu:
        # On a CPU, auto is float32: a model saved in bfloat16 would otherwise compute in it, which
        # CPUs without native bfloat16 arithmetic run more slowly than float32.
        config = dataclasses.replace(config, dtype="float32")
    if resolve_engine(choice, has_gpu) == "vllm":
        from serving_svc.engines.vllm import VllmEngine

        return VllmEngine(config)
    from serving_svc.engines.transformers import TransformersEngine

    return TransformersEngine(config, on_step)
