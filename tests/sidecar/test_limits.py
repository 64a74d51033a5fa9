"""Per-model concurrency and per-stream in-flight limits, over real loopback gRPC."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.config import BatchingConfig, ModelConfig
from sidecar.metrics_listener import ServerMetrics
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import BlockingRuntime, EchoRuntime, SumRuntime
from sidecar.types import TensorSpec
from tests.exporters.scrape import scrape
from tests.helpers import RecordingListener, running_server, server_config


def request(model: str, value: float = 1.0) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.full((1, 4), value, np.float32).tobytes())
    return req


def wait_entered(runtime: BlockingRuntime, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(count):
        assert runtime.entered.acquire(timeout=max(0.0, deadline - time.monotonic()))


@pytest.fixture
def blocking() -> Iterator[BlockingRuntime]:
    runtime = BlockingRuntime()
    try:
        yield runtime
    finally:
        runtime.release.set()  # never leave a wedged thread behind


def test_concurrency_limit_refuses_with_resource_exhausted(
    tmp_path: Path, blocking: BlockingRuntime
) -> None:
    recorder = RecordingListener()
    config = server_config(tmp_path, limits={"max_concurrent_requests": 16})
    slow_config = ModelConfig.model_validate({"limits": {"max_concurrent_requests": 2}})
    fakes = [("slow", blocking, slow_config), ("sum", SumRuntime(), None)]
    with (
        running_server(config, AppParts(listeners=[recorder]), fakes) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(request("slow"), timeout=30)
        second = stub.ModelInfer.future(request("slow"), timeout=30)
        wait_entered(blocking, 2)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request("slow"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_requests=2" in refused.value.details()
        # The limit is per model: another model is not affected.
        assert stub.ModelInfer(request("sum"), timeout=30).model_name == "sum"
        blocking.release.set()
        assert first.result().model_name == second.result().model_name == "slow"
        assert stub.ModelInfer(request("slow"), timeout=30).model_name == "slow"
    assert ("RESOURCE_EXHAUSTED", "concurrency_limit") in recorder.reasons("slow")


def test_stream_stops_reading_beyond_max_stream_inflight(
    tmp_path: Path, blocking: BlockingRuntime
) -> None:
    config = server_config(tmp_path, limits={"max_stream_inflight": 2})
    with (
        running_server(config, fakes=[("slow", blocking, None)]) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers: list[pb.ModelStreamInferResponse] = []
        stream = stub.ModelStreamInfer(iter([request("slow", i) for i in range(5)]), timeout=30)
        reader = threading.Thread(target=lambda: answers.extend(stream))
        reader.start()
        wait_entered(blocking, 2)
        # Bounded check that a third message does not reach the model while two wait.
        assert not blocking.entered.acquire(timeout=0.5)
        blocking.release.set()
        reader.join(30)
        assert not reader.is_alive()
    assert [a.error_message for a in answers] == [""] * 5
    sums = sorted(np.frombuffer(a.infer_response.raw_output_contents[0], "<f4")[0] for a in answers)
    assert sums == [0.0, 4.0, 8.0, 12.0, 16.0]


def settled(count: Callable[[], int], quiet: float = 1.0, timeout: float = 20) -> int:
    """The value of ``count()`` once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
        time.sleep(0.02)  # polling interval of a bounded poll
    raise AssertionError(f"still changing after {timeout}s (last {last})")


