"""The serving replica's Prometheus metrics, on a registry of its own so several servers fit one process.

Adapter labels carry only names that resolved in the store (or one of the `_`-prefixed labels
below), never raw request text, so a client sending random names cannot grow the label set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loraplane.errors import LoraplaneError

BASE_MODEL_LABEL = "_base"
NO_ADAPTER_LABEL = "_none"  # RPCs about the replica rather than one model: ModelInfo, ListAdapters, Tokenize
UNRESOLVED_LABEL = "_unresolved"  # the named adapter was malformed, unknown or refused
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class RequestRecord:
    """Filled in by an RPC while it runs; read when it ends."""

    adapter: str = UNRESOLVED_LABEL


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraplane_serving_requests",
            "RPCs answered, by method, adapter name and gRPC status code.",
            ["rpc", "adapter", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "loraplane_serving_request_duration_seconds",
            "Time from receiving an RPC to its last response message.",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "loraplane_serving_time_to_first_token_seconds",
            "Time from receiving a generation request to its first generated token (adapter load included).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "loraplane_serving_prompt_tokens",
            "Prompt tokens of generation requests, by adapter.",
            ["adapter"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "loraplane_serving_generated_tokens",
            "Tokens generated, by adapter.",
            ["adapter"],
            registry=self.registry,
        )
        self.adapters_loaded = Gauge(
            "loraplane_serving_adapters_loaded",
            "Adapter versions loaded in the engine now.",
            registry=self.registry,
        )
        self.adapter_load_duration = Histogram(
            "loraplane_serving_adapter_load_duration_seconds",
            "Time to fetch (when not cached on disk), verify and load one adapter version into the engine.",
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.adapter_loads = Counter(
            "loraplane_serving_adapter_loads",
            "Adapter versions loaded into the engine, by adapter name.",
            ["adapter"],
            registry=self.registry,
        )
        self.adapter_evictions = Counter(
            "loraplane_serving_adapter_evictions",
            "Adapter versions evicted to make room for another (least recently used first).",
            registry=self.registry,
        )

    @contextmanager
    def track(self, rpc: str) -> Iterator[RequestRecord]:
        """Count and time one RPC; its status comes from the error that ends it, if any."""
        record = RequestRecord()
        started = time.perf_counter()
        status = "OK"
        try:
            yield record
        except LoraplaneError as exc:
            status = exc.code.name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = "CANCELLED"
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            self.requests.labels(rpc, record.adapter, status).inc()
            self.request_duration.labels(rpc).observe(time.perf_counter() - started)
