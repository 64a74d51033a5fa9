"""The alert rules and dashboard queries against a real Prometheus that scraped a
live server under traffic: every rule loads and evaluates, every query runs, and
the core serving panels return data."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.examples import MODEL_REPOSITORY
from sidecar.metrics_listener import ServerMetrics
from tests.exporters.traffic import send_example_traffic
from tests.helm.test_alerts import ALERTS, all_rules
from tests.helm.test_dashboards import dashboards, panels
from tests.helpers import running_server, server_config
from tests.prom import Prometheus, prometheus

#: Grafana's variables as Grafana would send them with "All" selected.
VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$version": ".*"}
#: Panels that must show data once the server has served classification and
#: regression requests (no GPU here; too few rows for a drift window; no labels sent).
CORE = {
    "overview": {
        "Requests/s",
        "Error ratio",
        "Model versions ready",
        "Request latency p50 / p99",
        "Queue and compute p99",
        "Rows/s",
        "Mean batch size",
        "In flight",
    },
    "quality": {"Predicted classes", "Top-class confidence p10 / p50", "Non-finite outputs"},
}


def _wait_for_rules(prom: Prometheus, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The loaded rules once every one of them has been evaluated."""
    deadline = time.monotonic() + timeout
    while True:
        loaded = [r for g in prom.rules() for r in g["rules"]]
        evaluated = [r for r in loaded if r.get("health") != "unknown"]
        if len(loaded) == count and len(evaluated) == count:
            return loaded
        assert time.monotonic() < deadline, f"rules not all evaluated: {loaded}"
        time.sleep(0.2)


@pytest.mark.prometheus
def test_rules_and_dashboards_on_a_real_prometheus(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for name in ("digits", "diabetes"):
        shutil.copytree(MODEL_REPOSITORY / name, repository / name)
    config = server_config(repository)
    metrics = ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))
    with (
        running_server(config, AppParts(metrics=metrics)) as server,
        prometheus(
            tmp_path / "prometheus",
            {"sidecar": [f"127.0.0.1:{metrics.http.port}"]},
            rule_files=[ALERTS],
        ) as prom,
    ):
        prom.wait_until_up("sidecar")
        send_example_traffic(server.address, requests=12, seed=3)
        prom.wait_for('sum(sidecar_inference_requests_total{code="OK"})', lambda v: v == 24)
        prom.wait_for_next_scrape("sidecar")

        # Every rule loaded and evaluates on real series without an error.
        loaded = _wait_for_rules(prom, len(all_rules()))
        names = [r.get("alert") or r["record"] for r in all_rules()]
        assert sorted(r["name"] for r in loaded) == sorted(names)
        for rule in loaded:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

        # Grafana's model variable lists the models served.
        assert set(prom.values("sidecar_model_ready", "model")) == {"digits", "diabetes"}

        # Every dashboard query runs; the core panels show data.
        for name, board in dashboards().items():
            for panel in panels(board):
                results = []
                for target in panel.get("targets", []):
                    expr = target["expr"]
                    for variable, value in VARIABLES.items():
                        expr = expr.replace(variable, value)
                    results += prom.query(expr)  # raises on a parse or evaluation error
                if panel["title"] in CORE[name]:
                    assert results, f"{name}: panel {panel['title']!r} has no data"
                    served = {r["metric"].get("model") for r in results}
                    assert served & {"digits", "diabetes"}, (panel["title"], served)
        titles = {name: {p["title"] for p in panels(b)} for name, b in dashboards().items()}
        for name, core in CORE.items():
            assert core <= titles[name]
