"""Broken models: one that raises, one that answers NaN, one that answers the wrong shape.

Each failure stays with that model's requests (INTERNAL with a clear message,
counted by status code), while a healthy model served concurrently is unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from sidecar.app import AppParts
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import FailingRuntime, NaNRuntime, SumRuntime, WrongShapeRuntime
from tests.helpers import RecordingListener, ServerThread, running_server, server_config

Stub = pb_grpc.GRPCInferenceServiceStub


def request(model: str, rows: int = 2) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    req.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return req


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerThread, RecordingListener]]:
    recorder = RecordingListener()
    fakes = [
        ("raises", FailingRuntime("CUDA error: an illegal memory access " + "x" * 1000), None),
        ("nan", NaNRuntime(), None),
        ("wrong_shape", WrongShapeRuntime(), None),
        ("healthy", SumRuntime(), None),
    ]
    config = server_config(Path(tmp_path_factory.mktemp("repo")))
    with running_server(config, AppParts(listeners=[recorder]), fakes) as thread:
        yield thread, recorder


@pytest.fixture(scope="module")
def stub(faulty: tuple[ServerThread, RecordingListener]) -> Iterator[Stub]:
    with grpc.insecure_channel(faulty[0].address) as channel:
        yield Stub(channel)


def fails(stub: Stub, model: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request(model), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    return info.value.details()


def test_model_that_raises(stub: Stub, faulty: tuple[ServerThread, RecordingListener]) -> None:
    details = fails(stub, "raises")
    assert "model 'raises' version 1 failed: RuntimeError: CUDA error" in details
    assert len(details) < 400  # the model's own text is cut short
    assert ("INTERNAL", "") in faulty[1].reasons("raises")  # counted by code, not a refusal


def test_model_that_answers_the_wrong_shape(
    stub: Stub, faulty: tuple[ServerThread, RecordingListener]
) -> None:
    details = fails(stub, "wrong_shape")
    assert "returned output 'sum' as FP32[3, 1], expected FP32[-1, 1] with 2 rows" in details
    assert ("INTERNAL", "") in faulty[1].reasons("wrong_shape")


def test_model_that_answers_nan_is_served_and_visible(
    stub: Stub, faulty: tuple[ServerThread, RecordingListener]
) -> None:
    # NaN is a legitimate (if alarming) answer: the client gets it, and the request
    # record carries the outputs so the monitor counts non-finite values.
    response = stub.ModelInfer(request("nan"), timeout=10)
    assert np.isnan(np.frombuffer(response.raw_output_contents[0], "<f4")).all()
    record = next(r for r in faulty[1].records if r.model and r.model.name == "nan")
    assert record.code == "OK" and record.outputs is not None
    assert np.isnan(record.outputs["sum"]).all()


def test_faults_stay_with_their_model(stub: Stub) -> None:
    models = ["raises", "nan", "wrong_shape", "healthy"] * 25

    def call(model: str) -> str:
        try:
            stub.ModelInfer(request(model), timeout=10)
        except grpc.RpcError as exc:
            return f"{model}:{exc.code().name}"
        return f"{model}:OK"

    with ThreadPoolExecutor(8) as pool:
        outcomes = set(pool.map(call, models))
    assert outcomes == {"raises:INTERNAL", "nan:OK", "wrong_shape:INTERNAL", "healthy:OK"}
    ready = stub.ModelReady(pb.ModelReadyRequest(name="healthy"), timeout=10)
    assert ready.ready


def test_output_checks_catch_a_row_count_mismatch() -> None:
    from sidecar.codec import RequestCodec
    from sidecar.config import LimitsConfig
    from sidecar.errors import ModelExecutionError

    runtime = SumRuntime()
    codec = RequestCodec("m", runtime.signature, LimitsConfig())
    good = {"sum": np.zeros((2, 1), np.float32), "echo": np.zeros((2, 4), np.float32)}
    codec.check_outputs(good, 2)
    cases = {
        "with 2 rows": {**good, "sum": np.zeros((3, 1), np.float32)},
        "FP64[2, 1]": {**good, "sum": np.zeros((2, 1), np.float64)},
        "FP32[2], expected FP32[-1, 1]": {**good, "sum": np.zeros(2, np.float32)},
        "as list, not an array": {**good, "sum": [[0.0], [0.0]]},
    }
    for expected, outputs in cases.items():
        with pytest.raises(ModelExecutionError) as info:
            codec.check_outputs(outputs, 2)  # type: ignore[arg-type]
        assert expected in info.value.message
