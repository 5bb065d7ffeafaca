"""The Prometheus rules in k8s/monitoring/: valid, unit-tested with promtool, documented, packaged.

`promtool check rules` and `promtool test rules` (Debian's `prometheus` package, which
scripts/install.sh --test installs) do the real checking; the assertions below hold the rules to
the conventions promtool cannot see: every alert is documented and has a test case that fires it
and one that keeps it silent, no rule names a `job` value, and the PrometheusRule for the
operator and the ConfigMap for a plain Prometheus carry exactly the rule file's groups.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kustomize import one, render
from tests.support.rules import RULES_DIR, UNIT_TEST_SUFFIX, rule_files, with_short_durations

MONITORING = RULES_DIR.parent
PROMETHEUS_RULE = MONITORING / "prometheus-rule.yaml"
RULES = RULES_DIR / "loraplane.rules.yaml"
ANNOTATIONS = {"summary", "description", "runbook"}
RECORD_NAME = re.compile(r"^loraplane:[a-z0-9_]+(:[a-z0-9]+)?$")
REFRESH = (
    "refresh it from k8s/monitoring/: { sed -n '1,/^spec:/p' prometheus-rule.yaml; "
    "sed -e '/^#/d' -e 's/^./  &/' rules/loraplane.rules.yaml; } > new.yaml && mv new.yaml prometheus-rule.yaml"
)
Rule = dict[str, Any]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: scripts/install.sh --test installs it (apt: prometheus)", pytrace=False)
    return found


def _promtool_run(*args: str | Path, cwd: Path = RULES_DIR) -> None:
    result = subprocess.run([_promtool(), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"


def _unit_tests_of(rule_file: Path) -> Path:
    return rule_file.with_name(rule_file.name.removesuffix(".yaml") + UNIT_TEST_SUFFIX)


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules(rule_file: Path) -> list[Rule]:
    return [rule for group in _load(rule_file)["groups"] for rule in group["rules"]]


def _alerts(rule_file: Path) -> list[Rule]:
    return [rule for rule in _rules(rule_file) if "alert" in rule]


@pytest.fixture(params=rule_files(), ids=lambda path: path.name)
def rule_file(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_the_rule_files_are_there() -> None:
    assert RULES in rule_files()


def test_promtool_check_rules(rule_file: Path) -> None:
    _promtool_run("check", "rules", rule_file)


def test_promtool_unit_tests(rule_file: Path) -> None:
    tests = _unit_tests_of(rule_file)
    assert tests.is_file(), f"{rule_file.name} has no promtool unit tests beside it ({tests.name})"
    _promtool_run("test", "rules", tests.name)


def test_every_alert_is_documented(rule_file: Path) -> None:
    for alert in _alerts(rule_file):
        name = alert["alert"]
        annotations = alert.get("annotations", {})
        assert annotations.keys() >= ANNOTATIONS, f"{name} lacks {sorted(ANNOTATIONS - annotations.keys())}"
        assert all(annotations[key].strip() for key in ANNOTATIONS), f"{name} has an empty annotation"
        assert "{{" in annotations["description"], f"{name}: the description should name the series ({{ $labels }})"
        assert alert.get("labels", {}).get("severity") in {"warning", "critical"}, f"{name} has no severity"


def test_every_alert_fires_in_one_test_and_stays_silent_in_another(rule_file: Path) -> None:
    cases = [case for test in _load(_unit_tests_of(rule_file))["tests"] for case in test.get("alert_rule_test", [])]
    for name in (alert["alert"] for alert in _alerts(rule_file)):
        firing = [case for case in cases if case["alertname"] == name and case.get("exp_alerts")]
        silent = [case for case in cases if case["alertname"] == name and not case.get("exp_alerts")]
        assert firing, f"no promtool test case makes {name} fire"
        assert silent, f"no promtool test case checks that {name} stays silent"
        for case in firing:
            for expected in case["exp_alerts"]:
                assert expected.get("exp_annotations", {}).keys() >= ANNOTATIONS, (
                    f"{name} at {case['eval_time']}: expect all of {sorted(ANNOTATIONS)}"
                )


def test_rules_name_no_job_and_follow_the_naming(rule_file: Path) -> None:
    for rule in _rules(rule_file):
        name = rule.get("record") or rule["alert"]
        assert not re.search(r"\bjob\s*(=|!=|=~|!~)\s*\"", rule["expr"]), f"{name} names a job; the scrape config does"
        if "record" in rule:
            assert RECORD_NAME.match(rule["record"]), f"{name}: recording rules are loraplane:<what>[:<window>]"
        else:
            assert re.fullmatch(r"Loraplane[A-Z][A-Za-z]+", rule["alert"]), f"{name}: alerts are LoraplaneCamelCase"


def test_the_prometheus_rule_has_the_rule_files_groups() -> None:
    resource = _load(PROMETHEUS_RULE)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == _load(RULES)["groups"], f"{PROMETHEUS_RULE.name} is out of date: {REFRESH}"


def _one(kind: str, name: str) -> Rule:
    return one(render("monitoring"), kind, name)


def test_kustomize_renders_the_rules_for_the_operator_and_for_a_plain_prometheus() -> None:
    rule = _one("PrometheusRule", "loraplane")
    assert rule["spec"]["groups"] == _load(RULES)["groups"]
    config_map = _one("ConfigMap", "loraplane-prometheus-rules")
    assert config_map["data"] == {RULES.name: RULES.read_text()}
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is needed to check k8s/: pip install kubernetes-validate", pytrace=False)
    kubernetes_validate.validate(config_map, "1.32", strict=True)


def test_with_short_durations(tmp_path: Path) -> None:
    short = with_short_durations(RULES, tmp_path / "rules", 5)
    assert short == tmp_path / "rules" / RULES.name
    alerts = _alerts(short)
    assert alerts and all(alert["for"] == "5s" for alert in alerts)
    assert [a["expr"] for a in alerts] == [a["expr"] for a in _alerts(RULES)]
    assert [r for r in _rules(short) if "record" in r] == [r for r in _rules(RULES) if "record" in r]
    _promtool_run("check", "rules", short)
