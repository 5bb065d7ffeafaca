"""What a system reports per request, and the one place those reports become a result row.

Systems report raw per-request timings; all summarising happens here, so every system's
tokens/s and percentiles are computed the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestResult:
    """One request's outcome. `ttft_s` is None where the system cannot observe a first token."""

    latency_s: float | None = None
    ttft_s: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class RowRun:
    """One row as a system ran it: `wall_s` from the first request sent to the last answered."""

    adapters: int
    traffic: str
    wall_s: float
    results: list[RequestResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "adapters": self.adapters,
            "traffic": self.traffic,
            "wall_s": self.wall_s,
            "results": [asdict(r) for r in self.results],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowRun:
        results = [RequestResult(**r) for r in data["results"]]
        return cls(int(data["adapters"]), str(data["traffic"]), float(data["wall_s"]), results)


def merged(runs: list[RowRun]) -> RowRun:
    """Repeated runs of one row as one: all their requests over their summed wall time, so its
    tokens/s is the mean throughput of the repeats."""
    first, wall = runs[0], sum(run.wall_s for run in runs)
    return RowRun(first.adapters, first.traffic, wall, [result for run in runs for result in run.results])


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarize(system: str, run: RowRun) -> dict[str, Any]:
    """A result row: throughput over the row's wall time, latency and TTFT percentiles, errors.

    Only successful requests count towards tokens and percentiles; failures are counted in
    `errors` and the first failure's message is kept to say what went wrong.
    """
    ok = [r for r in run.results if r.error is None]
    failed = [r for r in run.results if r.error is not None]
    latencies = [r.latency_s for r in ok if r.latency_s is not None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tokens = sum(r.tokens for r in ok)
    return {
        "system": system,
        "adapters": run.adapters,
        "traffic": run.traffic,
        "tokens_per_s": _rounded(tokens / run.wall_s if run.wall_s > 0 and ok else None, 2),
        "p50_latency_s": _rounded(percentile(latencies, 50)),
        "p99_latency_s": _rounded(percentile(latencies, 99)),
        "p50_ttft_s": _rounded(percentile(ttfts, 50)),
        "p99_ttft_s": _rounded(percentile(ttfts, 99)),
        "errors": len(failed),
        "completion_tokens": tokens,
        "wall_s": _rounded(run.wall_s, 3),
        "error": failed[0].error if failed else None,
    }


def failed_row(system: str, adapters: int, traffic: str, requests: int, error: str) -> dict[str, Any]:
    """A result row for a row the system never ran: every request counts as an error."""
    return {
        "system": system,
        "adapters": adapters,
        "traffic": traffic,
        "tokens_per_s": None,
        "p50_latency_s": None,
        "p99_latency_s": None,
        "p50_ttft_s": None,
        "p99_ttft_s": None,
        "errors": requests,
        "completion_tokens": 0,
        "wall_s": None,
        "error": error,
    }


def latency_summary(results: list[RequestResult]) -> dict[str, Any]:
    """Requests, and p50/p99 of latency and time to first token, over `results`."""
    latencies = [r.latency_s for r in results if r.latency_s is not None]
    ttfts = [r.ttft_s for r in results if r.ttft_s is not None]
    return {
        "requests": len(results),
        "p50_latency_s": percentile(latencies, 50),
        "p99_latency_s": percentile(latencies, 99),
        "p50_ttft_s": percentile(ttfts, 50),
        "p99_ttft_s": percentile(ttfts, 99),
    }
