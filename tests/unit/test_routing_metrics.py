"""The gateway-routing metrics, read from a registry as Prometheus would scrape them."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loraplane.artifact import Manifest
from serving_svc.adapters import ResolvedAdapter
from serving_svc.engines.base import EngineStats
from serving_svc.routing_metrics import RoutingCollector
from tests.support.artifact_contract import make_draft


def resolved_adapter(name: str, version: int) -> ResolvedAdapter:
    manifest = Manifest(**make_draft(name).model_dump(), version=version, created_at=datetime.now(UTC), files={})
    return ResolvedAdapter(manifest, manifest_sha256="0" * 64, uri=f"file:///store/adapters/{name}/v{version}")


def _scrape(collector: RoutingCollector) -> dict[str, list]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_queue_batch_use_and_adapters_are_exported_under_vllms_names() -> None:
    alpha1, alpha2, beta1 = resolved_adapter("alpha", 1), resolved_adapter("alpha", 2), resolved_adapter("beta", 1)
    newest = {"alpha": 2, "beta": 1}
    scraped = _scrape(
        RoutingCollector(
            engine_stats=lambda: EngineStats(running=6, waiting=2),
            queued=lambda: 3,
            running_adapters=lambda: [alpha1, alpha2],
            waiting_adapters=lambda: [beta1],
            newest_version=newest.get,
            max_lora=4,
            max_batch_size=8,
        )
    )
    assert [s.value for s in scraped["vllm:num_requests_waiting"]] == [5.0]
    assert [s.value for s in scraped["vllm:num_requests_running"]] == [6.0]
    for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
        assert [s.value for s in scraped[name]] == [0.75]
    [info] = scraped["vllm:lora_requests_info"]
    # alpha@v1 is not what the name alpha means now, so only its pinned name routes to it.
    assert info.labels == {
        "max_lora": "4",
        "running_lora_adapters": "alpha@v1,alpha@v2,alpha",
        "waiting_lora_adapters": "beta@v1,beta",
    }
    assert info.value > 1.7e9  # the time of the reading


def test_an_idle_replica_has_empty_adapter_lists() -> None:
    scraped = _scrape(
        RoutingCollector(
            engine_stats=lambda: EngineStats(running=0, waiting=0),
            queued=lambda: 0,
            running_adapters=list,
            waiting_adapters=list,
            newest_version=lambda name: None,
            max_lora=8,
            max_batch_size=32,
        )
    )
    [info] = scraped["vllm:lora_requests_info"]
    assert (info.labels["running_lora_adapters"], info.labels["waiting_lora_adapters"]) == ("", "")
    assert [s.value for s in scraped["vllm:kv_cache_usage_perc"]] == [0.0]
