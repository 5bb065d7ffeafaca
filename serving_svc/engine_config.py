"""The replica's settings mapped to what an engine needs: the one place the engines meet settings."""

from __future__ import annotations

from serving_svc.engines.base import EngineConfig
from serving_svc.settings import ServingSettings


def engine_config(settings: ServingSettings) -> EngineConfig:
    """The engine's share of the settings; `create_engine` resolves a dtype of auto for the machine."""
    return EngineConfig(
        model_path=settings.base_model,
        served_model_name=settings.base_model_name,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        max_batch_size=settings.max_batch_size,
        max_loaded_adapters=settings.max_loaded_adapters,
        max_cpu_adapters=settings.max_cpu_adapters,
        max_lora_rank=settings.max_lora_rank,
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )
