"""The monitor tap and its windows: bounded, O(1) on the request path, sampled,
non-overlapping, NaN-proof, and honest about windows too small to test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.models import ServedModel
from sidecar.runtimes.fakes import SumRuntime
from tests.drift.helpers import SUM_WIDTH, Harness, load_sum, sum_harness, write_reference

WIDTH = SUM_WIDTH


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return sum_harness(tmp_path)


load = load_sum


def rows(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, WIDTH)) + shift).astype(np.float32)


def send(harness: Harness, model: ServedModel, x: np.ndarray, per_request: int = 7) -> None:
    for start in range(0, len(x), per_request):
        harness.request(model, {"x": x[start : start + per_request]})


class Untouchable:
    """Stands in for a tensor: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the request path touched the tensor ({name})")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the request path converted the tensor")


def test_offering_a_request_does_not_touch_its_tensors(harness: Harness) -> None:
    """on_request only queues references: no copy, no numpy, whatever the size."""
    model = load(harness, outputs=False)
    monitor = harness.monitor(model)
    for rows_in_request in (1, 1000, 60000):
        monitor.offer({"x": Untouchable()}, {"y": Untouchable()}, rows_in_request)  # type: ignore[dict-item]
    assert monitor.queued_rows == 61001
    assert (
        harness.value("sidecar_drift_evaluations_total", model="m", version="1", scope="inputs")
        == 0
    )


def test_queue_is_bounded_and_overflow_is_counted(harness: Harness) -> None:
    model = load(harness, outputs=False, queue_rows=100)
    monitor = harness.monitor(model)
    harness.request(model, {"x": rows(60, 1)})
    harness.request(model, {"x": rows(60, 2)})  # would make 120: dropped whole
    harness.request(model, {"x": rows(40, 3)})  # fits exactly
    assert monitor.queued_rows == 100
    assert harness.value("sidecar_drift_rows_dropped_total", model="m", version="1") == 60
    harness.process()
    assert monitor.queued_rows == 0
    harness.request(model, {"x": rows(60, 4)})  # room again once the worker took the queue
    assert monitor.queued_rows == 60


def test_sample_rate_keeps_that_share_of_requests(harness: Harness) -> None:
    model = load(harness, outputs=False, sample_rate=0.25, queue_rows=10_000)
    monitor = harness.monitor(model)
    one = rows(1, 0)
    for _ in range(4000):
        harness.request(model, {"x": one}, outputs={})
    # Binomial(4000, 0.25): mean 1000, sd 27.
    assert 900 <= monitor.queued_rows <= 1100


def test_windows_do_not_overlap(harness: Harness) -> None:
    """Rows 100-199 are shifted by 3 sd: exactly the second window, and only it, drifts."""
    model = load(harness, outputs=False)
    x = np.concatenate([rows(100, 1), rows(100, 2, shift=3.0), rows(100, 3)])
    detected: list[float | None] = []
    for part in (x[:105], x[105:210], x[210:]):  # 7-row requests straddle window boundaries
        send(harness, model, part)
        harness.process()
        detected.append(
            harness.value("sidecar_drift_detected", model="m", version="1", scope="inputs")
        )
    assert detected == [0.0, 1.0, 0.0]
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    assert harness.value("sidecar_drift_evaluations_total", **labels) == 3
    assert harness.value("sidecar_drift_window_samples", **labels) == 100
    assert harness.value("sidecar_drift_features_drifted", **labels) == 0
    count = harness.samples("sidecar_drift_evaluation_duration_seconds_count", **labels)
    assert count == {(): 3.0}


def test_nonfinite_rows_are_counted_and_left_out(harness: Harness) -> None:
    model = load(harness, outputs=False)
    x = rows(100, 5)
    x[:10, 0] = np.nan
    x[10:15, 2] = np.inf
    x[15, :] = -np.inf
    send(harness, model, x)
    harness.process()
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    assert harness.value("sidecar_drift_evaluations_total", **labels) == 1
    assert harness.value("sidecar_drift_nonfinite_rows_total", **labels) == 16
    assert harness.value("sidecar_drift_detected", **labels) == 0
    p_values = harness.samples("sidecar_drift_p_value", **labels)
    assert len({dict(k)["feature"] for k in p_values}) == WIDTH  # every feature still tested
    assert all(0 <= v <= 1 for v in p_values.values())
    # the fleet counters count finite values only
    bins = harness.samples("sidecar_drift_bin_rows_total", **labels)
    per_feature: dict[str, float] = {}
    for key, value in bins.items():
        feature = dict(key)["feature"]
        per_feature[feature] = per_feature.get(feature, 0.0) + value
    assert per_feature == {"x[0]": 89.0, "x[1]": 99.0, "x[2]": 94.0, "x[3]": 99.0}


