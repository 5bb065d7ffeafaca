"""Read loraplane's generated Grafana dashboards the way a test needs them: panels and runnable PromQL.

Grafana expands `$__rate_interval` and template variables before a query reaches Prometheus; a test
that sends a panel's expression to Prometheus itself has to do the same, or the query does not
parse. `panel_queries` makes that substitution, so an end-to-end test can run every panel against
a real Prometheus and see that each metric name and label it uses exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "k8s" / "monitoring" / "dashboards"
# What Grafana's interval variables become: one minute is at least four scrapes at every scrape
# interval the tests and the k8s manifests use, so rate() always has points to work with.
INTERVAL = "1m"
INTERVAL_VARIABLES = ("__rate_interval", "__interval", "__range")
# `$name`, `${name}` and `${name:format}`; `[[name]]` is Grafana's old syntax, not used here.
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_PAIRS = {")": "(", "]": "[", "}": "{"}

Dashboard = dict[str, Any]
Panel = dict[str, Any]
RELEASES_DASHBOARD = "loraplane-releases.json"
LOOP_DASHBOARD = "loraplane-loop.json"
"""Its panels need releases to have happened: tests/e2e/test_releases.py runs its queries, test_drift the rest."""


def load_dashboards() -> dict[str, Dashboard]:
    """File name -> parsed JSON of every committed dashboard."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard_json: Dashboard) -> Iterator[Panel]:
    """Every panel that shows data, rows left out (a collapsed row holds its panels inside it)."""
    for panel in dashboard_json.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def template_variables(dashboard_json: Dashboard) -> set[str]:
    return {variable["name"] for variable in dashboard_json.get("templating", {}).get("list", [])}


def substitute(expr: str, variables: set[str]) -> str:
    """`expr` as Prometheus can run it: interval variables -> 1m, the dashboard's variables -> `.*`.

    `.*` is what the variables' "All" option sends, so a query matches every adapter.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in INTERVAL_VARIABLES:
            return INTERVAL
        if name in variables:
            return ".*"
        return match.group(0)

    return _VARIABLE.sub(replace, expr)


def panel_queries(dashboard_json: Dashboard) -> list[tuple[str, str]]:
    """(panel title, runnable PromQL) for every query of every panel, in dashboard order."""
    variables = template_variables(dashboard_json)
    return [
        (panel["title"], substitute(target["expr"], variables))
        for panel in panels(dashboard_json)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def queries_without_data(
    query_range: Callable[[str, float, float], list[dict]], names: Iterable[str], start: float, end: float
) -> list[str]:
    """`dashboard: panel: query` for each query of the dashboards `names` that drew nothing in [start, end]."""
    dashboards = load_dashboards()
    return [
        f"{name}: {title}: {expr}"
        for name in names
        for title, expr in panel_queries(dashboards[name])
        if not query_range(expr, start, end)
    ]


def unbalanced(expr: str) -> str | None:
    """Why `expr`'s brackets do not pair up, or None when they do; quoted strings are skipped.

    Not a PromQL parser (promtool has no command that parses a bare expression), but it catches
    the mistake that string-built queries make most: a brace or parenthesis lost in an f-string.
    """
    stack: list[tuple[str, int]] = []
    quote: str | None = None
    escaped = False
    for position, char in enumerate(expr):
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote != "`":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append((char, position))
        elif char in _PAIRS:
            if not stack or stack[-1][0] != _PAIRS[char]:
                return f"unexpected {char!r} at {position}"
            stack.pop()
    if quote is not None:
        return f"unterminated {quote} string"
    if stack:
        char, position = stack[-1]
        return f"unclosed {char!r} at {position}"
    return None
