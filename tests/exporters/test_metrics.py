"""SidecarMetrics / ModelMetrics on a fresh registry: what each observation exports."""

from __future__ import annotations

import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from scipy.special import softmax

from exporters.metrics import (
    UNKNOWN_MODEL,
    InflightCount,
    InflightSnapshot,
    ModelFacts,
    ModelMetrics,
    SidecarMetrics,
    dependency_version,
)
from exporters.outputs import DEFAULT_OUTPUT_BUCKETS, OTHER_CLASS, OutputMonitoring

BUCKETS = (0.001, 0.01, 0.1, 1.0)
CLASSES = ("cat", "dog", "bird")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> SidecarMetrics:
    return SidecarMetrics(registry, latency_buckets=BUCKETS, sidecar_version="9.9.9")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def label_values(registry: CollectorRegistry, sample_name: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for family in registry.collect()
        for s in family.samples
        if s.name == sample_name and label in s.labels
    }


def classifier(metrics: SidecarMetrics, logits: bool = False) -> ModelMetrics:
    return metrics.model(
        "m",
        "1",
        OutputMonitoring(
            float_outputs=("scores",),
            classification_output="scores",
            class_names=CLASSES,
            logits=logits,
        ),
    )


def regressor(metrics: SidecarMetrics, buckets: tuple[float, ...] | None = None) -> ModelMetrics:
    return metrics.model(
        "r",
        "2",
        OutputMonitoring(
            float_outputs=("y",), regression_outputs=("y",), regression_buckets=buckets
        ),
    )


# --------------------------------------------------------------------------- registry


