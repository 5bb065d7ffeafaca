"""The committed Grafana dashboards are what scripts/dashboards.py builds, and every panel is usable.

The JSON under k8s/monitoring/dashboards/ is generated; these tests catch a hand edit or a
forgotten regeneration, a panel without a description or query, a dashboard that would not follow
the data source picker, and a query that Prometheus's parser (through promtool) rejects. Whether
each query returns data is for an end-to-end test with a real Prometheus (tests/support/dashboards.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from loraplane.drift import DriftStatistic
from tests.support.dashboards import DASHBOARDS_DIR, load_dashboards, panel_queries, panels, substitute, unbalanced

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "loraplane-training.json",
    "loraplane-serving.json",
    "loraplane-drift.json",
    "loraplane-releases.json",
    "loraplane-loop.json",
}
DRIFT_STATISTICS = [statistic.value for statistic in DriftStatistic]
# The ConfigMap holding a dashboard is applied with its JSON in an annotation by client-side
# `kubectl apply`, which Kubernetes caps at 256 KiB.
MAX_BYTES = 256 * 1024


def _generator() -> ModuleType:
    """scripts/dashboards.py as a module (scripts/ is not a package)."""
    name = "loraplane_scripts_dashboards"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    found = load_dashboards()
    assert set(found) == EXPECTED
    return found


def test_committed_json_is_what_the_generator_renders() -> None:
    rendered: dict[str, str] = _generator().render()
    assert set(rendered) == EXPECTED
    committed = {path.name for path in DASHBOARDS_DIR.glob("*.json")}
    assert committed == EXPECTED, f"unexpected dashboard files: {committed ^ EXPECTED}"
    for name, text in rendered.items():
        path = DASHBOARDS_DIR / name
        assert path.is_file() and path.read_text() == text, f"{name} is stale: run python scripts/dashboards.py"


def test_dashboards_have_stable_uids_tags_refresh_and_the_datasource_variable(dashboards: dict[str, dict]) -> None:
    for name, dashboard in dashboards.items():
        assert dashboard["uid"] == name.removesuffix(".json")
        assert "loraplane" in dashboard["tags"]
        assert dashboard["refresh"] == "30s"
        assert dashboard["time"]["from"].startswith("now-") and dashboard["time"]["to"] == "now"
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert len(json.dumps(dashboard).encode()) < MAX_BYTES, name


def test_every_panel_has_a_title_description_unit_and_query(dashboards: dict[str, dict]) -> None:
    for name, dashboard in dashboards.items():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(dashboard):
            where = f"{name}: panel {panel.get('title')!r}"
            assert panel.get("title"), where
            assert panel.get("description"), where
            assert panel["fieldConfig"]["defaults"].get("unit"), where
            assert panel["datasource"]["uid"] == "${datasource}", where
            targets = panel.get("targets", [])
            assert any(t.get("expr", "").strip() for t in targets), where
            for target in targets:
                assert target["datasource"]["uid"] == "${datasource}", where
                assert target.get("expr", "").strip(), where


def test_every_query_has_balanced_brackets(dashboards: dict[str, dict]) -> None:
    for name, dashboard in dashboards.items():
        for title, expr in panel_queries(dashboard):
            assert unbalanced(expr) is None, f"{name}: {title!r}: {unbalanced(expr)} in {expr}"


def test_every_query_parses_as_promql(dashboards: dict[str, dict], tmp_path: Path) -> None:
    """Prometheus's own parser reads every query: promtool has no command for a bare expression, but
    `promtool check rules` parses each recording rule's expr, so each query becomes one rule."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/install.sh --test installs it (apt: prometheus)"
    rules = [
        {"record": f"dashboard:{name.removesuffix('.json').replace('-', '_')}:query{index}", "expr": expr}
        for name, dashboard in dashboards.items()
        for index, (_, expr) in enumerate(panel_queries(dashboard))
    ]
    rules_file = tmp_path / "panel-queries.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "panel-queries", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_counters_are_rated_over_the_rate_interval(dashboards: dict[str, dict]) -> None:
    """Short windows use Grafana's $__rate_interval (always >= 4 scrapes); only job duration looks back 1h."""
    for dashboard in dashboards.values():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                if "rate(" in target["expr"] and "job_duration" not in target["expr"]:
                    assert "[$__rate_interval]" in target["expr"], target["expr"]


