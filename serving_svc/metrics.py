"""The serving replica's Prometheus metrics, on a registry of its own so several servers fit one process.

Callers say what happened (`first_token`, `load_failed`, `evicted`); the Prometheus families are
private, so the bound on adapter labels holds at every call: an adapter gets an `adapter` label
of its own only while it is one of the busiest `adapter_labels` adapters (`AdapterLabels`), the
rest are summed under "_other", and the `_`-prefixed labels below mark requests without one.
Adapter labels carry only names that resolved in the store; no request text becomes a label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from loraplane.captures import CaptureKind
from loraplane.errors import LoraplaneError
from loraplane.serving import CacheTier
from serving_svc.adapter_labels import OTHER_LABEL, AdapterLabels
from serving_svc.engines.base import EngineStats

BASE_MODEL_LABEL = "_base"
NO_ADAPTER_LABEL = "_none"  # RPCs about the replica rather than one model: ModelInfo, ListAdapters, Tokenize
UNRESOLVED_LABEL = "_unresolved"  # the named adapter was malformed, unknown or refused
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

M = TypeVar("M", bound=MetricWrapperBase)

CaptureOutcome = Literal["stored", "queue_full", "store_error", "paused", "redaction_error"]

LoadSource = Literal["cpu", "disk", "store"]
"""Where a load took the adapter from: its copy in host memory, the local disk cache, or the object store."""


class VersionLabels(NamedTuple):
    """The `adapter` and `version` labels a generation request is counted under.

    `version` is the served version's number, so a release's stable and candidate read apart on
    every request metric; "" where no adapter version answered (the base model), "_other" with
    an adapter folded into "_other" (the label bound covers both labels).
    """

    adapter: str
    version: str


BASE_MODEL = VersionLabels(BASE_MODEL_LABEL, "")


@dataclass
class RequestRecord:
    """Filled in by an RPC while it runs; read when it ends."""

    adapter: str = UNRESOLVED_LABEL
    version: str = ""


class ServingMetrics:
    def __init__(self, adapter_labels: int) -> None:
        self.registry = CollectorRegistry()
        # family -> position of its adapter label, and how many labels fold with it (2 with a version label)
        self._adapter_index: dict[MetricWrapperBase, tuple[int, int]] = {}
        self._seen: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}
        self._labels = AdapterLabels(adapter_labels, self._forget_adapter)
        self._define_request_families()
        self._define_adapter_families()
        self._define_engine_families()
        self._define_capture_families()

    # -- the families, private: every write goes through a method below ---------------------

    def _define_request_families(self) -> None:
        self._requests = self._adapter_family(
            Counter,
            "loraplane_serving_requests",
            "RPCs answered, by method, adapter, version and gRPC status code.",
            ["rpc", "adapter", "version", "status"],
        )
        self._request_duration = Histogram(
            "loraplane_serving_request_duration_seconds",
            "Time from receiving an RPC to its last response message.",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._time_to_first_token = self._adapter_family(
            Histogram,
            "loraplane_serving_time_to_first_token_seconds",
            "Time from receiving a generation request to its first token (queueing and adapter load included).",
            ["adapter", "version"],
            buckets=_LATENCY_BUCKETS,
        )
        self._inter_token_latency = self._adapter_family(
            Histogram,
            "loraplane_serving_inter_token_latency_seconds",
            "Time between two generated tokens of one request.",
            ["adapter", "version"],
            buckets=_TOKEN_GAP_BUCKETS,
        )
        self._generation_latency = self._adapter_family(
            Histogram,
            "loraplane_serving_generation_latency_seconds",
            "Time from receiving a generation request to its last token (end to end).",
            ["adapter", "version"],
            buckets=_LATENCY_BUCKETS,
        )
        self._prompt_tokens = self._adapter_family(
            Counter,
            "loraplane_serving_prompt_tokens",
            "Prompt tokens of generation requests.",
            ["adapter", "version"],
        )
        self._generated_tokens = self._adapter_family(
            Counter, "loraplane_serving_generated_tokens", "Tokens generated.", ["adapter", "version"]
        )
        self._feedback = self._adapter_family(
            Counter,
            "loraplane_serving_feedback",
            "Feedback scores received (RecordFeedback).",
            ["adapter", "version"],
        )
        self._requests_queued = Gauge(
            "loraplane_serving_requests_queued",
            "Generation requests waiting for a place in the engine (max_concurrent_requests).",
            registry=self.registry,
        )

    def _define_adapter_families(self) -> None:
        self._adapter_loads = self._adapter_family(
            Counter, "loraplane_serving_adapter_loads", "Adapter versions loaded into the engine.", ["adapter"]
        )
        self._adapter_load_failures = self._adapter_family(
            Counter,
            "loraplane_serving_adapter_load_failures",
            "Adapter loads that failed (missing or corrupt files, a refused config, an engine error).",
            ["adapter"],
        )
        self._adapter_cache_lookups = Counter(
            "loraplane_serving_adapter_cache_lookups",
            "Adapter version lookups by cache tier (engine, cpu, disk) and result (hit, miss).",
            ["tier", "result"],
            registry=self.registry,
        )
        self._adapter_load_duration = Histogram(
            "loraplane_serving_adapter_load_duration_seconds",
            "Time to load one adapter version into the engine, by source: copied back from host memory (cpu), "
            "or read from disk, fetched from the store first when not there.",
            ["source"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self._adapter_evictions = Counter(
            "loraplane_serving_adapter_evictions",
            "Adapter versions evicted from a tier to make room for another (least recently used first).",
            ["tier"],
            registry=self.registry,
        )
        self._adapters_resident = Gauge(
            "loraplane_serving_adapters_resident",
            "Adapter versions held now, by tier.",
            ["tier"],
            registry=self.registry,
        )
        self._adapter_cache_bytes = Gauge(
            "loraplane_serving_adapter_cache_bytes",
            "Bytes of verified adapter copies in the local disk cache.",
            registry=self.registry,
        )

    def _define_engine_families(self) -> None:
        self._engine_requests_running = Gauge(
            "loraplane_serving_engine_requests_running",
            "Requests the engine is generating tokens for.",
            registry=self.registry,
        )
        self._engine_requests_waiting = Gauge(
            "loraplane_serving_engine_requests_waiting",
            "Requests handed to the engine that have no token yet.",
            registry=self.registry,
        )
        self._engine_batch_size = Histogram(
            "loraplane_serving_engine_batch_size",
            "Sequences in each decoding step (engines that report it: transformers).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def _define_capture_families(self) -> None:
        self._captures = self._adapter_family(
            Counter,
            "loraplane_serving_captures",
            "Captured requests and feedback records, by outcome: stored, or dropped because the capture queue was "
            "full (queue_full), the store refused the write (store_error), capture was paused after one (paused) or "
            "the redaction hook failed on it (redaction_error).",
            ["adapter", "kind", "outcome"],
        )
        self._capture_paused = Gauge(
            "loraplane_serving_capture_paused",
            "1 while capture is paused after the store refused a write.",
            registry=self.registry,
        )

    def _adapter_family(self, kind: type[M], name: str, documentation: str, labels: list[str], **kwargs: object) -> M:
        family = kind(name, documentation, labels, registry=self.registry, **kwargs)  # type: ignore[arg-type]
        index = labels.index("adapter")
        self._adapter_index[family] = (index, 2 if labels[index + 1 : index + 2] == ["version"] else 1)
        return family

    def _series(self, family: M, *values: str) -> M:
        """`family.labels(*values)` with its adapter label bounded, remembered so the series can be
        removed if its adapter is demoted.

        An adapter without a label of its own counts under "_other", and so does its version
        (the label next to `adapter` where the family has one): the bound holds for both. A
        request that began while its adapter owned a label and goes on after the adapter was
        demoted counts under "_other" from then on, like every later request.
        """
        index, folded = self._adapter_index[family]
        adapter = values[index]
        if not adapter.startswith("_") and not self._labels.owns(adapter):
            values = (*values[:index], *[OTHER_LABEL] * folded, *values[index + folded :])
        self._seen.setdefault(values[index], set()).add((family, values))
        return family.labels(*values)

    def _forget_adapter(self, name: str) -> None:
        for family, values in self._seen.pop(name, set()):
            family.remove(*values)

    # -- adapter labels -------------------------------------------------------------------------

    def owns_label(self, name: str) -> bool:
        """Whether adapter `name` has an `adapter` label of its own now (without counting a request)."""
        return self._labels.owns(name)

    def adapter_label(self, name: str) -> str:
        """Count one request for adapter `name` and return the label it is counted under: its name, or "_other"."""
        return self._labels.label(name)

    def version_labels(self, name: str, version: int) -> VersionLabels:
        """Count one request for version `version` of adapter `name` and return the labels it is counted under."""
        label = self._labels.label(name)
        return VersionLabels(label, str(version) if label == name else OTHER_LABEL)

    # -- one generation request, counted under the labels `version_labels` gave (or BASE_MODEL) ---

    def prompt_tokens(self, served: VersionLabels, tokens: int) -> None:
        self._series(self._prompt_tokens, *served).inc(tokens)

    def first_token(self, served: VersionLabels, seconds: float) -> None:
        """The first token came `seconds` after the request arrived."""
        self._series(self._time_to_first_token, *served).observe(seconds)

    def inter_token(self, served: VersionLabels, seconds: float, tokens: int = 1) -> None:
        """`tokens` more tokens came, `seconds` apart each."""
        series = self._series(self._inter_token_latency, *served)
        for _ in range(tokens):
            series.observe(seconds)

    def tokens_generated(self, served: VersionLabels, tokens: int) -> None:
        self._series(self._generated_tokens, *served).inc(tokens)

    def generation_finished(self, served: VersionLabels, seconds: float) -> None:
        """The last token came `seconds` after the request arrived."""
        self._series(self._generation_latency, *served).observe(seconds)

    def feedback(self, served: VersionLabels) -> None:
        """A caller scored an answer of the version `served` names."""
        self._series(self._feedback, *served).inc()

    # -- adapter loads and the tiers that hold versions -----------------------------------------

    def adapter_loaded(self, adapter: str, source: LoadSource, seconds: float) -> None:
        """Adapter `adapter` was loaded into the engine from `source` in `seconds`. A load counts as a
        request in the label ranking: it is traffic for the adapter, whose first answer comes next."""
        self._series(self._adapter_loads, self.adapter_label(adapter)).inc()
        self._adapter_load_duration.labels(source).observe(seconds)

    def load_failed(self, adapter: str) -> None:
        """A load of adapter `adapter` failed; counted as a request in the label ranking, as a load is."""
        self._series(self._adapter_load_failures, self.adapter_label(adapter)).inc()

    def cache_lookup(self, tier: CacheTier, *, hit: bool) -> None:
        self._adapter_cache_lookups.labels(tier, "hit" if hit else "miss").inc()

    def evicted(self, tier: CacheTier) -> None:
        """One version left `tier` to make room for another."""
        self._adapter_evictions.labels(tier).inc()

    def resident(self, tier: CacheTier, versions: int) -> None:
        """`tier` holds `versions` versions now."""
        self._adapters_resident.labels(tier).set(versions)

    def disk_cache_bytes(self, total: int) -> None:
        """The verified copies on disk take `total` bytes now."""
        self._adapter_cache_bytes.set(total)

    # -- captured traffic --------------------------------------------------------------------------

    def captured(self, adapter: str, kind: CaptureKind, outcome: CaptureOutcome, records: int = 1) -> None:
        """`records` records of adapter `adapter`'s captures of `kind` ended with `outcome`."""
        self._series(self._captures, adapter, kind, outcome).inc(records)

    def capture_paused(self, paused: bool) -> None:
        self._capture_paused.set(float(paused))

    # -- the engine and the queue in front of it, read at every scrape ---------------------------

    def watch_engine(self, stats: Callable[[], EngineStats]) -> None:
        """Read the engine's running and waiting counts at every scrape."""
        self._engine_requests_running.set_function(lambda: stats().running)
        self._engine_requests_waiting.set_function(lambda: stats().waiting)

    def watch_queue(self, queued: Callable[[], int]) -> None:
        """Read the number of generation requests waiting for admission at every scrape."""
        self._requests_queued.set_function(queued)

    def engine_step(self, batch_size: int) -> None:
        """The engine ran one decoding step over `batch_size` sequences."""
        self._engine_batch_size.observe(batch_size)

    # -- every RPC --------------------------------------------------------------------------------

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
            self._series(self._requests, rpc, record.adapter, record.version, status).inc()
            self._request_duration.labels(rpc).observe(time.perf_counter() - started)
