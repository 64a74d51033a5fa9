"""The alert rules (helm/inference-sidecar/files/alerts.yaml) with the real promtool:
valid, each alert firing and staying silent on synthetic series, shipped unchanged
in the chart's PrometheusRule, documented with a runbook, and using only metric
names the server documents."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import CHART, OPERATOR_API, ROOT, Helm, one

ALERTS = CHART / "files" / "alerts.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
OPERATIONS = ROOT / "docs" / "operations.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

#: Metric names the rules use that docs/metrics.md does not list yet, by the issue
#: that adds them. The names come from shared/design/METRICS.md and the branches
#: in progress; when a name lands in docs/metrics.md, take it out of here (a test
#: says which), and fix the rules if the documented name differs.
PENDING: dict[str, str] = {
    "sidecar_model_ready": "#4 exporters",
    "sidecar_inference_requests_total": "#4 exporters",
    "sidecar_request_duration_seconds": "#4 exporters",
    "sidecar_rejected_requests_total": "#4 exporters",
    "sidecar_nonfinite_outputs_total": "#4 exporters",
    "sidecar_gpu_memory_used_bytes": "#4 exporters",
    "sidecar_gpu_memory_total_bytes": "#4 exporters",
    "sidecar_drift_detected": "#6 drift",
    "sidecar_drift_evaluations_total": "#6 drift",
    "sidecar_drift_last_evaluation_timestamp_seconds": "#6 drift",
    "sidecar_labeled_predictions_total": "#7 labels",
    "sidecar_label_delay_seconds": "#7 labels",
    "sidecar_pending_predictions": "#7 labels",
    "sidecar_labels_received_total": "#7 labels",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail(
            "promtool not found on PATH: the alert tests need it. `bash scripts/test.sh` "
            "installs it (Debian package prometheus)."
        )
    return found


def _promtool(promtool: str, *args: str) -> str:
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_file_is_valid(promtool: str) -> None:
    out = _promtool(promtool, "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_each_alert_fires_and_stays_silent_in_promtool_unit_tests(promtool: str) -> None:
    out = _promtool(promtool, "test", "rules", str(UNIT_TESTS))
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
    names = [rule["alert"] for rule in _rules()]
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
    _promtool(promtool, "check", "rules", str(rendered))
    # Without the Operator, or when disabled, there is no PrometheusRule.
    assert not [o for o in helm.template() if o["kind"] == "PrometheusRule"]
    disabled = helm.template({"prometheus": {"rules": {"enabled": False}}}, (OPERATOR_API,))
    assert not [o for o in disabled if o["kind"] == "PrometheusRule"]


def test_every_alert_has_a_runbook() -> None:
    doc = OPERATIONS.read_text()
    for rule in _rules():
        name = rule["alert"]
        assert re.search(rf"^### {name}$", doc, re.M), f"docs/operations.md: no runbook for {name}"
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "description"} <= set(rule["annotations"])


def _used_metrics() -> set[str]:
    names = {m for rule in _rules() for m in re.findall(r"\bsidecar_[a-z0-9_]+", rule["expr"])}
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def _documented_metrics() -> set[str]:
    if not METRICS_DOC.exists():
        return set()
    return set(re.findall(r"`(sidecar_[a-z0-9_]+)`", METRICS_DOC.read_text()))


def test_rules_use_only_documented_metric_names() -> None:
    used = _used_metrics()
    documented = _documented_metrics()
    assert set(PENDING) <= used, f"PENDING lists names no rule uses: {set(PENDING) - used}"
    missing = used - documented - set(PENDING)
    assert not missing, f"metric names not in docs/metrics.md: {sorted(missing)}"
    landed = set(PENDING) & documented
    assert not landed, f"now in docs/metrics.md, take them out of PENDING: {sorted(landed)}"