def test_stream_client_that_does_not_read_holds_the_server_back(tmp_path: Path) -> None:
    # A client that sends without reading answers used to make the server run every
    # message and queue every answer (unbounded memory). Now a slot is held until the
    # answer is sent, so the server stops reading: only max_stream_inflight answers plus
    # what the transport's flow-control windows hold (a few MB) are ever outstanding.
    echo = EchoRuntime((TensorSpec("x", "UINT8", (-1, 65536)),))

    def messages() -> Iterator[pb.ModelInferRequest]:
        for _ in range(300):  # 19 MB in all
            req = pb.ModelInferRequest(model_name="echo")
            req.inputs.add(name="x", datatype="UINT8", shape=[1, 65536])
            req.raw_input_contents.append(bytes(65536))
            yield req

    config = server_config(tmp_path, limits={"max_stream_inflight": 4})
    with (
        running_server(config, fakes=[("echo", echo, None)]) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        answers = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(messages(), timeout=60)
        ran = settled(lambda: len(echo.calls))
        assert ran < 150, f"the server ran {ran} of 300 messages nobody was reading"
        assert sum(1 for a in answers if not a.error_message) == 300


def raw_request(
    model: str, rows: int, width: int, request_id: str = "", inputs: int = 1
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id=request_id)
    for index in range(inputs):
        req.inputs.add(
            name="x" if index == 0 else f"x{index}", datatype="FP32", shape=[rows, width]
        )
        req.raw_input_contents.append(np.ones((rows, width), np.float32).tobytes())
    return req


def test_every_exceeded_limit_names_the_limit_and_is_counted_in_metrics(
    tmp_path: Path, blocking: BlockingRuntime
) -> None:
    config = server_config(
        tmp_path,
        grpc={"max_message_bytes": 4096},
        limits={
            "max_inputs": 2,
            "max_batch_rows": 240,
            "max_tensor_elements": 960,
            "max_request_id_length": 16,
        },
    )
    metrics = ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))
    batched = BatchingConfig(enabled=True, max_batch_size=4)
    fakes = [
        ("sum", SumRuntime(width=4), None),
        ("wide", SumRuntime(width=16), None),
        ("batched", SumRuntime(width=4), ModelConfig(batching=batched)),
        ("slow", blocking, ModelConfig.model_validate({"limits": {"max_concurrent_requests": 1}})),
    ]
    # (model, request, the limit as the message names it, reason counted)
    cases = [
        ("sum", raw_request("sum", 1, 4, inputs=3), "max_inputs=2", "too_many_inputs"),
        ("sum", raw_request("sum", 241, 4), "max_batch_rows=240", "too_many_rows"),
        ("wide", raw_request("wide", 61, 16), "max_tensor_elements=960", "too_many_elements"),
        ("sum", raw_request("sum", 1, 4, "r" * 17), "max_request_id_length=16",
         "request_id_too_long"),
        # 3.9 KB in, 4.9 KB out (the sums and the echo): the model ran, the answer cannot go
        ("sum", raw_request("sum", 240, 4), "grpc.max_message_bytes=4096", "response_too_large"),
        ("batched", raw_request("batched", 5, 4), "batching.max_batch_size=4", "too_many_rows"),
    ]  # fmt: skip
    with (
        running_server(config, AppParts(metrics=metrics), fakes) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for model, req, limit, _ in cases:
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(req, timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, model
            assert limit in (refused.value.details() or ""), refused.value.details()
        running = stub.ModelInfer.future(raw_request("slow", 1, 4), timeout=30)
        wait_entered(blocking, 1)
        with pytest.raises(grpc.RpcError) as busy:
            stub.ModelInfer(raw_request("slow", 1, 4), timeout=30)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_requests=1" in (busy.value.details() or "")
        blocking.release.set()
        assert running.result().model_name == "slow"
        # A streamed answer over the limit fails that message only, not the stream.
        stream = stub.ModelStreamInfer(
            iter([raw_request("sum", 240, 4), raw_request("sum", 2, 4)]), timeout=30
        )
        answers = sorted(stream, key=lambda a: len(a.error_message))
        assert answers[0].error_message == ""
        assert "grpc.max_message_bytes=4096" in answers[1].error_message
        # Larger than the message limit on the way in (4.8 KB; gRPC core's own limit is
        # twice as high): refused by the server before parsing, named and counted.
        with pytest.raises(grpc.RpcError) as too_big:
            stub.ModelInfer(raw_request("sum", 300, 4), timeout=30)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "grpc.max_message_bytes=4096" in (too_big.value.details() or "")

        got = scrape(metrics.http.port)
        expected = {
            ("sum", "too_many_inputs"): 1,
            ("sum", "too_many_rows"): 1,
            ("wide", "too_many_elements"): 1,
            ("sum", "request_id_too_long"): 1,
            ("sum", "response_too_large"): 2,  # unary and streamed
            ("batched", "too_many_rows"): 1,
            ("slow", "concurrency_limit"): 1,
            ("sum", "request_too_large"): 1,
        }
        counted = {
            key: got.value("sidecar_rejected_requests_total", model=key[0], reason=key[1])
            for key in expected
        }
        assert counted == expected
        exhausted = {"version": "1", "code": "RESOURCE_EXHAUSTED"}
        assert got.value("sidecar_inference_requests_total", model="sum", **exhausted) == 6
