"""Micro-benchmark: what observing one request costs on the hot path.

Times ``MetricsListener.on_request`` (and ``on_batch``) exactly as the data
plane calls them, on a fresh registry, for the record shapes the server
produces: a plain model, a classifier, a regressor, errors and unknown models,
with 1 and 64 rows. Prints a Markdown table of microseconds per call (the
median over ``--repeat`` runs of ``--iterations`` calls each).

    python benchmarks/metrics_overhead.py [--iterations 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.metrics import SidecarMetrics
from sidecar.config import (
    DEFAULT_LATENCY_BUCKETS,
    ClassificationConfig,
    ModelConfig,
    MonitoringConfig,
    RegressionConfig,
)
from sidecar.events import RequestRecord
from sidecar.metrics_listener import MetricsListener
from sidecar.models import ServedModel
from sidecar.runtimes.fakes import SumRuntime


def loaded(name: str, config: ModelConfig, width: int) -> ServedModel:
    runtime = SumRuntime(width)
    asyncio.run(runtime.load())
    return ServedModel(name, "1", config, runtime, ready=True)


def outputs(rows: int, width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    echo = rng.random((rows, width), dtype=np.float32)
    echo /= echo.sum(axis=1, keepdims=True)  # rows of probabilities
    return {"sum": echo.sum(axis=1, keepdims=True), "echo": echo}


def time_call(call: Callable[[], None], iterations: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean µs per call."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for _ in range(iterations):
            call()
        runs.append((time.perf_counter_ns() - started) / iterations / 1000)
    return statistics.median(runs)


def machine() -> str:
    """CPU model, visible CPUs, and the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible, load average {load:.2f}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"prometheus_client {metadata.version('prometheus-client')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    registry = CollectorRegistry()
    listener = MetricsListener(
        SidecarMetrics(registry, latency_buckets=DEFAULT_LATENCY_BUCKETS, sidecar_version="bench")
    )
    rng = np.random.default_rng(0)
    plain = loaded("plain", ModelConfig(), 10)
    classifier = loaded(
        "classifier",
        ModelConfig(
            monitoring=MonitoringConfig(
                task="classification",
                classification=ClassificationConfig(
                    output="echo", class_names=tuple(f"c{i}" for i in range(10))
                ),
            )
        ),
        10,
    )
    logits = loaded(
        "logits",
        ModelConfig(
            monitoring=MonitoringConfig(
                task="classification",
                classification=ClassificationConfig(
                    output="echo", class_names=tuple(f"c{i}" for i in range(10)), scores="logits"
                ),
            )
        ),
        10,
    )
    regressor = loaded(
        "regressor",
        ModelConfig(
            monitoring=MonitoringConfig(
                task="regression", regression=RegressionConfig(outputs=("sum",))
            )
        ),
        10,
    )
    for model in (plain, classifier, logits, regressor):
        listener.on_model_loaded(model)

    def ok(model: ServedModel, rows: int) -> Callable[[], None]:
        record = RequestRecord(
            model, "id", "OK", rows, 0.0012, 0.0001, None, outputs(rows, 10, rng)
        )
        return lambda: listener.on_request(record)

    no_outputs = RequestRecord(plain, "id", "OK", 1, 0.0012)
    invalid = RequestRecord(plain, "id", "INVALID_ARGUMENT", 0, 0.0001)
    refused = RequestRecord(plain, "id", "RESOURCE_EXHAUSTED", 0, 0.0001, reason="too_many_rows")
    unknown = RequestRecord(None, "id", "NOT_FOUND", 0, 0.0001)
    cases: list[tuple[str, Callable[[], None]]] = [
        (
            "OK, outputs not inspected (record without outputs)",
            lambda: listener.on_request(no_outputs),
        ),
        ("OK, plain model, 1 row (NaN check of 2 outputs)", ok(plain, 1)),
        ("OK, plain model, 64 rows", ok(plain, 64)),
        ("OK, classifier (probabilities), 1 row", ok(classifier, 1)),
        ("OK, classifier (probabilities), 64 rows", ok(classifier, 64)),
        ("OK, classifier (logits → softmax), 1 row", ok(logits, 1)),
        ("OK, classifier (logits → softmax), 64 rows", ok(logits, 64)),
        ("OK, regressor, 1 row", ok(regressor, 1)),
        ("OK, regressor, 64 rows", ok(regressor, 64)),
        ("INVALID_ARGUMENT", lambda: listener.on_request(invalid)),
        ("RESOURCE_EXHAUSTED (refusal)", lambda: listener.on_request(refused)),
        ("NOT_FOUND (unknown model)", lambda: listener.on_request(unknown)),
        ("on_batch (compute time + batch size)", lambda: listener.on_batch(plain, 8, 0.001)),
    ]
    print(f"machine: {machine()}")
    print(f"iterations: {args.iterations} × {args.repeat} runs, median of runs\n")
    print("| record | µs per call |")
    print("|---|---:|")
    for label, call in cases:
        print(f"| {label} | {time_call(call, args.iterations, args.repeat):.2f} |")


if __name__ == "__main__":
    main()
