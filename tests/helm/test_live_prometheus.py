"""The alert rules and dashboard queries against a real Prometheus that scraped
live servers under traffic with drift and labels: every rule loads and
evaluates, every query runs, and every core panel of both dashboards returns data.

Two replicas of the server (in this process, each on its own loopback ports)
share a real redis-server as their label store, as a Deployment with
``labels.redis`` does. Replica A serves the example traffic and a full drift
window of the digits example (its config.yaml monitors drift on windows of 400
rows), so one drift evaluation runs; labels with the hold-out set's true classes
are sent to the *other* replica for half of those predictions, so some are
labelled and the rest stay pending in the shared store. The pending panel must
count the shared store once, not once per replica.

GPU panels: there is no GPU here. Replica A's GPU collector reads a fake NVML
(``tests/exporters/fakes.py``) through the exporter's injected-source seam, so
the GPU panels are checked to return the fake device's series: this checks the
queries and the names, not a driver.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.examples import MODEL_REPOSITORY
from sidecar.metrics_listener import ServerMetrics
from tests.exporters.fakes import FakeGpu, FakeNvml
from tests.exporters.traffic import send_example_traffic
from tests.helm.test_alerts import ALERTS, all_rules
from tests.helm.test_dashboards import dashboards, panels
from tests.helpers import running_server, server_config
from tests.labels.helpers import Client, class_label
from tests.labels.redis_server import RedisServer
from tests.prom import Prometheus, prometheus

#: Grafana's variables as Grafana would send them with "All" selected.
VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$version": ".*"}
#: Panels that must show data once the servers have served classification and
#: regression requests (and refused two: too many rows), evaluated a drift
#: window and joined labels: all of them.
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
        "Refused/s",
    },
    "quality": {
        "Drift detected",
        "Drifted features",
        "p-value per feature",
        "Fleet drift z-score per feature",
        "Fleet PSI per feature",
        "Drift evaluations",
        "Predicted classes",
        "Top-class confidence p10 / p50",
        "Non-finite outputs",
        "Accuracy",
        "Label delay p50 / p90",
        "Pending predictions",
        "Precision, recall and F1 per class",
        "Confusion matrix",
        # from the fake NVML (see the module docstring)
        "GPU memory used",
        "GPU utilisation",
        "GPU power",
    },
}
#: Core panels whose series carry no `model` label (per GPU, or per class pair).
NO_MODEL_LABEL = {"GPU memory used", "GPU utilisation", "GPU power", "Confusion matrix"}

#: Drift window of the digits example (its config.yaml), sent as requests of ROWS rows.
WINDOW, ROWS = 400, 25
#: limits.max_batch_rows of the replicas: a request with more rows is refused.
MAX_ROWS = 64
DIGITS = MODEL_REPOSITORY / "digits"


def refuse(client: Client, rows: np.ndarray) -> None:
    """One request above limits.max_batch_rows: refused before inference."""
    with pytest.raises(grpc.RpcError) as refused:
        client.infer("digits", rows[: MAX_ROWS + 1])
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


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


def _expr(target: dict[str, Any]) -> str:
    expr = str(target["expr"])
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _panel_results(prom: Prometheus) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(dashboard, panel title) → every series its queries return now; a query that
    does not parse or evaluate raises."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, board in dashboards().items():
        for panel in panels(board):
            results: list[dict[str, Any]] = []
            for target in panel.get("targets", []):
                results += prom.query(_expr(target))
            out[(name, panel["title"])] = results
    return out


def _finite(results: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in results)


def _wait_for_panels(
    prom: Prometheus, ready: Callable[[dict[tuple[str, str], list[dict[str, Any]]]], list[str]]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Poll the panels until ``ready`` lists nothing missing (the fleet recording rules
    and increase() over fresh counters need a few evaluations); fail naming what is."""
    deadline = time.monotonic() + 30
    while True:
        results = _panel_results(prom)
        missing = ready(results)
        if not missing:
            return results
        assert time.monotonic() < deadline, f"panels without data: {missing}"
        time.sleep(0.5)


