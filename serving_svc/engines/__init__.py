"""Inference engines behind one interface; `create_engine` is the one place a name picks a class.

Each engine module is imported only when chosen, so vLLM (or torch) loads only in a server
that runs it.
"""

from __future__ import annotations

from serving_svc.engines.base import Engine
from serving_svc.settings import ServingSettings

__all__ = ["Engine", "create_engine"]


def create_engine(settings: ServingSettings) -> Engine:
    """The engine `settings.serving_engine` names, built but not started."""
    if settings.serving_engine == "vllm":
        from serving_svc.engines.vllm import VllmEngine

        return VllmEngine(settings)
    raise ValueError(f"unknown engine {settings.serving_engine!r}")