def test_a_window_below_min_window_is_not_evaluated(harness: Harness) -> None:
    model = load(harness, outputs=False, flush_seconds=60)
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    send(harness, model, rows(30, 6))
    harness.process()
    harness.now[0] += 61
    harness.process()  # the flush closes a 30-row window: below min_window 50
    assert (
        harness.value(
            "sidecar_drift_windows_skipped_total", model="m", version="1", reason="too_few_rows"
        )
        == 1
    )
    assert harness.value("sidecar_drift_evaluations_total", **labels) == 0
    assert harness.value("sidecar_drift_window_samples", **labels) == 30
    assert harness.value("sidecar_drift_detected", **labels) is None  # never claims "no drift"
    assert harness.samples("sidecar_drift_p_value", **labels) == {}

    send(harness, model, rows(60, 7))
    harness.process()
    harness.now[0] += 61
    harness.process()  # 60 rows by the flush: evaluated
    assert harness.value("sidecar_drift_evaluations_total", **labels) == 1
    assert harness.value("sidecar_drift_window_samples", **labels) == 60
    assert harness.value("sidecar_drift_detected", **labels) == 0


def test_untestable_features_are_skipped_and_export_no_p_value(tmp_path: Path) -> None:
    reference = np.random.default_rng(0).standard_normal((500, WIDTH))
    reference[:, 1] = 7.0  # constant in the reference: nothing to compare against
    write_reference(tmp_path, "m", "reference.npy", reference)
    harness = Harness(tmp_path)
    model = load(harness, outputs=False)
    x = rows(100, 8)
    x[:, 3] = np.nan  # no finite value in this window
    send(harness, model, x)
    harness.process()
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    assert harness.value("sidecar_drift_features_skipped_total", **labels) == 2
    features = {dict(k)["feature"] for k in harness.samples("sidecar_drift_p_value", **labels)}
    assert features == {"x[0]", "x[2]"}
    for family in ("sidecar_drift_p_value", "sidecar_drift_statistic"):
        assert all(math.isfinite(v) for v in harness.samples(family).values())
    # a constant reference feature has no fleet bins either
    assert "x[1]" not in {
        dict(k)["feature"] for k in harness.samples("sidecar_drift_bin_rows_total")
    }


def test_outputs_of_a_classifier_are_monitored(tmp_path: Path) -> None:
    """Class scores and the predicted class, against the model's outputs on the reference."""
    write_reference(tmp_path, "m", "reference.npy", np.random.default_rng(0).random((2000, WIDTH)))
    harness = Harness(tmp_path)
    model = harness.add(
        {"reference": "reference.npy", "window_size": 200, "min_window": 50},
        SumRuntime(WIDTH),
        task="classification",
        classification={"output": "echo", "class_names": ["a", "b", "c", "d"]},
    )
    assert model.ready, model.error
    labels = {"model": "m", "version": "1", "scope": "outputs"}
    assert harness.value("sidecar_drift_reference_samples", **labels) == 2000
    skewed = np.random.default_rng(1).random((200, WIDTH)).astype(np.float32)
    skewed[:, 2] *= 1.5  # class c wins more often
    send(harness, model, skewed, per_request=10)
    harness.process()
    assert harness.value("sidecar_drift_detected", **labels) == 1
    chi2 = harness.value("sidecar_drift_p_value", **labels, feature="predicted_class", test="chi2")
    assert chi2 is not None and chi2 < 1e-6
    features = {dict(k)["feature"] for k in harness.samples("sidecar_drift_p_value", **labels)}
    assert features == {"predicted_class", "echo[a]", "echo[b]", "echo[c]", "echo[d]"}
    assert (
        harness.value("sidecar_drift_evaluations_total", model="m", version="1", scope="inputs")
        == 1
    )