def test_adapter_variables(dashboards: dict[str, dict]) -> None:
    for name, metric in [
        ("loraplane-serving.json", "loraplane_serving_requests_total"),
        ("loraplane-drift.json", "loraplane_drift_window_requests"),
        ("loraplane-releases.json", "loraplane_release_stable_version"),
    ]:
        [adapter] = [v for v in dashboards[name]["templating"]["list"] if v["name"] == "adapter"]
        assert adapter["query"]["query"] == f"label_values({metric}, adapter)"
        assert adapter["multi"] and adapter["includeAll"] and adapter["allValue"] == ".*"


def test_drift_statistics_are_drawn_as_scores_against_the_score_that_is_over(dashboards: dict[str, dict]) -> None:
    drift = list(panels(dashboards["loraplane-drift.json"]))
    for statistic in DRIFT_STATISTICS:
        [panel] = [p for p in drift if f"({statistic})" in p["title"]]
        exprs = {t["refId"]: (t["expr"], t["legendFormat"]) for t in panel["targets"]}
        assert exprs["A"][0] == f'-log10(loraplane_drift_p_value{{adapter=~"$adapter",statistic="{statistic}"}})'
        assert exprs["B"] == ('-log10(max(loraplane_drift_p_value_threshold{adapter=~"$adapter"}))', "over")
        [override] = panel["fieldConfig"]["overrides"]
        assert override["matcher"] == {"id": "byFrameRefID", "options": "B"}
        properties = {p["id"]: p["value"] for p in override["properties"]}
        assert properties["color"]["fixedColor"] == "red" and properties["custom.lineStyle"]["fill"] == "dash"
    assert any("loraplane_drift_over" in expr for _, expr in panel_queries(dashboards["loraplane-drift.json"]))


def test_the_releases_dashboard_repeats_one_section_per_adapter_with_its_versions_apart(
    dashboards: dict[str, dict],
) -> None:
    releases = dashboards["loraplane-releases.json"]
    rows = [panel for panel in releases["panels"] if panel["type"] == "row"]
    assert [row.get("repeat") for row in rows] == [None, "adapter"]
    repeated = releases["panels"][releases["panels"].index(rows[1]) + 1 :]
    assert repeated and all(panel["type"] != "row" for panel in repeated), "the repeated row holds the rest"
    for panel in repeated:
        for target in panel["targets"]:
            if target["legendFormat"] not in ("floor", "canary share set"):  # the reference lines
                assert "version" in target["expr"] and "v{{version}}" in target["legendFormat"], panel["title"]
    [table] = [panel for panel in panels(releases) if panel["type"] == "table"]
    exprs = [target["expr"] for target in table["targets"]]
    assert all(expr.startswith("max by (adapter) (loraplane_release_") for expr in exprs)


def test_panel_queries_substitute_what_grafana_would() -> None:
    dashboard = {
        "templating": {"list": [{"name": "datasource"}, {"name": "adapter"}]},
        "panels": [
            {
                "type": "row",
                "title": "r",
                "panels": [{"title": "inside", "targets": [{"expr": 'up{a=~"${adapter}"}'}]}],
            },
            {"title": "p", "targets": [{"expr": 'rate(x{adapter=~"$adapter"}[$__rate_interval])'}, {"expr": ""}]},
        ],
    }
    assert panel_queries(dashboard) == [("inside", 'up{a=~".*"}'), ("p", 'rate(x{adapter=~".*"}[1m])')]
    assert substitute("$unknown $__interval", {"adapter"}) == "$unknown 1m"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('sum(rate(x{a="b"}[1m]))', None),
        ('x{a=~"(x|y"}', None),  # a bracket inside a string is the string's business
        ("sum(rate(x[1m])", "unclosed '(' at 3"),
        ("x{a='b']", "unexpected ']' at 7"),
        ('x{a="b}', 'unterminated " string'),
    ],
)
def test_unbalanced(expr: str, problem: str | None) -> None:
    assert unbalanced(expr) == problem


def test_provisioning_points_grafana_at_a_folder() -> None:
    config = yaml.safe_load((DASHBOARDS_DIR / "provisioning.yaml").read_text())
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
