"""A real server on loopback with metrics wired in by build_server: what /metrics shows."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from tritonclient.utils import InferenceServerException

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.config import ClassificationConfig, ModelConfig, MonitoringConfig
from sidecar.metrics_listener import ServerMetrics
from sidecar.runtimes.fakes import FailingLoadRuntime, FailingRuntime, SumRuntime
from sidecar.types import Tensors
from tests.exporters.fakes import FakeGpu, FakeNvml
from tests.exporters.scrape import scrape, wait_for
from tests.helpers import ServerThread, free_port, running_server, server_config

SUM = {"model": "sum", "version": "1"}


class GatedRuntime(SumRuntime):
    """Answers only once the test opens the gate (an asyncio.Event on the server's loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None

    async def predict(self, inputs: Tensors) -> Tensors:
        self.gate = self.gate or asyncio.Event()
        await self.gate.wait()
        return await super().predict(inputs)


def infer(
    client: triton.InferenceServerClient, model: str, rows: int = 1, width: int = 4
) -> triton.InferResult:
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], client_timeout=10)  # a blocked server fails fast


def metrics_for(fake_gpu: bool = False) -> ServerMetrics:
    """Metrics for a loopback server, on a fresh registry, with a fake GPU or none."""
    nvml = FakeNvml([FakeGpu()]) if fake_gpu else None
    return ServerMetrics(server_config().metrics, gpu=GpuCollector(nvml, lambda: None))


@pytest.fixture(scope="module")
def served(
    empty_repository: Path,
) -> Iterator[tuple[ServerThread, ServerMetrics, triton.InferenceServerClient]]:
    metrics = metrics_for()
    config = server_config(empty_repository, limits={"max_batch_rows": 8})
    fakes = [
        ("sum", SumRuntime(), None),
        ("broken", FailingRuntime(), None),
        ("unloadable", FailingLoadRuntime(), None),
    ]
    with running_server(config, AppParts(metrics=metrics), fakes) as thread:
        yield thread, metrics, triton.InferenceServerClient(thread.address)


def test_requests_rows_and_batches(served: tuple[ServerThread, ServerMetrics, object]) -> None:
    _, metrics, client = served
    assert isinstance(client, triton.InferenceServerClient)
    before = scrape(metrics.http.port)
    ok = before.value("sidecar_inference_requests_total", code="OK", **SUM) or 0
    rows = before.value("sidecar_inference_samples_total", **SUM) or 0
    for n in (1, 3, 5):
        infer(client, "sum", rows=n)
    after = scrape(metrics.http.port)
    assert after.value("sidecar_inference_requests_total", code="OK", **SUM) == ok + 3
    assert after.value("sidecar_inference_samples_total", **SUM) == rows + 9
    assert after.value("sidecar_compute_duration_seconds_count", **SUM) == ok + 3
    assert after.value("sidecar_batch_size_sum", **SUM) == rows + 9
    duration = after.value("sidecar_request_duration_seconds_count", **SUM)
    assert duration == ok + 3
    assert (after.value("sidecar_request_duration_seconds_sum", **SUM) or 0) > 0


def test_errors_by_code_and_refusals_by_reason(
    served: tuple[ServerThread, ServerMetrics, triton.InferenceServerClient],
) -> None:
    _, metrics, client = served
    with pytest.raises(InferenceServerException, match="rows"):
        infer(client, "sum", rows=9)  # max_batch_rows is 8
    with pytest.raises(InferenceServerException):
        infer(client, "sum", width=3)  # wrong shape
    with pytest.raises(InferenceServerException):
        infer(client, "broken")  # the model raises
    for name in ("no-such-model", "another\nmade-up name"):
        with pytest.raises(InferenceServerException):
            infer(client, name)
    got = scrape(metrics.http.port)
    assert got.value("sidecar_inference_requests_total", code="RESOURCE_EXHAUSTED", **SUM) == 1
    assert got.value("sidecar_inference_requests_total", code="INVALID_ARGUMENT", **SUM) == 1
    assert (
        got.value("sidecar_inference_requests_total", code="INTERNAL", model="broken", version="1")
        == 1
    )
    assert got.value("sidecar_rejected_requests_total", model="sum", reason="too_many_rows") == 1
    # client-chosen model names never become label values
    assert (
        got.value("sidecar_inference_requests_total", code="NOT_FOUND", model="", version="") == 2
    )
    assert got.label_values("sidecar_inference_requests_total", "model") <= {
        "",
        "sum",
        "broken",
    }


def test_model_state(served: tuple[ServerThread, ServerMetrics, object]) -> None:
    _, metrics, _ = served
    got = scrape(metrics.http.port)
    assert got.value("sidecar_model_ready", **SUM) == 1
    assert got.value("sidecar_model_ready", model="unloadable", version="1") == 0
    assert got.value("sidecar_model_load_failures_total", model="unloadable") == 1
    info = {
        **SUM,
        "runtime": "fake",
        "runtime_version": "0",
        "device": "cpu",
        "opset": "",
        "sha256": "000000000000",
    }
    assert got.value("sidecar_model_info", **info) == 1
    assert got.value("sidecar_model_load_duration_seconds", **SUM) is not None
    assert got.value("process_resident_memory_bytes") is not None
    assert not any(name.startswith("sidecar_gpu") for name in got.families)  # no GPU here


def test_healthz(served: tuple[ServerThread, ServerMetrics, object]) -> None:
    import urllib.request

    _, metrics, _ = served
    with urllib.request.urlopen(f"{metrics.http.url}/healthz", timeout=10) as response:
        assert response.status == 200