def test_importing_registers_nothing_globally() -> None:
    # a fresh interpreter: what the default registry holds with and without our modules
    script = (
        "import sys\n"
        "from prometheus_client import REGISTRY\n"
        "before = {f.name for f in REGISTRY.collect()}\n"
        "import exporters.metrics, exporters.gpu, exporters.http, exporters.outputs\n"
        "import sidecar.metrics_listener, sidecar.app\n"
        "after = {f.name for f in REGISTRY.collect()}\n"
        "sys.exit(0 if after == before else 1)\n"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", script], cwd=root, check=False).returncode == 0


def test_construction_touches_no_global_registry(registry: CollectorRegistry) -> None:
    before = {family.name for family in REGISTRY.collect()}
    SidecarMetrics(registry, latency_buckets=BUCKETS, sidecar_version="0")
    assert {family.name for family in REGISTRY.collect()} == before
    assert not any(name.startswith("sidecar_") for name in before)


def test_registries_are_independent() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    SidecarMetrics(a, latency_buckets=BUCKETS, sidecar_version="0").model("m", "1").request_done(
        "OK", 1, 0.01
    )
    SidecarMetrics(b, latency_buckets=BUCKETS, sidecar_version="0")
    assert value(a, "sidecar_inference_requests_total", model="m", version="1", code="OK") == 1
    assert value(b, "sidecar_inference_requests_total", model="m", version="1", code="OK") is None


def test_build_info_names_the_versions(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    labels = {
        "version": "9.9.9",
        "python": platform.python_version(),
        "onnxruntime": dependency_version("onnxruntime", "onnxruntime-gpu"),
        "torch": dependency_version("torch"),
    }
    assert value(registry, "sidecar_build_info", **labels) == 1
    assert labels["onnxruntime"]  # installed in the test environment
    assert dependency_version("no-such-distribution-xyz") == ""


# --------------------------------------------------------------------------- serving


def test_requests_by_code_and_rows(registry: CollectorRegistry, metrics: SidecarMetrics) -> None:
    handle = metrics.model("m", "1")
    handle.request_done("OK", 3, 0.005)
    handle.request_done("OK", 2, 0.005)
    handle.request_done("INVALID_ARGUMENT", 0, 0.0001)
    labels = {"model": "m", "version": "1"}
    assert value(registry, "sidecar_inference_requests_total", code="OK", **labels) == 2
    assert (
        value(registry, "sidecar_inference_requests_total", code="INVALID_ARGUMENT", **labels) == 1
    )
    assert value(registry, "sidecar_inference_samples_total", **labels) == 5
    # latency of successful requests only
    assert value(registry, "sidecar_request_duration_seconds_count", **labels) == 2
    assert value(registry, "sidecar_request_duration_seconds_sum", **labels) == pytest.approx(0.01)


def test_a_loaded_model_exports_zero_before_traffic(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    classifier(metrics)
    labels = {"model": "m", "version": "1"}
    assert value(registry, "sidecar_inference_requests_total", code="OK", **labels) == 0
    assert value(registry, "sidecar_inference_samples_total", **labels) == 0
    assert value(registry, "sidecar_predictions_total", **labels, **{"class": "dog"}) == 0
    assert value(registry, "sidecar_nonfinite_outputs_total", output="scores", **labels) == 0


def test_latency_buckets_are_the_configured_ones(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    handle = metrics.model("m", "1")
    handle.request_done("OK", 1, 0.005, queue_seconds=0.0005)
    assert label_values(registry, "sidecar_request_duration_seconds_bucket", "le") == {
        "0.001",
        "0.01",
        "0.1",
        "1.0",
        "+Inf",
    }
    labels = {"model": "m", "version": "1"}
    bucket = "sidecar_request_duration_seconds_bucket"
    assert value(registry, bucket, le="0.001", **labels) == 0
    assert value(registry, bucket, le="0.01", **labels) == 1
    queue = "sidecar_queue_duration_seconds_bucket"
    assert value(registry, queue, le="0.001", **labels) == 1


def test_batches(registry: CollectorRegistry, metrics: SidecarMetrics) -> None:
    handle = metrics.model("m", "1")
    handle.batch_done(5, 0.02)
    handle.batch_done(64, 0.2)
    labels = {"model": "m", "version": "1"}
    assert value(registry, "sidecar_compute_duration_seconds_count", **labels) == 2
    assert value(registry, "sidecar_compute_duration_seconds_sum", **labels) == pytest.approx(0.22)
    assert value(registry, "sidecar_batch_size_bucket", le="4.0", **labels) == 0
    assert value(registry, "sidecar_batch_size_bucket", le="8.0", **labels) == 1
    assert value(registry, "sidecar_batch_size_bucket", le="64.0", **labels) == 2
    assert value(registry, "sidecar_batch_size_sum", **labels) == 69


def test_refusals_count_by_reason(registry: CollectorRegistry, metrics: SidecarMetrics) -> None:
    handle = metrics.model("m", "1")
    handle.request_done("RESOURCE_EXHAUSTED", 0, 0.0001, reason="too_large")
    handle.request_done("RESOURCE_EXHAUSTED", 0, 0.0001, reason="too_large")
    metrics.unknown_model().request("UNAVAILABLE", "shutting_down")
    assert value(registry, "sidecar_rejected_requests_total", model="m", reason="too_large") == 2
    assert (
        value(
            registry, "sidecar_rejected_requests_total", model=UNKNOWN_MODEL, reason="shutting_down"
        )
        == 1
    )
    code = {"code": "RESOURCE_EXHAUSTED", "model": "m", "version": "1"}
    assert value(registry, "sidecar_inference_requests_total", **code) == 2
    # an error without a reason is not a refusal
    handle.request_done("INTERNAL", 1, 0.01)
    assert label_values(registry, "sidecar_rejected_requests_total", "reason") == {
        "too_large",
        "shutting_down",
    }


def test_unknown_models_share_one_label_value(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    unknown = metrics.unknown_model()
    for _ in range(3):
        unknown.request("NOT_FOUND")
    assert (
        value(registry, "sidecar_inference_requests_total", model="", version="", code="NOT_FOUND")
        == 3
    )
    assert label_values(registry, "sidecar_inference_requests_total", "model") == {""}
    # and no serving histograms exist for it
    assert label_values(registry, "sidecar_request_duration_seconds_count", "model") == set()


# --------------------------------------------------------------------------- outputs


def test_predicted_classes_and_confidence(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    handle = classifier(metrics)
    scores = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.05, 0.9, 0.05]])
    handle.request_done("OK", 4, 0.001, outputs={"scores": scores})  # float64: 0.8 <= le 0.8
    labels = {"model": "m", "version": "1"}

    def predicted(name: str) -> float | None:
        return value(registry, "sidecar_predictions_total", **labels, **{"class": name})

    assert (predicted("cat"), predicted("dog"), predicted("bird")) == (1, 2, 1)
    assert value(registry, "sidecar_prediction_confidence_count", **labels) == 4
    assert value(registry, "sidecar_prediction_confidence_sum", **labels) == pytest.approx(
        0.7 + 0.8 + 0.5 + 0.9, rel=1e-6
    )
    bucket = "sidecar_prediction_confidence_bucket"
    assert value(registry, bucket, le="0.5", **labels) == 1
    assert value(registry, bucket, le="0.7", **labels) == 2
    assert value(registry, bucket, le="0.8", **labels) == 3
    assert value(registry, bucket, le="0.9", **labels) == 4


def test_one_request_at_a_time_and_many_at_once_agree() -> None:
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(50, 3)).astype(np.float32)
    one, many = CollectorRegistry(), CollectorRegistry()
    m_one = SidecarMetrics(one, latency_buckets=BUCKETS, sidecar_version="0")
    h_one = classifier(m_one, True)
    h_many = classifier(SidecarMetrics(many, latency_buckets=BUCKETS, sidecar_version="0"), True)
    for row in scores:
        h_one.request_done("OK", 1, 0.001, outputs={"scores": row[None, :]})
        m_one.outputs.drain()  # analysed one request at a time
    h_many.request_done("OK", 50, 0.001, outputs={"scores": scores})
    labels = {"model": "m", "version": "1"}
    for name in CLASSES:
        counts = [
            value(r, "sidecar_predictions_total", **labels, **{"class": name}) for r in (one, many)
        ]
        assert counts[0] == counts[1]
    for le in ("0.5", "0.7", "0.9", "+Inf"):
        a = value(one, "sidecar_prediction_confidence_bucket", le=le, **labels)
        b = value(many, "sidecar_prediction_confidence_bucket", le=le, **labels)
        assert a == b
    sums = [value(r, "sidecar_prediction_confidence_sum", **labels) for r in (one, many)]
    assert sums[0] == pytest.approx(sums[1], rel=1e-6)


def test_logits_go_through_softmax(registry: CollectorRegistry, metrics: SidecarMetrics) -> None:
    handle = classifier(metrics, logits=True)
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    handle.request_done("OK", 2, 0.001, outputs={"scores": logits})
    expected = softmax(logits.astype(np.float64), axis=1).max(axis=1).sum()
    labels = {"model": "m", "version": "1"}
    assert value(registry, "sidecar_prediction_confidence_sum", **labels) == pytest.approx(
        expected, rel=1e-6
    )
    assert value(registry, "sidecar_predictions_total", **labels, **{"class": "cat"}) == 1
    assert value(registry, "sidecar_predictions_total", **labels, **{"class": "bird"}) == 1


def test_unconfigured_class_index_is_other(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    handle = classifier(metrics)
    # a model whose output is wider than the configured names (dynamic width)
    scores = np.array([[0.1, 0.1, 0.1, 0.7], [0.0, 0.0, 0.0, 0.0, 0.9, 0.1][:4]])
    handle.request_done("OK", 2, 0.001, outputs={"scores": scores})
    handle.request_done("OK", 1, 0.001, outputs={"scores": np.array([[0.0, 0.0, 0.1, 0.0, 0.9]])})
    labels = {"model": "m", "version": "1"}
    assert value(registry, "sidecar_predictions_total", **labels, **{"class": OTHER_CLASS}) == 2
    assert label_values(registry, "sidecar_predictions_total", "class") == {*CLASSES, OTHER_CLASS}


def test_nonfinite_outputs_are_counted_and_kept_out_of_histograms(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    handle = classifier(metrics)
    scores = np.array([[0.1, 0.8, 0.1], [np.nan, 0.5, 0.5], [0.2, np.inf, 0.1]], dtype=np.float32)
    handle.request_done("OK", 3, 0.001, outputs={"scores": scores})
    labels = {"model": "m", "version": "1"}
    assert value(registry, "sidecar_nonfinite_outputs_total", output="scores", **labels) == 2
    assert value(registry, "sidecar_prediction_confidence_count", **labels) == 1
    assert value(registry, "sidecar_prediction_confidence_sum", **labels) == pytest.approx(0.8)
    total = sum(
        value(registry, "sidecar_predictions_total", **labels, **{"class": c}) or 0 for c in CLASSES
    )
    assert total == 1
    # a single NaN row (scalar path) is skipped too
    handle.request_done("OK", 1, 0.001, outputs={"scores": np.full((1, 3), np.nan)})
    assert value(registry, "sidecar_prediction_confidence_count", **labels) == 1
    assert value(registry, "sidecar_nonfinite_outputs_total", output="scores", **labels) == 5


def test_regression_values(registry: CollectorRegistry, metrics: SidecarMetrics) -> None:
    handle = regressor(metrics, buckets=(10.0, 100.0, 1000.0))
    y = np.array([[5.0], [50.0], [500.0], [np.nan], [5000.0]], dtype=np.float32)
    handle.request_done("OK", 5, 0.001, outputs={"y": y})
    labels = {"model": "r", "version": "2", "output": "y"}
    bucket = "sidecar_output_value_bucket"
    assert [
        value(registry, bucket, le=le, **labels) for le in ("10.0", "100.0", "1000.0", "+Inf")
    ] == [
        1,
        2,
        3,
        4,
    ]
    assert value(registry, "sidecar_output_value_sum", **labels) == pytest.approx(5555.0)
    assert value(registry, "sidecar_output_value_count", **labels) == 4
    assert (
        value(registry, "sidecar_nonfinite_outputs_total", model="r", version="2", output="y") == 1
    )


def test_regression_default_buckets_span_both_signs(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    handle = regressor(metrics)
    handle.request_done("OK", 3, 0.001, outputs={"y": np.array([-3.0, 0.0, 42.0])})
    labels = {"model": "r", "version": "2", "output": "y"}
    les = label_values(registry, "sidecar_output_value_bucket", "le")
    assert len(les) == len(DEFAULT_OUTPUT_BUCKETS) + 1
    bucket = "sidecar_output_value_bucket"
    assert value(registry, bucket, le="-10.0", **labels) == 0
    assert value(registry, bucket, le="-1.0", **labels) == 1
    assert value(registry, bucket, le="-0.01", **labels) == 1
    assert value(registry, bucket, le="0.0", **labels) == 2
    assert value(registry, bucket, le="100.0", **labels) == 3
    # OpenMetrics: a histogram with negative buckets has no _sum (it is not a counter)
    assert value(registry, "sidecar_output_value_sum", **labels) is None


def test_integer_outputs_are_not_checked_for_nan(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    handle = metrics.model("m", "1", OutputMonitoring(float_outputs=("f",)))
    handle.request_done(
        "OK", 2, 0.001, outputs={"f": np.array([1.0, math.inf]), "i": np.array([1, 2])}
    )
    assert (
        value(registry, "sidecar_nonfinite_outputs_total", model="m", version="1", output="f") == 1
    )
    assert label_values(registry, "sidecar_nonfinite_outputs_total", "output") == {"f"}


# --------------------------------------------------------------------------- models


FACTS = ModelFacts(
    runtime="onnxruntime",
    runtime_version="1.0",
    device="cpu",
    opset="ai.onnx:17",
    sha256="0123456789ab",
    parameters=4810,
    layers=6,
    size_bytes=19582,
    load_seconds=0.25,
    operators={"MatMul": 2, "Relu": 1},
)


def test_model_lifecycle(registry: CollectorRegistry, metrics: SidecarMetrics) -> None:
    metrics.model_loaded("m", "1", FACTS)
    labels = {"model": "m", "version": "1"}
    info = {
        **labels,
        "runtime": "onnxruntime",
        "runtime_version": "1.0",
        "device": "cpu",
        "opset": "ai.onnx:17",
        "sha256": "0123456789ab",
    }
    assert value(registry, "sidecar_model_ready", **labels) == 1
    assert value(registry, "sidecar_model_info", **info) == 1
    assert value(registry, "sidecar_model_parameters", **labels) == 4810
    assert value(registry, "sidecar_model_layers", **labels) == 6
    assert value(registry, "sidecar_model_size_bytes", **labels) == 19582
    assert value(registry, "sidecar_model_load_duration_seconds", **labels) == 0.25
    assert value(registry, "sidecar_model_operators", op_type="MatMul", **labels) == 2

    # the same version reloaded from a different file: one info series, the new one
    swapped = ModelFacts(**{**_fields(FACTS), "sha256": "ffffffffffff", "operators": {"Gemm": 3}})
    metrics.model_loaded("m", "1", swapped)
    assert label_values(registry, "sidecar_model_info", "sha256") == {"ffffffffffff"}
    assert label_values(registry, "sidecar_model_operators", "op_type") == {"Gemm"}

    metrics.model_unloaded("m", "1")
    assert value(registry, "sidecar_model_ready", **labels) == 0


def test_load_failures(registry: CollectorRegistry, metrics: SidecarMetrics) -> None:
    metrics.model_failed("bad", "3")
    metrics.model_failed("bad", "")  # a repository problem: no version
    assert value(registry, "sidecar_model_load_failures_total", model="bad") == 2
    assert value(registry, "sidecar_model_ready", model="bad", version="3") == 0
    assert label_values(registry, "sidecar_model_ready", "version") == {"3"}


def _fields(facts: ModelFacts) -> dict[str, object]:
    return {name: getattr(facts, name) for name in ModelFacts.__dataclass_fields__}


# --------------------------------------------------------------------------- in flight


def test_inflight_is_read_at_scrape_time(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    state = {"server": 0, "m": 0}
    metrics.watch_inflight(
        lambda: InflightSnapshot(state["server"], [InflightCount("m", "1", state["m"])])
    )
    assert value(registry, "sidecar_inflight_requests", model="m", version="1") == 0
    state.update(server=3, m=2)
    assert value(registry, "sidecar_inflight_requests", model="m", version="1") == 2
    assert value(registry, "sidecar_server_inflight_requests") == 3
    with pytest.raises(RuntimeError, match="twice"):
        metrics.watch_inflight(lambda: InflightSnapshot(0))
