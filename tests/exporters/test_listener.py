"""MetricsListener: RequestRecords and lifecycle events become observations."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from exporters.metrics import SidecarMetrics
from sidecar.config import DEFAULT_LATENCY_BUCKETS, ModelConfig, MonitoringConfig, RegressionConfig
from sidecar.events import RequestRecord
from sidecar.metrics_listener import MetricsListener, model_facts, output_monitoring
from sidecar.models import ServedModel
from sidecar.runtimes.fakes import SumRuntime


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def listener(registry: CollectorRegistry) -> MetricsListener:
    metrics = SidecarMetrics(registry, latency_buckets=DEFAULT_LATENCY_BUCKETS, sidecar_version="0")
    return MetricsListener(metrics)


def served(config: ModelConfig | None = None, name: str = "sum") -> ServedModel:
    runtime = SumRuntime()
    asyncio.run(runtime.load())
    model = ServedModel(name, "1", config or ModelConfig(), runtime, ready=True, load_seconds=0.5)
    return model


def test_output_monitoring_from_config_and_signature() -> None:
    config = ModelConfig(
        monitoring=MonitoringConfig(
            task="regression", regression=RegressionConfig(outputs=("sum",), buckets=(1.0, 2.0))
        )
    )
    mon = output_monitoring(served(config))
    assert mon.float_outputs == ("sum", "echo")
    assert mon.regression_outputs == ("sum",)
    assert mon.regression_buckets == (1.0, 2.0)
    assert mon.classification_output is None
    facts = model_facts(served(config))
    assert (facts.runtime, facts.device, facts.load_seconds) == ("fake", "cpu", 0.5)


def test_request_records(registry: CollectorRegistry, listener: MetricsListener) -> None:
    model = served()
    listener.on_model_loaded(model)
    x = np.ones((2, 4), dtype=np.float32)
    outputs = {"sum": np.array([[4.0], [np.nan]], dtype=np.float32), "echo": x}
    listener.on_request(RequestRecord(model, "r1", "OK", 2, 0.002, 0.001, {"x": x}, outputs))
    listener.on_request(RequestRecord(None, "r2", "UNAVAILABLE", 0, 0.0001, reason="shutting_down"))
    listener.on_batch(model, 2, 0.0005)
    get = registry.get_sample_value
    labels = {"model": "sum", "version": "1"}
    assert get("sidecar_inference_requests_total", {**labels, "code": "OK"}) == 1
    assert get("sidecar_queue_duration_seconds_sum", labels) == 0.001
    assert get("sidecar_nonfinite_outputs_total", {**labels, "output": "sum"}) == 1
    assert get("sidecar_rejected_requests_total", {"model": "", "reason": "shutting_down"}) == 1
    assert get("sidecar_compute_duration_seconds_count", labels) == 1
    assert get("sidecar_model_ready", labels) == 1


def test_a_model_seen_first_in_a_request_is_resolved_then(
    registry: CollectorRegistry, listener: MetricsListener
) -> None:
    model = served(name="late")
    listener.on_batch(model, 1, 0.001)
    listener.on_request(RequestRecord(model, "r", "OK", 1, 0.001))
    labels = {"model": "late", "version": "1"}
    assert registry.get_sample_value("sidecar_inference_samples_total", labels) == 1
    assert registry.get_sample_value("sidecar_batch_size_count", labels) == 1


def test_unload_and_failure(registry: CollectorRegistry, listener: MetricsListener) -> None:
    model = served()
    listener.on_model_loaded(model)
    listener.on_model_unloaded(model)
    listener.on_model_failed("other", "2", "corrupt file")
    get = registry.get_sample_value
    assert get("sidecar_model_ready", {"model": "sum", "version": "1"}) == 0
    assert get("sidecar_model_ready", {"model": "other", "version": "2"}) == 0
    assert get("sidecar_model_load_failures_total", {"model": "other"}) == 1
