"""Micro-benchmark: what observing one request costs, on and off the hot path.

Part 1 times ``MetricsListener.on_request`` (and ``on_batch``) exactly as the
data plane calls them, on a fresh registry, for the record shapes the server
produces: a plain model, a classifier, a regressor, errors and unknown models,
with 1 and 64 rows. This is what a request waits for.

Part 2 times the background analysis of the queued outputs
(``OutputCollector.drain``) per request, when ``--backlog`` requests of one
model are analysed together (the worker drains a second after the first
queued request, so at 500 requests/s it sees about 500). This is CPU the
server spends beside the requests, not time a request waits.

Two reference rows (one bare prometheus_client ``Counter.inc()`` and
``Histogram.observe()``) show how fast the machine is. Figures are the median
over ``--repeat`` runs of ``--iterations`` calls each, in microseconds.

    python benchmarks/metrics_overhead.py [--iterations 20000] [--repeat 7] [--backlog 500]
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
from prometheus_client import CollectorRegistry, Counter, Histogram

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

CLASSES = tuple(f"c{i}" for i in range(10))


def loaded(name: str, monitoring: MonitoringConfig | None = None) -> ServedModel:
    """A ready model: SumRuntime(10) has outputs ``sum`` [rows, 1] and ``echo`` [rows, 10]."""
    runtime = SumRuntime(10)
    asyncio.run(runtime.load())
    config = ModelConfig(monitoring=monitoring or MonitoringConfig())
    return ServedModel(name, "1", config, runtime, ready=True)


def outputs(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    echo = rng.random((rows, 10), dtype=np.float32)
    echo /= echo.sum(axis=1, keepdims=True)  # rows of probabilities
    return {"sum": echo.sum(axis=1, keepdims=True), "echo": echo}


def time_us(
    call: Callable[[], None],
    iterations: int,
    repeat: int,
    between: Callable[[], None] | None = None,
    chunk: int = 500,
) -> tuple[float, float]:
    """Mean µs per call: (fastest run, median run) over ``repeat`` runs.

    ``between`` runs untimed after every ``chunk`` calls: the output queue is
    drained as the server's worker does, so it never holds more than a
    realistic batch of requests.
    """
    runs = []
    for _ in range(repeat):
        elapsed = 0
        done = 0
        while done < iterations:
            n = min(chunk, iterations - done)
            started = time.perf_counter_ns()
            for _ in range(n):
                call()
            elapsed += time.perf_counter_ns() - started
            done += n
            if between is not None:
                between()
        runs.append(elapsed / iterations / 1000)
    return min(runs), statistics.median(runs)


def machine() -> str:
    """CPU model, visible CPUs, load, and the versions that matter."""
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
    parser.add_argument("--backlog", type=int, default=500, help="requests per drain (part 2)")
    args = parser.parse_args()

    registry = CollectorRegistry()
    metrics = SidecarMetrics(
        registry, latency_buckets=DEFAULT_LATENCY_BUCKETS, sidecar_version="bench"
    )
    listener = MetricsListener(metrics)
    drain = metrics.outputs.drain
    rng = np.random.default_rng(0)
    plain = loaded("plain")
    classifier = loaded(
        "classifier",
        MonitoringConfig(
            task="classification",
            classification=ClassificationConfig(output="echo", class_names=CLASSES),
        ),
    )
    logits = loaded(
        "logits",
        MonitoringConfig(
            task="classification",
            classification=ClassificationConfig(
                output="echo", class_names=CLASSES, scores="logits"
            ),
        ),
    )
    regressor = loaded(
        "regressor",
        MonitoringConfig(task="regression", regression=RegressionConfig(outputs=("sum",))),
    )
    for model in (plain, classifier, logits, regressor):
        listener.on_model_loaded(model)

    def ok(model: ServedModel, rows: int) -> RequestRecord:
        return RequestRecord(model, "id", "OK", rows, 0.0012, 0.0001, None, outputs(rows, rng))

    reference = CollectorRegistry()
    counter = Counter("reference", "r", registry=reference)
    histogram = Histogram(
        "reference_seconds", "r", registry=reference, buckets=DEFAULT_LATENCY_BUCKETS
    )

    records = [
        ("OK, record without outputs", RequestRecord(plain, "id", "OK", 1, 0.0012)),
        ("OK, plain model (2 float outputs), 1 row", ok(plain, 1)),
        ("OK, classifier, 1 row", ok(classifier, 1)),
        ("OK, classifier, 64 rows", ok(classifier, 64)),
        ("OK, regressor, 1 row", ok(regressor, 1)),
        ("INVALID_ARGUMENT", RequestRecord(plain, "id", "INVALID_ARGUMENT", 0, 0.0001)),
        (
            "RESOURCE_EXHAUSTED (refusal with reason)",
            RequestRecord(plain, "id", "RESOURCE_EXHAUSTED", 0, 0.0001, reason="too_many_rows"),
        ),
        ("NOT_FOUND (unknown model)", RequestRecord(None, "id", "NOT_FOUND", 0, 0.0001)),
    ]
    print(f"machine: {machine()}")
    print(f"{args.iterations} calls × {args.repeat} runs; µs per call, fastest and median run\n")
    print("Part 1, on the request path:\n")
    print("| call | µs (fastest run) | µs (median run) |")
    print("|---|---:|---:|")
    it, rep = args.iterations, args.repeat

    def row(label: str, figures: tuple[float, float]) -> None:
        print(f"| {label} | {figures[0]:.2f} | {figures[1]:.2f} |")

    row("reference: prometheus_client `Counter.inc()`", time_us(counter.inc, it, rep))
    observe = histogram.observe
    row(
        "reference: prometheus_client `Histogram.observe()`",
        time_us(lambda: observe(0.0012), it, rep),
    )
    for label, record in records:
        us = time_us(
            lambda r=record: listener.on_request(r),  # type: ignore[misc]
            it,
            rep,
            between=drain,
            chunk=args.backlog,
        )
        row(f"`on_request`: {label}", us)
    row(
        "`on_batch` (compute time + batch size)",
        time_us(lambda: listener.on_batch(plain, 8, 0.001), it, rep),
    )

    print(f"\nPart 2, background analysis, {args.backlog} queued requests per drain:\n")
    print("| model, rows per request | µs per request (fastest run) | µs (median run) |")
    print("|---|---:|---:|")
    for label, model, rows in (
        ("plain (NaN checks only), 1 row", plain, 1),
        ("classifier (probabilities), 1 row", classifier, 1),
        ("classifier (probabilities), 64 rows", classifier, 64),
        ("classifier (logits, softmax), 1 row", logits, 1),
        ("regressor, 1 row", regressor, 1),
    ):
        record = ok(model, rows)
        runs = []
        for _ in range(rep):
            for _ in range(args.backlog):
                listener.on_request(record)
            started = time.perf_counter_ns()
            drain()
            runs.append((time.perf_counter_ns() - started) / args.backlog / 1000)
        row(label, (min(runs), statistics.median(runs)))


if __name__ == "__main__":
    main()