def _core_missing(results: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    return [
        f"{name}: {title}"
        for name, titles in CORE.items()
        for title in titles
        if not _finite(results.get((name, title), []))
    ]


@pytest.mark.prometheus
@pytest.mark.redis
def test_rules_and_dashboards_on_a_real_prometheus(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for name in ("digits", "diabetes"):
        shutil.copytree(MODEL_REPOSITORY / name, repository / name)
    holdout = np.load(DIGITS / "holdout_features.npy").astype(np.float32)
    truth = np.load(DIGITS / "holdout_labels.npy")
    assert len(holdout) >= WINDOW

    with ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer(tmp_path / "redis"))
        labels = {
            "backend": "redis",
            "url": redis_server.url,
            "flush_interval_ms": 20,
            "sweep_interval_seconds": 0.2,
        }
        config = server_config(repository, labels=labels, limits={"max_batch_rows": MAX_ROWS})
        fake_gpu = GpuCollector(FakeNvml([FakeGpu()]), lambda: None)
        metrics = [
            ServerMetrics(config.metrics, gpu=fake_gpu),
            ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None)),
        ]
        a, b = (stack.enter_context(running_server(config, AppParts(metrics=m))) for m in metrics)
        prom = stack.enter_context(
            prometheus(
                tmp_path / "prometheus",
                {"sidecar": [f"127.0.0.1:{m.http.port}" for m in metrics]},
                rule_files=[ALERTS],
            )
        )
        prom.wait_until_up("sidecar")
        store = stack.enter_context(redis_server.client())

        # Serving: the example traffic (both models, two errors) on replica A.
        traffic = send_example_traffic(a.address, requests=12, seed=3)
        # Drift: one full window of digits' hold-out rows on A; labels with their true
        # classes for half of those predictions, sent to replica B (the shared store
        # finds them), the other half left pending.
        requests = []
        with Client(a.address) as on_a, Client(b.address) as on_b:
            for start in range(0, WINDOW, ROWS):
                request_id, _ = on_a.infer("digits", holdout[start : start + ROWS])
                requests.append((request_id, truth[start : start + ROWS]))
            labelled = requests[: len(requests) // 2]
            last = f"sidecar:labels:p:{ROWS - 1}:{labelled[-1][0]}"
            deadline = time.monotonic() + 15
            while not store.exists(last):  # A's flush reached Redis
                assert time.monotonic() < deadline, "replica A never wrote its predictions"
                time.sleep(0.02)
            sent = [
                class_label(request_id, "digits", int(value), row=row)
                for request_id, values in labelled
                for row, value in enumerate(values)
            ]
            assert on_b.outcomes(sent) == ["matched"] * len(sent)
            refuse(on_a, holdout)

        prom.wait_for(
            'sum(sidecar_inference_requests_total{code="OK"})',
            lambda v: v == 24 + len(requests),
        )
        prom.wait_for(
            'sum(sidecar_drift_evaluations_total{model="digits", scope="inputs"})',
            lambda v: v == 1,
        )
        prom.wait_for('sum(sidecar_labels_received_total{outcome="matched"})', lambda v: v == 200)
        prom.wait_for_next_scrape("sidecar")
        # A refusal reason's series starts at its first refusal, which rate() cannot
        # see; the second one, after a scrape saw the first, it can.
        with Client(a.address) as on_a:
            refuse(on_a, holdout)
        prom.wait_for("sum(sidecar_rejected_requests_total)", lambda v: v == 2)

        # Every rule loaded and evaluates on real series without an error.
        loaded = _wait_for_rules(prom, len(all_rules()))
        names = [r.get("alert") or r["record"] for r in all_rules()]
        assert sorted(r["name"] for r in loaded) == sorted(names)
        for rule in loaded:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

        # Grafana's model variable lists the models served.
        assert set(prom.values("sidecar_model_ready", "model")) == {"digits", "diabetes"}

        # Every dashboard query runs; every core panel shows a finite value.
        results = _wait_for_panels(prom, _core_missing)
        for name, board in dashboards().items():
            titles = {p["title"] for p in panels(board) if p["type"] != "row"}
            assert titles == CORE[name], f"{name}: a panel this test does not know"
            for title in CORE[name] - NO_MODEL_LABEL:
                served = {r["metric"].get("model") for r in results[(name, title)]}
                assert served & {"digits", "diabetes"}, (title, served)
        refused = {
            r["metric"]["reason"]: float(r["value"][1]) for r in results[("overview", "Refused/s")]
        }
        assert refused["too_many_rows"] > 0, refused
        gpus = {r["metric"].get("gpu") for r in results[("quality", "GPU memory used")]}
        assert gpus == {"0"}  # the fake device, on replica A only

        # Both replicas report the shared store's count; the panel counts it once.
        (pending_panel,) = [
            p for p in panels(dashboards()["quality"]) if p["title"] == "Pending predictions"
        ]
        pending_query = _expr(pending_panel["targets"][0])
        waiting = store.zcard("sidecar:labels:pending:digits")
        assert waiting == traffic.rows["digits"] + WINDOW - len(sent)
        prom.wait_for(
            f'count(sidecar_pending_predictions{{model="digits"}} == {waiting})',
            lambda v: v == 2,
        )
        shown = {r["metric"]["model"]: float(r["value"][1]) for r in prom.query(pending_query)}
        assert shown["digits"] == waiting
