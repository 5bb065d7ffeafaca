"""Inference engines behind one interface; `create_engine` is the one place a name picks a class.

Each engine module is imported only when chosen, so vLLM (or torch) loads only in a server
that runs it.
"""

from __future__ import annotations

from collections.abc import Callable

from serving_svc.engines.base import Engine, EngineConfig
from serving_svc.settings import EngineName, ServingSettings

__all__ = ["Engine", "create_engine", "engine_config", "resolve_engine"]


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(settings: ServingSettings, has_gpu: bool) -> EngineName:
    """auto: vLLM on a GPU; on a CPU the transformers engine, which serves adapters faster there."""
    if settings.serving_engine != "auto":
        return settings.serving_engine
    return "vllm" if has_gpu else "transformers"


def engine_config(settings: ServingSettings, has_gpu: bool) -> EngineConfig:
    # dtype auto on a CPU is float32: a model saved in bfloat16 would otherwise compute in it,
    # which this kind of CPU runs at about half the float32 speed.
    dtype = "float32" if settings.dtype == "auto" and not has_gpu else settings.dtype
    return EngineConfig(
        model_path=settings.base_model,
        served_model_name=settings.base_model_name,
        dtype=dtype,
        max_model_len=settings.max_model_len,
        max_batch_size=settings.max_batch_size,
        max_loaded_adapters=settings.max_loaded_adapters,
        max_cpu_adapters=settings.max_cpu_adapters,
        max_lora_rank=settings.max_lora_rank,
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )


def create_engine(settings: ServingSettings, on_step: Callable[[int], None]) -> Engine:
    """The engine settings pick, built but not started; `on_step` sees each step's batch size where the
    engine reports one (the transformers engine)."""
    has_gpu = _has_gpu()
    name = resolve_engine(settings, has_gpu)
    config = engine_config(settings, has_gpu)
    if name == "vllm":
        from serving_svc.engines.vllm import VllmEngine

        return VllmEngine(config)
    from serving_svc.engines.transformers import TransformersEngine

    return TransformersEngine(config, on_step)
