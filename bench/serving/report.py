"""The benchmark's answer: the JSON document, the ratios that matter, and a table for people.

Ratios are of throughput (tokens/s) and always against systems measured in the same run on the
same machine; a ratio whose either side failed or was not run is null rather than missing.
"""

from __future__ import annotations

from typing import Any

BASELINES = ("raw-vllm", "peft-mixed")
"""What ours must beat: the faster of raw vLLM and peft with mixed-adapter batches, per row."""


def _row_key(adapters: int, traffic: str) -> str:
    return f"{adapters}/{traffic}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def ratios(results: list[dict[str, Any]], ours: str) -> dict[str, Any]:
    """For each row: ours against the best baseline, against itself at 1 adapter and on the base
    model, and against peft-sequential, and its HTTP API against its gRPC API; `ours` is the
    engine auto picks on this machine."""
    speed = {(r["system"], r["adapters"], r["traffic"]): r["tokens_per_s"] for r in results}
    base_traffic = next((r["traffic"] for r in results if r["adapters"] == 0), "base")
    rows: dict[str, dict[str, Any]] = {}
    for adapters, traffic in sorted({(r["adapters"], r["traffic"]) for r in results}):
        mine = speed.get((ours, adapters, traffic))
        baselines = {name: speed.get((name, adapters, traffic)) for name in BASELINES}
        measured = {name: value for name, value in baselines.items() if value}
        best = max(measured, key=lambda name: measured[name]) if measured else None
        entry: dict[str, Any] = {
            "ours_tokens_per_s": mine,
            "best_baseline": best,
            "vs_best_baseline": _ratio(mine, measured[best]) if best else None,
            "vs_peft_sequential": _ratio(mine, speed.get(("peft-sequential", adapters, traffic))),
        }
        entry["http_vs_grpc"] = _ratio(speed.get((f"{ours}-http", adapters, traffic)), mine)
        if adapters > 0:
            entry["vs_ours_1_adapter"] = _ratio(mine, speed.get((ours, 1, traffic)))
            entry["vs_ours_base"] = _ratio(mine, speed.get((ours, 0, base_traffic)))
        rows[_row_key(adapters, traffic)] = entry
    return {"ours": ours, "metric": "tokens_per_s", "rows": rows}


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(document: dict[str, Any]) -> str:
    """Results, ratios and cold load as compact markdown tables."""
    lines = [
        f"model {document['model']}, {document['requests']} requests, concurrency {document['concurrency']}, "
        f"{document['max_tokens']} tokens each",
        "",
        "| system | adapters | traffic | tok/s | p50 lat s | p99 lat s | p50 TTFT s | p99 TTFT s | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in document["results"]:
        lines.append(
            f"| {r['system']} | {r['adapters']} | {r['traffic']} | {_cell(r['tokens_per_s'], 1)} | "
            f"{_cell(r['p50_latency_s'])} | {_cell(r['p99_latency_s'])} | {_cell(r['p50_ttft_s'])} | "
            f"{_cell(r['p99_ttft_s'])} | {r['errors']} |"
        )
    ratio_rows = document["ratios"]["rows"]
    lines += [
        "",
        f"ratios of {document['ratios']['ours']} tokens/s",
        "",
        "| adapters/traffic | vs best baseline | best baseline | vs 1 adapter | vs base | vs peft-sequential "
        "| HTTP vs gRPC |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for key, entry in ratio_rows.items():
        lines.append(
            f"| {key} | {_cell(entry['vs_best_baseline'])} | {_cell(entry['best_baseline'])} | "
            f"{_cell(entry.get('vs_ours_1_adapter'))} | {_cell(entry.get('vs_ours_base'))} | "
            f"{_cell(entry['vs_peft_sequential'])} | {_cell(entry['http_vs_grpc'])} |"
        )
    if document["cold_load"]:
        lines += [
            "",
            "| cold load | adapter | MB | warm TTFT s | cold TTFT s | load ms |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for system, cold in document["cold_load"].items():
            if "error" in cold:
                lines.append(f"| {system} | - | - | - | - | failed: {cold['error'][:60]} |")
                continue
            for shape, entry in cold.items():
                if shape == "slots":
                    continue
                lines.append(
                    f"| {system} | {shape} | {_cell(entry['adapter_bytes'] / 1e6, 1)} | "
                    f"{_cell(entry['warm_ttft_median_s'])} | {_cell(entry['cold_ttft_median_s'])} | "
                    f"{_cell(entry['cold_load_ms'], 1)} |"
                )
    return "\n".join(lines)
