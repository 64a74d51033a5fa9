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

digits version 1 is shadowed by a version 2 with perturbed weights
(``insight.shadow``, every request): the labels score both versions, each
under its own ``version``. The version variable must list the shadow version,
and the accuracy, precision/recall/F1 and confusion-matrix panels must show
each version apart, never the two pooled.

GPU panels: there is no GPU here. Replica A's GPU collector reads a fake NVML
(``tests/exporters/fakes.py``) through the exporter's injected-source seam, so
the GPU panels are checked to return the fake device's series: this checks the
queries and the names, not a driver.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

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
from tests.labels.test_shadow import _perturbed
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
        "Queue depth",
        "Refused/s",
        # zeros here (no model call stalls): data all the same, per model version
        "Model calls stalled / timed out / abandoned",
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
#: Core panels whose series carry no `model` label (per GPU).
NO_MODEL_LABEL = {"GPU memory used", "GPU utilisation", "GPU power"}

#: Drift window of the digits example (its config.yaml), sent as requests of ROWS rows.
WINDOW, ROWS = 400, 25
#: Predictions of that window that get a label (half of its requests).
LABELLED = WINDOW // 2
#: limits.max_batch_rows of the replicas: a request with more rows is refused.
MAX_ROWS = 64
DIGITS = MODEL_REPOSITORY / "digits"
#: The version that shadows digits' version 1 (served) and is scored by the same labels.
SHADOW = "2"
#: Grafana's parse of a label_values(selector, label) variable query (its Prometheus
#: data source, metric_find_query.ts); the selector is sent as match[] to
#: /api/v1/label/<label>/values.
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)\s*$")


def variable_values(prom: Prometheus, board: dict[str, Any], name: str, **chosen: str) -> set[str]:
    """The values Grafana lists for template variable ``name``, with other variables
    set as ``chosen`` (regexes, as Grafana interpolates them; "All" by default)."""
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == name]
    query = str(variable["query"])
    values = {**VARIABLES, **{f"${key}": value for key, value in chosen.items()}}
    for variable_name, value in values.items():
        query = query.replace(variable_name, value)
    parsed = LABEL_VALUES.match(query)
    assert parsed, f"{name}: not a label_values() query Grafana parses: {query}"
    selector, label = parsed.groups()
    return set(prom.api(f"label/{label}/values", **({"match[]": selector} if selector else {})))


def shadowed_digits(repository: Path) -> None:
    """digits version 1, served, shadowed on every request by a perturbed version 2."""
    target = repository / "digits"
    shutil.copytree(DIGITS, target)
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["versions"] = [1]
    config["insight"] = {"shadow": {"version": int(SHADOW), "sample_rate": 1.0}}
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    _perturbed(target / "1" / "model.onnx", target / SHADOW / "model.onnx", scale=0.6, seed=7)


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
    shadowed_digits(repository)
    shutil.copytree(MODEL_REPOSITORY / "diabetes", repository / "diabetes")
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
            assert len(sent) == LABELLED
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
        prom.wait_for(
            'sum(sidecar_labels_received_total{outcome="matched"})', lambda v: v == LABELLED
        )
        # Each label scores the primary and, once its shadow run is stored, the shadow.
        for version in ("1", SHADOW):
            prom.wait_for(
                f'sum(sidecar_labeled_predictions_total{{model="digits", version="{version}"}})',
                lambda v: v == LABELLED,
            )
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

        # Grafana's variables: the models served; their versions, the shadow one too.
        quality = dashboards()["quality"]
        assert variable_values(prom, quality, "model") == {"digits", "diabetes"}
        assert variable_values(prom, quality, "version") == {"1", SHADOW}
        assert variable_values(prom, quality, "version", model="digits") == {"1", SHADOW}
        assert variable_values(prom, quality, "version", model="diabetes") == {"1"}

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
        stalls = {
            (r["metric"]["model"], r["metric"]["version"])
            for r in results[("overview", "Model calls stalled / timed out / abandoned")]
        }
        assert stalls == {("digits", "1"), ("diabetes", "1")}
        check_versions_apart(prom, results)

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


def check_versions_apart(
    prom: Prometheus, results: dict[tuple[str, str], list[dict[str, Any]]]
) -> None:
    """The label panels show digits' primary and shadow versions apart, each with its
    own labelled predictions (200 each), never pooled."""
    # The counters themselves (no increase(): exact counts since the servers started).
    raw: dict[str, dict[tuple[str, str], float]] = {"1": {}, SHADOW: {}}
    for r in prom.query(
        'sum by (version, actual, predicted) (sidecar_confusion_matrix_total{model="digits"})'
    ):
        labels = r["metric"]
        raw[labels["version"]][(labels["actual"], labels["predicted"])] = float(r["value"][1])
    for version, cells in raw.items():
        assert sum(cells.values()) == LABELLED, version

    # Accuracy: one series per version, each that version's share of right predictions.
    accuracy = {
        (r["metric"]["model"], r["metric"]["version"]): float(r["value"][1])
        for r in results[("quality", "Accuracy")]
    }
    assert set(accuracy) == {("digits", "1"), ("digits", SHADOW)}, accuracy
    for version, cells in raw.items():
        right = sum(n for (actual, predicted), n in cells.items() if actual == predicted)
        # increase() extrapolates each replica's series by its own scrape times, and a
        # shadow's labels are counted on either replica: a ratio, not exact counts.
        assert accuracy[("digits", version)] == pytest.approx(right / LABELLED, abs=0.02)

    # Precision, recall and F1: rows per model version and class.
    table = {
        (r["metric"]["model"], r["metric"]["version"])
        for r in results[("quality", "Precision, recall and F1 per class")]
    }
    assert table == {("digits", "1"), ("digits", SHADOW)}

    # Confusion matrix: the row key names the model version; each version's block adds up
    # to its own labelled predictions (increase() of 200, a little more when extrapolated;
    # pooling the versions would give twice that), cell by cell where the counts are.
    shown: dict[str, dict[tuple[str, str], float]] = {"1": {}, SHADOW: {}}
    for r in results[("quality", "Confusion matrix")]:
        labels = r["metric"]
        key = re.fullmatch(r"digits v(\d+): (\w+)", labels["actual"])
        assert key, labels
        version, actual = key.groups()
        assert version == labels["version"]
        assert (actual, labels["predicted"]) not in shown[version], labels
        shown[version][(actual, labels["predicted"])] = float(r["value"][1])
    for version, cells in shown.items():
        assert cells.keys() == raw[version].keys()
        assert LABELLED <= sum(cells.values()) < 1.5 * LABELLED, (version, sum(cells.values()))
        assert {c for c, n in cells.items() if n > 0} == {c for c, n in raw[version].items() if n}
