"""The Grafana dashboards: the committed JSON is what exporters/dashboards/build.py
builds, every query parses in promtool and reads only documented (or pending)
metrics, and the chart ships each dashboard as a ConfigMap for Grafana's sidecar."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from exporters.dashboards import build
from tests.helm import metric_names
from tests.helm.chart import Helm, find, run_promtool
from tests.helm.test_alerts import rules

#: Grafana's variables, replaced by values PromQL accepts before promtool parses.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$model": ".*",
    "$version": ".*",
}


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.stem: json.loads(path.read_text()) for path in sorted(build.OUT_DIR.glob("*.json"))
    }


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


def test_committed_json_is_what_the_code_builds() -> None:
    built = build.render()
    on_disk = {path.name: path.read_text() for path in build.OUT_DIR.glob("*.json")}
    assert on_disk == built, (
        "dashboards are stale: run `python -m exporters.dashboards.build` and commit the JSON"
    )
    assert build.main(["--check"]) == 0


def test_every_query_parses_in_promtool(promtool: str, tmp_path: Path) -> None:
    records = []
    for name, board in dashboards().items():
        for index, expr in enumerate(expressions(board)):
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{name}: unknown Grafana variable in {expr}"
            records.append({"record": f"dashboard:{name}:q{index}", "expr": expr})
    assert len(records) > 20
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": records}]}))
    out = run_promtool(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(records)} rules found" in out


def test_queries_use_only_documented_metric_names() -> None:
    used = metric_names.metric_names(e for b in dashboards().values() for e in expressions(b))
    for board in dashboards().values():
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                used |= metric_names.metric_names([variable["query"]])
    metric_names.check(used, metric_names.PENDING)
    everything = used | metric_names.metric_names(rule["expr"] for rule in rules())
    stale = set(metric_names.PENDING) - everything
    assert not stale, f"PENDING lists names no rule or dashboard uses: {sorted(stale)}"


def test_dashboards_cover_the_issue() -> None:
    """The panels issue 8 asks for, template variables for model and version."""
    titles = {name: {p["title"] for p in panels(b)} for name, b in dashboards().items()}
    assert {
        "Requests/s",
        "Error ratio",
        "Request latency p50 / p99",
        "Rows/s",
        "Mean batch size",
        "In flight",
        "Queue depth",
        "Queue and compute p99",
    } <= titles["overview"]
    assert {
        "Drift detected",
        "p-value per feature",
        "Drifted features",
        "Predicted classes",
        "Top-class confidence p10 / p50",
        "Accuracy",
        "Precision, recall and F1 per class",
        "Confusion matrix",
        "Label delay p50 / p90",
        "Pending predictions",
        "GPU memory used",
        "GPU utilisation",
        "GPU power",
    } <= titles["quality"]
    uids = set()
    for name, board in dashboards().items():
        uids.add(board["uid"])
        variables = [v["name"] for v in board["templating"]["list"]]
        assert variables == ["datasource", "model", "version"], name
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids and len(set(ref_ids)) == len(ref_ids), panel["title"]
        ids = [p["id"] for p in panels(board)]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        for expr in expressions(board):
            if re.search(r"sidecar_(?!gpu_)[a-z_]+\{", expr) or "sidecar_model" in expr:
                assert '$model"' in expr, f"{name}: not filtered by model: {expr}"
    assert len(uids) == len(dashboards())


def test_chart_ships_each_dashboard_for_grafanas_sidecar(helm: Helm) -> None:
    objects = helm.template()
    configmaps = {
        o["metadata"]["name"]: o
        for o in find(objects, "ConfigMap")
        if "grafana_dashboard" in o["metadata"]["labels"]
    }
    on_disk = {path.name: path.read_text() for path in build.OUT_DIR.glob("*.json")}
    assert len(configmaps) == len(on_disk) == len(build.DASHBOARDS)
    for configmap in configmaps.values():
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["namespace"] == "serving"
        [(key, text)] = configmap["data"].items()
        assert json.loads(text) == json.loads(on_disk[key])
    custom = helm.template(
        {
            "grafana": {
                "dashboards": {
                    "namespace": "monitoring",
                    "annotations": {"grafana_folder": "Inference"},
                }
            }
        }
    )
    for configmap in find(custom, "ConfigMap"):
        if "grafana_dashboard" in configmap["metadata"]["labels"]:
            assert configmap["metadata"]["namespace"] == "monitoring"
            assert configmap["metadata"]["annotations"] == {"grafana_folder": "Inference"}
    disabled = helm.template({"grafana": {"dashboards": {"enabled": False}}})
    assert not [o for o in find(disabled, "ConfigMap") if "grafana_dashboard" in str(o)]


def _panel(board: str, title: str) -> dict[str, Any]:
    found = [p for p in panels(dashboards()[board]) if p["title"] == title]
    assert len(found) == 1, f"{board}: {len(found)} panels titled {title!r}"
    return found[0]


def test_pending_panel_counts_a_shared_store_once(promtool: str, tmp_path: Path) -> None:
    """Two replicas sharing a Redis store report its count each: the panel counts it once;
    replicas with local stores (memory, SQLite) hold different predictions: they add up."""
    expr = _panel("quality", "Pending predictions")["targets"][0]["expr"]
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    shared = "redis://redis:6379/0#sidecar:labels:"
    series = [
        # namespace ml: two replicas, one shared store holding 7 pending predictions
        ("ml", "p1", "digits", shared, 7),
        ("ml", "p2", "digits", shared, 7),
        # namespace dev: two replicas with their own memory stores
        ("dev", "q1", "digits", "local", 3),
        ("dev", "q2", "digits", "local", 4),
        # another model on the shared store
        ("ml", "p1", "wine", shared, 2),
        ("ml", "p2", "wine", shared, 2),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'sidecar_pending_predictions{{namespace="{ns}", pod="{pod}", '
                        f'model="{model}", store="{store}"}}',
                        "values": f"{value}x10",
                    }
                    for ns, pod, model, store, value in series
                ],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": '{model="digits"}', "value": 7 + 3 + 4},
                            {"labels": '{model="wine"}', "value": 2},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "pending_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    run_promtool(promtool, "test", "rules", str(path))
