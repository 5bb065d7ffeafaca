"""The docs site: every page in the nav, and the generated pages true to the code and the results.

The configuration and benchmark tables are generated when the site is built, by the hooks in
scripts/mkdocs_hooks.py; these tests run the same hooks on the same pages, so what they check is
what the built site shows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsError

from loraplane.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results"
SENTINEL = "zz-docs-sentinel"


def _hooks() -> ModuleType:
    """scripts/mkdocs_hooks.py as MkDocs loads it (scripts/ is not a package)."""
    name = "loraplane_mkdocs_hooks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "mkdocs_hooks.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _nav_pages() -> list[str]:
    class _Loader(yaml.SafeLoader):
        """mkdocs.yml names a Python function by a tag; the nav does not need it."""

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)  # noqa: S506 (a safe loader)
    return [page for entry in config["nav"] for page in entry.values()]


def test_every_page_is_in_the_nav_once_and_every_nav_entry_is_a_page() -> None:
    nav = _nav_pages()
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))


# -- the configuration page --------------------------------------------------------------


def _configuration_rows() -> dict[str, dict[str, str]]:
    """The built configuration page's tables: section heading -> {variable: description}."""
    page = _hooks().expand_markers((DOCS / "configuration.md").read_text())
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in page.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), {})
        elif line.startswith("| `LORAPLANE_"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            current[cells[0].strip("`")] = cells[-1]
    return sections


def _declared(settings: type[BaseSettings], parent: type[BaseSettings] | None) -> dict[str, str]:
    inherited = set(parent.model_fields) if parent else set()
    return {
        f"LORAPLANE_{name.upper()}": " ".join((field.description or "").split()).replace("|", "\\|")
        for name, field in settings.model_fields.items()
        if name not in inherited
    }


def test_the_configuration_page_lists_every_setting_with_its_own_description() -> None:
    sections = _configuration_rows()
    config_docs = _hooks().gen_config_docs
    assert list(sections) == [title for title, _, _ in config_docs.SECTIONS]
    for title, settings, parent in config_docs.SECTIONS:
        assert sections[title] == _declared(settings, parent), f"section {title!r} differs from {settings.__name__}"


def _documented_variables() -> list[tuple[type[BaseSettings], str]]:
    classes = {title: settings for title, settings, _ in _hooks().gen_config_docs.SECTIONS}
    return [(classes[title], variable) for title, rows in _configuration_rows().items() for variable in rows]


@pytest.mark.parametrize(("settings", "variable"), _documented_variables(), ids=lambda v: getattr(v, "__name__", v))
def test_each_documented_variable_is_read_by_its_service(
    settings: type[BaseSettings], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set to a value no default has, the variable either becomes the setting or is refused by it:
    either way the class read it, so the page names a variable the service really reads."""
    for name in [n for n in os.environ if n.startswith("LORAPLANE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(variable, SENTINEL)
    try:
        loaded = settings()
    except (ValidationError, SettingsError):
        return
    assert SENTINEL in str(getattr(loaded, variable.removeprefix("LORAPLANE_").lower()))


def test_a_setting_without_a_description_fails_the_configuration_page() -> None:
    class Undescribed(CommonSettings):
        described: int = Field(1, description="Has one.")
        undescribed_limit: int = 3

    config_docs = _hooks().gen_config_docs
    with pytest.raises(config_docs.UndocumentedSetting, match="undescribed_limit"):
        config_docs.settings_table(Undescribed, CommonSettings)


# -- the benchmark tables --------------------------------------------------------------------


def _markers() -> set[str]:
    return {m for page in DOCS.glob("*.md") for m in re.findall(r"<!-- bench: (\S+) -->", page.read_text())}


def test_every_results_file_is_shown_on_a_docs_page_and_every_named_file_exists() -> None:
    assert _markers() == {p.name for p in RESULTS.glob("*.json")}


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("*.json")))
def test_each_results_file_is_headed_by_its_machine_and_date(name: str) -> None:
    document = json.loads((RESULTS / name).read_text())
    heading = _hooks().gen_bench_docs.render(RESULTS / name).splitlines()[0]
    assert f"bench/results/{name}" in heading
    machine = document.get("machine")
    if machine:
        assert machine["platform"] in heading and f"{machine['cpu_count']} CPU cores" in heading
    else:
        assert "machine: not recorded in the file" in heading
    if document.get("date"):
        assert f"date: {document['date'][:10]}." in heading
    elif run := re.search(r"/runs/(\d{4})(\d{2})(\d{2})-", str(document.get("logs"))):
        assert "date: {}-{}-{} (from the run folder's name)".format(*run.groups()) in heading
    else:
        assert "date: not recorded in the file" in heading


def _table_row(markdown: str, label: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_serving_throughput_cells_are_the_results_files_figures() -> None:
    document = json.loads((RESULTS / "serving-smollm2-cpu.json").read_text())
    rendered = _hooks().gen_bench_docs.render(RESULTS / "serving-smollm2-cpu.json")
    systems = list(dict.fromkeys(row["system"] for row in document["results"]))
    for adapters, traffic, label in ((0, "base", "0 (base model)"), (32, "zipf", "32 (zipf)")):
        figures = {
            r["system"]: r["tokens_per_s"]
            for r in document["results"]
            if (r["adapters"], r["traffic"]) == (adapters, traffic)
        }
        assert _table_row(rendered, label)[: len(systems)] == [f"{figures[s]:,.1f}" for s in systems]


def test_repeated_runs_show_their_range_beside_the_figure(tmp_path: Path) -> None:
    row = {"system": "ours-transformers", "adapters": 8, "traffic": "zipf", "tokens_per_s": 120.0, "error": None}
    document: dict[str, Any] = {
        "model": "tiny",
        "requests": 4,
        "concurrency": 4,
        "max_tokens": 8,
        "batch_size": 4,
        "repeats": 2,
        "duration_s": 60.0,
        "results": [{**row, "tokens_per_s_runs": [110.0, 131.5]}],
    }
    path = tmp_path / "serving-tiny-cpu.json"
    path.write_text(json.dumps(document))
    assert _table_row(_hooks().gen_bench_docs.render(path), "8 (zipf)") == ["120.0 (110.0-131.5)"]


def test_a_results_file_without_machine_or_date_says_so(tmp_path: Path) -> None:
    figures = {"requests": 8, "p50_latency_s": 1.0, "p99_latency_s": 2.0, "p50_ttft_s": 0.1, "p99_ttft_s": 0.2}
    document = {
        "model": "tiny",
        "adapters": 2,
        "rounds": 1,
        "load": {"max_tokens": 8, "concurrency": 2},
        "drift_off": figures,
        "drift_on": figures,
        "on_over_off": dict.fromkeys(figures, 1.0),
    }
    path = tmp_path / "drift-tiny-cpu.json"
    path.write_text(json.dumps(document))
    heading = _hooks().gen_bench_docs.render(path).splitlines()[0]
    assert "machine: not recorded in the file; date: not recorded in the file" in heading


def test_a_results_file_no_renderer_knows_fails(tmp_path: Path) -> None:
    path = tmp_path / "new-benchmark.json"
    path.write_text(json.dumps({"model": "tiny", "rows": []}))
    with pytest.raises(_hooks().gen_bench_docs.UnknownResults):
        _hooks().gen_bench_docs.render(path)


def test_a_marker_naming_a_missing_results_file_fails() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-run.json"):
        _hooks().expand_markers("text\n<!-- bench: no-such-run.json -->\n")


def test_the_readme_table_of_held_out_tasks_is_the_results_files() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("<!-- held-out-tasks -->\n", 1)[1].split("\n<!-- /held-out-tasks -->", 1)[0]
    assert shown == _hooks().gen_bench_docs.held_out_tasks_summary()
