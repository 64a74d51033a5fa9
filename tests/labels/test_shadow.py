"""Labels score the primary and the shadow version, over a real server (loopback gRPC, /metrics).

The digits classifier and the diabetes regressor serve version 1 and are
shadowed by a version 2 whose weights are perturbed (seeded), so the versions
disagree on some rows. Every request is shadowed (``sample_rate: 1``); after
the shadow has run, labels go through FeedbackService and ``/metrics`` must
show, per version, exactly the counts computed here from the answers (version
1), from running version 2's file directly (version 2) and from the labels.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from sidecar.examples import MODEL_REPOSITORY
from sidecar.insight.hub import Insight
from tests.exporters.scrape import Scrape, scrape
from tests.helpers import ServerThread, running_server, server_config
from tests.insight.test_server import _write_failing_onnx
from tests.labels.helpers import Client, class_label, label_parts, number_label

CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FAST = {"flush_interval_ms": 20, "sweep_interval_seconds": 0.05}
BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]
_prefixes = itertools.count()


def _perturbed(source: Path, target: Path, scale: float, seed: int) -> None:
    """A copy of an ONNX model with seeded Gaussian noise added to its weight matrices."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.ndim == 2:
            noisy = weights + rng.normal(0.0, scale * weights.std(), weights.shape)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(weights.dtype), init.name))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


def _shadowed(root: Path, name: str, source: str) -> Path:
    """``root/name``: version 1 of the bundled ``source`` model, shadowed by version 2."""
    target = root / name
    shutil.copytree(MODEL_REPOSITORY / source, target)
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["versions"] = [1]
    config["insight"] = {"shadow": {"version": 2, "sample_rate": 1.0}}
    config.get("monitoring", {}).pop("drift", None)  # not what this test is about
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shadow-labels")
    digits = _shadowed(root, "digits", "digits")
    _perturbed(digits / "1" / "model.onnx", digits / "2" / "model.onnx", scale=0.6, seed=7)
    diabetes = _shadowed(root, "diabetes", "diabetes")
    _perturbed(diabetes / "1" / "model.onnx", diabetes / "2" / "model.onnx", scale=0.3, seed=8)
    failing = _shadowed(root, "failing", "digits")
    _write_failing_onnx(failing / "2" / "model.onnx")  # raises on every batch of 2+ rows
    return root


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of an ONNX file on ``x``, by name (version 2, run outside the server)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x.astype(np.float32)}), strict=True))


