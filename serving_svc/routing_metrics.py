"""The metrics an inference gateway routes by, under the names vLLM gives them.

The Gateway API Inference Extension's endpoint picker chooses a replica for each request from its
queue depth, its KV-cache use and its LoRA adapters (the model server protocol, proposal 003).
Its reference implementation reads vLLM's metric names, so a replica that exports them needs no
picker flags to be routed by LoRA affinity: a request for an adapter goes to a replica that
already holds it, or to one with a free slot.

- `vllm:num_requests_waiting`: requests waiting for the engine (this replica's queue and the
  engine's own).
- `vllm:num_requests_running`: requests generating tokens.
- `vllm:kv_cache_usage_perc` (and `vllm:gpu_cache_usage_perc`, its name before vLLM 0.10, which
  older pickers read): the share of the engine's batch in use (0 to 1). Each running request
  holds one row of the key/value cache, so it is how full the cache's rows are.
- `vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}`: value the
  time of the reading (the picker keeps the newest); adapters in the engine, and adapters requests
  wait to have loaded, comma-separated, each both as `name@vN` and, for the newest version a
  name resolved to, as `name` (a request's `model` is either).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving_svc.adapters import ResolvedAdapter
from serving_svc.engines.base import EngineStats


def _model_names(adapters: list[ResolvedAdapter], newest: Callable[[str], int | None]) -> str:
    names: list[str] = []
    for adapter in adapters:
        names.append(adapter.key)
        if newest(adapter.manifest.name) == adapter.manifest.version:
            names.append(adapter.manifest.name)
    return ",".join(names)


class RoutingCollector(Collector):
    def __init__(
        self,
        *,
        engine_stats: Callable[[], EngineStats],
        queued: Callable[[], int],
        running_adapters: Callable[[], list[ResolvedAdapter]],
        waiting_adapters: Callable[[], list[ResolvedAdapter]],
        newest_version: Callable[[str], int | None],
        max_lora: int,
        max_batch_size: int,
    ) -> None:
        self._engine_stats = engine_stats
        self._queued = queued
        self._running_adapters = running_adapters
        self._waiting_adapters = waiting_adapters
        self._newest_version = newest_version
        self._max_lora = max_lora
        self._max_batch_size = max_batch_size

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._engine_stats()
        yield GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Requests waiting for the engine: this replica's queue and the engine's own.",
            value=self._queued() + stats.waiting,
        )
        yield GaugeMetricFamily("vllm:num_requests_running", "Requests generating tokens.", value=stats.running)
        for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):  # vLLM's name now, and before
            yield GaugeMetricFamily(
                name,
                "Share of the engine's batch rows (each holds a request's key/value cache) in use, 0 to 1.",
                value=min(stats.running / self._max_batch_size, 1.0),
            )
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "LoRA adapters in the engine and adapters requests wait for; the value is the time of reading.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        running = _model_names(self._running_adapters(), self._newest_version)
        waiting = _model_names(self._waiting_adapters(), self._newest_version)
        info.add_metric([str(self._max_lora), running, waiting], time.time())
        yield info