def test_per_feature_series_are_capped(harness: Harness) -> None:
    model = load(harness, outputs=False, max_exported_features=2, fleet={"max_series": 25})
    send(harness, model, rows(100, 9))
    harness.process()
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    exported = {dict(k)["feature"] for k in harness.samples("sidecar_drift_p_value", **labels)}
    assert exported == {"x[0]", "x[1]"}
    binned = {dict(k)["feature"] for k in harness.samples("sidecar_drift_bin_rows_total", **labels)}
    assert len(harness.samples("sidecar_drift_bin_rows_total", **labels)) == 20
    assert binned == {"x[0]", "x[1]"}


def test_fleet_bins_follow_the_reference(harness: Harness) -> None:
    model = load(harness, outputs=False)
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    ratios = harness.samples("sidecar_drift_reference_bin_ratio", **labels)
    counts = harness.samples("sidecar_drift_bin_rows_total", **labels)
    assert set(ratios) == set(counts) and all(v == 0 for v in counts.values())  # from load
    for feature in ("x[0]", "x[1]", "x[2]", "x[3]"):
        shares = [v for k, v in ratios.items() if dict(k)["feature"] == feature]
        assert len(shares) == 10 and math.isclose(sum(shares), 1.0)
        assert all(0.09 < s < 0.11 for s in shares)  # quantile bins of a continuous feature
    send(harness, model, rows(40, 10))
    harness.process()  # bins count rows as they arrive, windows or not
    counts = harness.samples("sidecar_drift_bin_rows_total", **labels)
    assert sum(counts.values()) == 40 * WIDTH


def test_unloading_a_model_removes_its_series(harness: Harness) -> None:
    import asyncio

    model = load(harness, outputs=False)
    send(harness, model, rows(100, 11))
    harness.process()
    assert harness.samples("sidecar_drift_p_value", model="m")
    asyncio.run(harness.manager.unload_all())
    for family in (
        "sidecar_drift_p_value",
        "sidecar_drift_bin_rows_total",
        "sidecar_drift_detected",
    ):
        assert harness.samples(family, model="m") == {}
    assert harness.drift.worker.monitors() == {}


def test_an_extreme_window_is_evaluated_without_warnings(harness: Harness) -> None:
    """p-values that underflow to subnormals (a huge shift) still combine to p = 0, silently
    (pytest turns warnings into errors: an evaluation that warned would be skipped)."""
    from detectors.correction import cauchy_combination

    combined = cauchy_combination(np.array([[5e-324, 0.5], [0.0, 0.3]]), np.array([0.8, 0.2]))
    assert combined.tolist() == [0.0, 0.0]
    model = load(harness, outputs=False)
    send(harness, model, rows(100, 12, shift=40.0))
    harness.process()
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    assert harness.value("sidecar_drift_detected", **labels) == 1
    assert harness.value("sidecar_drift_features_drifted", **labels) == WIDTH


def test_fleet_bins_are_counted_in_batches_of_rows_or_time(harness: Harness) -> None:
    """Counting takes a few numpy passes: not every worker round, but per 1,024 rows or second."""
    from sidecar.drift.monitor import FLEET_BATCH_ROWS, FLEET_MAX_DELAY

    model = load(harness, outputs=False)
    labels = {"model": "m", "version": "1", "scope": "inputs"}

    def counted() -> float:
        return sum(harness.samples("sidecar_drift_bin_rows_total", **labels).values()) / WIDTH

    send(harness, model, rows(10, 1))
    harness.process()
    assert counted() == 10  # the first rows are counted at once
    send(harness, model, rows(10, 2))
    harness.process()
    assert counted() == 10  # a tick later, same second: waiting for more
    harness.now[0] += FLEET_MAX_DELAY
    harness.process()
    assert counted() == 20  # a second later: counted without new rows
    send(harness, model, rows(FLEET_BATCH_ROWS, 3))
    harness.process()
    assert counted() == 20 + FLEET_BATCH_ROWS  # a full batch is counted at once