def _labels_config(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "sqlite":
        return {**FAST, "backend": "sqlite", "path": str(tmp_path / "labels.db")}
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        return {
            **FAST,
            "backend": "redis",
            "url": server.url,
            "key_prefix": f"sh{next(_prefixes)}:",
        }
    return dict(FAST)


@pytest.fixture(params=BACKENDS)
def served(
    request: pytest.FixtureRequest, repo: Path, tmp_path: Path
) -> Iterator[tuple[ServerThread, Insight, int, str]]:
    backend = request.param
    config = server_config(repo, labels=_labels_config(backend, tmp_path, request))
    parts = label_parts(config)
    assert parts.metrics is not None
    parts.insight = Insight(config, parts.metrics.registry)
    with running_server(config, parts) as thread:
        yield thread, parts.insight, parts.metrics.http.port, backend


def _finish_shadow(thread: ServerThread, insight: Insight, name: str) -> None:
    """Wait until the shadow of ``name`` version 1 has run every queued request."""
    runner = insight.shadow(thread.server.plane.models.resolve(name, "1"))
    assert runner is not None
    thread.call(runner.join())


def _value(metrics: Scrape, name: str, **labels: str) -> float:
    value = metrics.value(name, **labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def _check_classification(
    metrics: Scrape, model: str, version: str, predicted: np.ndarray, actual: np.ndarray
) -> None:
    """Accuracy, confusion matrix and per-class tp/fp/fn of ``version`` equal the direct counts."""
    labeled = "sidecar_labeled_predictions_total"
    right = _value(metrics, labeled, model=model, version=version, correct="true")
    wrong = _value(metrics, labeled, model=model, version=version, correct="false")
    assert (right, wrong) == (int((predicted == actual).sum()), int((predicted != actual).sum()))
    if len(actual):
        accuracy = float(np.mean(predicted == actual))
        assert right / (right + wrong) == pytest.approx(accuracy, abs=1e-12)
    for a, p in itertools.product(range(len(CLASSES)), repeat=2):
        cell = _value(metrics, "sidecar_confusion_matrix_total", model=model, version=version,
                      actual=CLASSES[a], predicted=CLASSES[p])  # fmt: skip
        assert cell == int(((actual == a) & (predicted == p)).sum()), (version, a, p)
    for c, name in enumerate(CLASSES):
        expected = {
            "tp": int(((predicted == c) & (actual == c)).sum()),
            "fp": int(((predicted == c) & (actual != c)).sum()),
            "fn": int(((predicted != c) & (actual == c)).sum()),
        }
        for outcome, n in expected.items():
            got = _value(metrics, "sidecar_class_outcomes_total", model=model, version=version,
                         outcome=outcome, **{"class": name})  # fmt: skip
            assert got == n, (version, name, outcome)


def test_labels_score_both_versions(
    served: tuple[ServerThread, Insight, int, str], repo: Path
) -> None:
    thread, insight, port, backend = served
    x = np.load(repo / "digits" / "holdout_features.npy")[:90]
    y = np.load(repo / "digits" / "holdout_labels.npy")[:90].astype(np.int64)
    rows = 3
    with Client(thread.address) as client:
        ids, primary = [], []
        for start in range(0, len(x), rows):
            rid, out = client.infer("digits", x[start : start + rows], f"{backend}-d{start}")
            ids.append(rid)
            primary.append(out["probabilities"].argmax(axis=1))
        z = np.load(repo / "diabetes" / "reference.npy")[:40]
        targets = np.random.default_rng(3).uniform(25.0, 346.0, len(z))
        reg_ids, reg_primary = [], []
        for start in range(0, len(z), 4):
            rid, out = client.infer("diabetes", z[start : start + 4], f"{backend}-r{start}")
            reg_ids.append(rid)
            reg_primary.append(out["prediction"][:, 0])
        _finish_shadow(thread, insight, "digits")
        _finish_shadow(thread, insight, "diabetes")
        labels = [
            class_label(rid, "digits", CLASSES[y[i * rows + r]], row=r)
            for i, rid in enumerate(ids)
            for r in range(rows)
        ]
        assert client.outcomes(labels) == ["matched"] * len(x)
        numbers = [
            number_label(rid, "diabetes", float(targets[i * 4 + r]), row=r)
            for i, rid in enumerate(reg_ids)
            for r in range(4)
        ]
        assert client.outcomes(numbers) == ["matched"] * len(z)
    primary_classes = np.concatenate(primary)
    shadow_classes = _run(repo / "digits" / "2" / "model.onnx", x)["probabilities"].argmax(axis=1)
    disagree = int((primary_classes != shadow_classes).sum())
    assert 0 < disagree < len(x)  # the versions disagree on some rows, not all
    metrics = scrape(port)
    _check_classification(metrics, "digits", "1", primary_classes, y)
    _check_classification(metrics, "digits", "2", shadow_classes, y)
    # each label counted once as a label, whatever the versions it scored
    assert _value(metrics, "sidecar_label_delay_seconds_count", model="digits") == len(x)
    assert _value(metrics, "sidecar_labels_received_total", model="digits",
                  outcome="matched") == len(x)  # fmt: skip
    for version in ("1", "2"):
        assert _value(metrics, "sidecar_predictions_recorded_total", model="digits",
                      version=version) == len(x)  # fmt: skip
    assert _value(metrics, "sidecar_predictions_dropped_total", model="digits",
                  reason="no_primary") == 0  # fmt: skip

    shadow_values = _run(repo / "diabetes" / "2" / "model.onnx", z)["prediction"][:, 0]
    for version, values in (("1", np.concatenate(reg_primary)), ("2", shadow_values)):
        errors = values.astype(np.float64) - targets
        assert _value(metrics, "sidecar_label_absolute_error_count", model="diabetes",
                      version=version) == len(z)  # fmt: skip
        squared = _value(metrics, "sidecar_label_squared_error_total", model="diabetes",
                         version=version)  # fmt: skip
        assert squared == pytest.approx(float((errors**2).sum()), rel=1e-5)
    assert not np.allclose(np.concatenate(reg_primary), shadow_values)


def test_a_failing_shadow_leaves_the_primarys_labels_alone(
    served: tuple[ServerThread, Insight, int, str], repo: Path
) -> None:
    thread, insight, port, backend = served
    x = np.load(repo / "digits" / "holdout_features.npy")[:40]
    y = np.load(repo / "digits" / "holdout_labels.npy")[:40].astype(np.int64)
    with Client(thread.address) as client:
        answers = [
            client.infer("failing", x[i : i + 4], f"{backend}-f{i}") for i in range(0, 40, 4)
        ]
        _finish_shadow(thread, insight, "failing")
        labels = [
            class_label(rid, "failing", int(y[i * 4 + r]), row=r)
            for i, (rid, _) in enumerate(answers)
            for r in range(4)
        ]
        assert client.outcomes(labels) == ["matched"] * 40
    predicted = np.concatenate([out["probabilities"].argmax(axis=1) for _, out in answers])
    metrics = scrape(port)
    assert _value(metrics, "sidecar_shadow_requests_total", model="failing", version="1",
                  shadow_version="2", outcome="failed") == 10  # fmt: skip
    _check_classification(metrics, "failing", "1", predicted, y)
    # version 2's series exist from the load, at zero: nothing was scored for it
    _check_classification(metrics, "failing", "2", np.full(0, -1), np.full(0, -1))
    assert _value(metrics, "sidecar_predictions_recorded_total", model="failing",
                  version="2") == 0  # fmt: skip
