"""The alert rules (helm/inference-sidecar/files/alerts.yaml) with the real promtool:
valid, each alert firing and staying silent on synthetic series, shipped unchanged
in the chart's PrometheusRule, documented with a runbook, and using only metric
names the server documents (or that tests/helm/metric_names.py lists as pending)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.helm import metric_names
from tests.helm.chart import CHART, OPERATOR_API, ROOT, Helm, one, run_promtool

ALERTS = CHART / "files" / "alerts.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
OPERATIONS = ROOT / "docs" / "operations.md"


def all_rules() -> list[dict[str, Any]]:
    """Every rule of the file: recording rules and alerts."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rules() -> list[dict[str, Any]]:
    """The alerting rules."""
    return [rule for rule in all_rules() if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    """The recording rules (the fleet-wide drift statistics)."""
    return [rule for rule in all_rules() if "record" in rule]


def test_rules_file_is_valid(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(all_rules())} rules found" in out


def test_recording_rules_follow_the_naming_convention() -> None:
    """level:metric:operations, recorded before use, each checked by a promtool unit test."""
    tests = UNIT_TESTS.read_text()
    names = [rule["record"] for rule in recording_rules()]
    assert names, "the fleet drift rules are recording rules"
    for name in names:
        assert re.fullmatch(r"sidecar:[a-z0-9_]+(:[a-z0-9_]+)?", name), name
    used = {n for rule in all_rules() for n in re.findall(r"sidecar:[a-z0-9_:]+", rule["expr"])}
    assert used <= set(names), f"rules read recorded series nobody records: {used - set(names)}"
    tested = {n for n in names if n in tests}
    assert {"sidecar:drift_fleet_chi2:1h", "sidecar:drift_fleet_psi:1h"} <= tested


def test_each_alert_fires_and_stays_silent_in_promtool_unit_tests(promtool: str) -> None:
    out = run_promtool(promtool, "test", "rules", str(UNIT_TESTS))
    assert "SUCCESS" in out


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    assert tests["rule_files"] == ["../../helm/inference-sidecar/files/alerts.yaml"]
    cases: dict[str, dict[str, bool]] = {}
    for group in tests["tests"]:
        series_keys = {
            m.group(0)
            for s in group["input_series"]
            for m in re.finditer(r'(model|gpu)="[^"]*"', s["series"])
        }
        for check in group["alert_rule_test"]:
            case = cases.setdefault(check["alertname"], {"fires": False, "silent": False})
            fired = check["exp_alerts"]
            case["fires"] |= bool(fired)
            fired_keys = {
                f'{k}="{v}"'
                for a in fired
                for k, v in a["exp_labels"].items()
                if k in ("model", "gpu")
            }
            # Silent: an evaluation with no alert, or series that do not fire beside ones that do.
            case["silent"] |= not fired or bool(series_keys - fired_keys)
    names = [rule["alert"] for rule in rules()]
    assert sorted(cases) == sorted(names), "every alert needs unit tests, and only alerts"
    for name, case in cases.items():
        assert case == {"fires": True, "silent": True}, name


def test_chart_ships_the_rules_unchanged(helm: Helm, promtool: str, tmp_path: Path) -> None:
    objects = helm.template(
        {"prometheus": {"rules": {"labels": {"role": "alerts"}}}}, (OPERATOR_API,)
    )
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["role"] == "alerts"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    run_promtool(promtool, "check", "rules", str(rendered))
    # Without the Operator, or when disabled, there is no PrometheusRule.
    assert not [o for o in helm.template() if o["kind"] == "PrometheusRule"]
    disabled = helm.template({"prometheus": {"rules": {"enabled": False}}}, (OPERATOR_API,))
    assert not [o for o in disabled if o["kind"] == "PrometheusRule"]


def test_every_alert_has_a_runbook() -> None:
    doc = OPERATIONS.read_text()
    for rule in rules():
        name = rule["alert"]
        assert re.search(rf"^### {name}$", doc, re.M), f"docs/operations.md: no runbook for {name}"
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "description"} <= set(rule["annotations"])


def test_rules_use_only_documented_metric_names() -> None:
    used = metric_names.metric_names(rule["expr"] for rule in all_rules())
    metric_names.check(used, metric_names.PENDING)
