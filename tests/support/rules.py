"""loraplane's Prometheus rule files (k8s/monitoring/rules/), for tests that load them into Prometheus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "k8s" / "monitoring" / "rules"
UNIT_TEST_SUFFIX = ".test.yaml"
"""promtool unit tests lie beside their rule file: x.rules.yaml is tested by x.rules.test.yaml."""


def rule_files() -> list[Path]:
    """Every rule file under k8s/monitoring/rules/ (not the promtool tests beside them), sorted."""
    return sorted(p for p in RULES_DIR.glob("*.yaml") if not p.name.endswith(UNIT_TEST_SUFFIX))


def with_short_durations(src: Path, dst_dir: Path, seconds: int) -> Path:
    """Write a copy of rule file `src` into `dst_dir` (same name) in which every alert has `for: {seconds}s`.

    For a real Prometheus in a test, where alerts must fire within a minute rather than after their
    10 or 30 minutes: an alert that had no `for` gets one too, so every alert fires `seconds` after its
    condition holds. Expressions (and their rate/increase windows) are unchanged. Comments are not kept.
    """
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, not {seconds}")
    content: dict[str, Any] = yaml.safe_load(src.read_text())
    for group in content["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = f"{seconds}s"
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    dst.write_text(yaml.safe_dump(content, sort_keys=False, width=1000))
    return dst