def test_inflight_requests_at_scrape_time(empty_repository: Path) -> None:
    gated = GatedRuntime()
    metrics = metrics_for()
    with running_server(
        server_config(empty_repository), AppParts(metrics=metrics), [("gated", gated, None)]
    ) as t:
        client = triton.InferenceServerClient(t.address)
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(infer(client, "gated", rows=2)))
        worker.start()
        labels = {"model": "gated", "version": "1"}

        def inflight() -> bool:
            got = scrape(metrics.http.port)
            return (
                got.value("sidecar_inflight_requests", **labels) == 1
                and got.value("sidecar_server_inflight_requests") == 1
            )

        try:
            wait_for(inflight, what="one request in flight")
        finally:
            t.loop.call_soon_threadsafe(lambda: gated.gate and gated.gate.set())
            worker.join(10)
        assert len(results) == 1
        got = scrape(metrics.http.port)
        assert got.value("sidecar_inflight_requests", **labels) == 0
        assert got.value("sidecar_server_inflight_requests") == 0


class BlockingCollector(Collector):
    """A collector that waits inside collect() until released: a scrape that hangs."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        self.entered.set()
        assert self.release.wait(30)
        return iter(())


def test_a_hanging_scrape_does_not_block_inference(empty_repository: Path) -> None:
    metrics = metrics_for()
    blocker = BlockingCollector()
    metrics.registry.register(blocker)
    with running_server(
        server_config(empty_repository), AppParts(metrics=metrics), [("sum", SumRuntime(), None)]
    ) as t:
        client = triton.InferenceServerClient(t.address)
        scraper = threading.Thread(target=lambda: scrape(metrics.http.port))
        scraper.start()
        try:
            assert blocker.entered.wait(10)
            started = time.perf_counter()
            for _ in range(20):
                result = infer(client, "sum", rows=2)
                assert result.as_numpy("sum").tolist() == [[6.0], [22.0]]
            elapsed = time.perf_counter() - started
            assert blocker.entered.is_set() and not blocker.release.is_set()  # still hanging
            assert elapsed < 10
        finally:
            blocker.release.set()
            scraper.join(10)
        assert (
            scrape(metrics.http.port).value(
                "sidecar_inference_requests_total", code="OK", model="sum", version="1"
            )
            == 20
        )


def test_concurrent_scrapes_while_serving(empty_repository: Path) -> None:
    metrics = metrics_for(fake_gpu=True)
    with running_server(
        server_config(empty_repository), AppParts(metrics=metrics), [("sum", SumRuntime(), None)]
    ) as t:
        client = triton.InferenceServerClient(t.address)
        stop = threading.Event()
        scrapes: list[int] = []
        errors: list[BaseException] = []

        def scrape_loop() -> None:
            while not stop.is_set():
                try:
                    got = scrape(metrics.http.port)
                    assert got.value("sidecar_gpu_memory_total_bytes", gpu="0") == 80 * 1024**3
                    scrapes.append(1)
                except BaseException as exc:  # collected and re-raised in the test thread
                    errors.append(exc)
                    return

        scrapers = [threading.Thread(target=scrape_loop) for _ in range(3)]
        for s in scrapers:
            s.start()
        try:
            wait_for(lambda: len(scrapes) >= 3, what="scrapes to start")
            for _ in range(100):
                infer(client, "sum")
        finally:
            stop.set()
            for s in scrapers:
                s.join(10)
        assert not errors, errors[0]
        assert scrapes
        got = scrape(metrics.http.port)
        assert (
            got.value("sidecar_inference_requests_total", code="OK", model="sum", version="1")
            == 100
        )


def test_classifier_through_the_server(empty_repository: Path) -> None:
    config = ModelConfig(
        monitoring=MonitoringConfig(
            task="classification",
            classification=ClassificationConfig(
                output="echo", class_names=("a", "b", "c", "d"), scores="logits"
            ),
        )
    )
    metrics = metrics_for()
    with running_server(
        server_config(empty_repository), AppParts(metrics=metrics), [("cls", SumRuntime(), config)]
    ) as t:
        client = triton.InferenceServerClient(t.address)
        infer(client, "cls", rows=3)  # echo rows rise left to right: class "d" every time
        got = scrape(metrics.http.port)
        labels = {"model": "cls", "version": "1"}
        assert got.value("sidecar_predictions_total", **labels, **{"class": "d"}) == 3
        assert got.value("sidecar_predictions_total", **labels, **{"class": "a"}) == 0
        assert got.value("sidecar_prediction_confidence_count", **labels) == 3


def test_metrics_disabled_means_no_endpoint(empty_repository: Path) -> None:
    port = free_port()
    config = server_config(empty_repository, metrics={"enabled": False, "port": port})
    with running_server(config, fakes=[("sum", SumRuntime(), None)]) as t:
        infer(triton.InferenceServerClient(t.address), "sum")
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass


def test_default_build_serves_metrics_on_the_configured_port(empty_repository: Path) -> None:
    port = free_port()
    config = server_config(empty_repository, metrics={"port": port})
    with running_server(config, fakes=[("sum", SumRuntime(), None)]) as t:
        infer(triton.InferenceServerClient(t.address), "sum")
        got = scrape(port)
        assert got.value("sidecar_inference_requests_total", code="OK", **SUM) == 1
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass  # stopped with the server
