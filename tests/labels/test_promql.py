"""The documented PromQL, computed by a real Prometheus scraping a real server, equals sklearn.

A seeded confusion scenario (a fake classifier that predicts what the test
tells it), the bundled digits classifier on its hold-out set, and the bundled
diabetes regressor: predictions over gRPC, labels over FeedbackService (with
junk and duplicates mixed in), the server's own /metrics scraped by
Prometheus, and every expression of docs/metrics.md's "Delayed labels"
section compared to scikit-learn on the same (label, prediction) pairs to 1e-9.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from sidecar.config import ModelConfig
from tests.helpers import running_server, server_config
from tests.labels.fakes import ChosenClassRuntime
from tests.labels.helpers import Client, class_label, label_parts, number_label
from tests.prom import Prometheus, prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
CLASSES = ["ant", "bee", "cow", "doe", "elk"]  # elk never occurs; doe is predicted, never actual
SCENARIO = ModelConfig.model_validate(
    {
        "monitoring": {
            "task": "classification",
            "classification": {"output": "probabilities", "class_names": CLASSES},
        }
    }
)
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def documented_queries() -> dict[str, str]:
    """name → expression: each ```promql block of the "Delayed labels" section, by its
    bold lead-in (``**accuracy**: ...``)."""
    section = DOCS.read_text().split("\n## Delayed labels\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"\*\*(\w+)\*\*[^\n]*\n\n```promql\n(.*?)```", section, flags=re.S)
    return {name: body.strip() for name, body in found}


def close(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return abs(got - want) <= 1e-9


@dataclass
class Pairs:
    """(label, prediction) pairs the test sent, per model."""

    scenario_true: np.ndarray
    scenario_pred: np.ndarray
    digits_true: np.ndarray
    digits_pred: np.ndarray
    diabetes_true: np.ndarray
    diabetes_pred: np.ndarray


def send_traffic(client: Client, repo: Path, rng: np.random.Generator) -> Pairs:
    """Predictions and their labels for the three models; returns the pairs sent."""
    # the seeded confusion scenario: 1000 predictions in requests of 25 rows, 900 labels
    n = 1000
    actual = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    wrong = rng.random(n) < 0.3
    predicted = np.where(wrong, (actual + rng.integers(1, 4, size=n)) % 4, actual)
    keys: list[tuple[str, int]] = []
    for start in range(0, n, 25):
        chunk = predicted[start : start + 25].reshape(-1, 1)
        request_id, outputs = client.infer("scenario", chunk)
        assert (outputs["probabilities"].argmax(axis=1) == chunk[:, 0]).all()
        keys.extend((request_id, row) for row in range(len(chunk)))
    labelled = rng.permutation(n)[:900]
    labels = [  # by name on odd, by index on even positions
        class_label(keys[i][0], "scenario", CLASSES[actual[i]] if i % 2 else int(actual[i]),
                    row=keys[i][1])
        for i in labelled
    ]  # fmt: skip
    first = keys[labelled[0]]
    junk = [
        class_label(first[0], "scenario", "wolf", row=first[1]),
        class_label("no-such-request", "scenario", "ant"),
        class_label(keys[0][0], "scenario", "ant", row=99),
        class_label(keys[0][0], "nobody", "ant"),
    ]
    outcomes: list[str] = []
    for start in range(0, len(labels), 100):
        outcomes += client.outcomes(labels[start : start + 100])
    outcomes += client.outcomes(junk + labels[:20])
    assert outcomes.count("matched") == 900
    assert outcomes.count("duplicate") == 20

    # the digits model on its hold-out set: two requests of 150 rows
    x = np.load(repo / "digits" / "holdout_features.npy")[:300]
    y = np.load(repo / "digits" / "holdout_labels.npy")[:300].astype(int)
    digit_pred: list[int] = []
    for start in (0, 150):
        request_id, outputs = client.infer("digits", x[start : start + 150])
        digit_pred.extend(outputs["probabilities"].argmax(axis=1).tolist())
        sent = [class_label(request_id, "digits", DIGITS[y[start + r]], row=r) for r in range(150)]
        assert client.outcomes(sent) == ["matched"] * 150

    # the diabetes regressor, labels drawn around its predictions
    features = np.load(repo / "diabetes" / "reference.npy")[:120]
    request_id, outputs = client.infer("diabetes", features)
    reg_pred = outputs["prediction"][:, 0].astype(np.float64)
    reg_true = np.round(reg_pred + rng.normal(0, 30, size=len(reg_pred)), 3)
    sent_reg = [
        number_label(request_id, "diabetes", float(v), row=r) for r, v in enumerate(reg_true)
    ]
    assert client.outcomes(sent_reg) == ["matched"] * len(sent_reg)
    return Pairs(actual[labelled], predicted[labelled], y, np.array(digit_pred), reg_true, reg_pred)


def test_documented_promql_equals_scikit_learn(labels_repo: Path, tmp_path: Path) -> None:
    queries = documented_queries()
    assert set(queries) >= {"accuracy", "precision", "recall", "f1", "macro_f1", "mae", "rmse"}
    config = server_config(labels_repo, labels={"flush_interval_ms": 20})
    parts = label_parts(config)
    assert parts.metrics is not None
    fake = ("scenario", ChosenClassRuntime(len(CLASSES)), SCENARIO)
    with (
        running_server(config, parts, fakes=[fake]) as server,
        Client(server.address) as client,
        prometheus(
            tmp_path / "prometheus",
            {"sidecar": [f"127.0.0.1:{parts.metrics.http.port}"]},
            scrape_interval="500ms",
        ) as prom,
    ):
        # every series is in Prometheus at zero before the first label arrives
        prom.wait_until_up("sidecar")
        assert prom.values("count by (model) (sidecar_class_outcomes_total)", "model") == {
            "scenario": 15.0,
            "digits": 30.0,
        }
        pairs = send_traffic(client, labels_repo, np.random.default_rng(20240607))
        prom.wait_for_next_scrape("sidecar")  # one scrape after the last label
        received = prom.values("sum by (model) (sidecar_labels_received_total)", "model")
        assert received == {"scenario": 923.0, "digits": 300.0, "diabetes": 120.0, "": 1.0}
        check_against_sklearn(prom, queries, pairs)


def check_against_sklearn(prom: Prometheus, queries: dict[str, str], pairs: Pairs) -> None:
    def per(name: str, model: str, by: str = "model") -> dict[str, float]:
        return {
            item["metric"].get(by, ""): float(item["value"][1])
            for item in prom.query(queries[name])
            if item["metric"].get("model") == model
        }

    y_true, y_pred = pairs.scenario_true, pairs.scenario_pred
    assert close(per("accuracy", "scenario")["scenario"], skm.accuracy_score(y_true, y_pred))
    assert close(
        per("accuracy", "digits")["digits"],
        skm.accuracy_score(pairs.digits_true, pairs.digits_pred),
    )
    # per-class precision, recall, F1 (NaN where scikit-learn divides by zero)
    all_classes = list(range(len(CLASSES)))
    for name, score in (
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ):
        want = score(y_true, y_pred, labels=all_classes, average=None, zero_division=np.nan)
        got = per(name, "scenario", by="class")
        assert set(got) == set(CLASSES), name
        for i, cls in enumerate(CLASSES):
            assert close(got[cls], float(want[i])), (name, cls, got[cls], want[i])
    # macro-F1 over the classes that occur, as scikit-learn's default
    assert close(
        per("macro_f1", "scenario")["scenario"], skm.f1_score(y_true, y_pred, average="macro")
    )
    assert close(
        per("macro_f1", "digits")["digits"],
        skm.f1_score(pairs.digits_true, pairs.digits_pred, average="macro"),
    )
    # regression
    assert close(
        per("mae", "diabetes")["diabetes"],
        skm.mean_absolute_error(pairs.diabetes_true, pairs.diabetes_pred),
    )
    assert close(
        per("rmse", "diabetes")["diabetes"],
        math.sqrt(skm.mean_squared_error(pairs.diabetes_true, pairs.diabetes_pred)),
    )
    # coverage: 900 of the 1000 scenario predictions got a label
    assert close(per("coverage", "scenario")["scenario"], 0.9)
    # the confusion matrix, cell by cell (every cell exists, from zero)
    cells = prom.query(
        'sum by (actual, predicted) (sidecar_confusion_matrix_total{model="scenario"})'
    )
    assert len(cells) == len(CLASSES) ** 2
    got_matrix = np.zeros((len(CLASSES), len(CLASSES)))
    for item in cells:
        a = CLASSES.index(item["metric"]["actual"])
        p = CLASSES.index(item["metric"]["predicted"])
        got_matrix[a, p] = float(item["value"][1])
    assert (got_matrix == skm.confusion_matrix(y_true, y_pred, labels=all_classes)).all()
