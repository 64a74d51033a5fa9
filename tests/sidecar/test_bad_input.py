"""Every bad input gets a clear message and the right code; the server keeps serving."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from sidecar.examples import MODEL_REPOSITORY
from sidecar.runtimes.fakes import EchoRuntime, FailingRuntime
from sidecar.types import TensorSpec
from tests.helpers import ServerThread, running_server, server_config

Stub = service_pb2_grpc.GRPCInferenceServiceStub


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(MODEL_REPOSITORY / "digits", root / "digits")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    config = server_config(
        root,
        grpc={"max_message_bytes": 1 << 20},
        limits={"max_batch_rows": 100, "max_tensor_elements": 10_000, "max_inputs": 4},
        startup={"strict_readiness": False},
    )
    failing = FailingRuntime("boom: weights on fire")
    echo = EchoRuntime((TensorSpec("t", "FP16", (-1, -1, -1)), TensorSpec("flag", "BOOL", (2,))))
    with running_server(config, fakes=[("failing", failing, None), ("echo", echo, None)]) as thread:
        thread.failing = failing  # type: ignore[attr-defined]
        yield thread


@pytest.fixture
def stub(server: ServerThread) -> Iterator[Stub]:
    with grpc.insecure_channel(server.address) as channel:
        yield Stub(channel)


def good_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
    request.raw_input_contents.append(np.ones((2, 64), np.float32).tobytes())
    return request


def expect(stub: Stub, request: service_pb2.ModelInferRequest, code: grpc.StatusCode, *parts: str):
    """The request fails with ``code`` and a message holding ``parts``; then a good one works."""
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    for part in parts:
        assert part in info.value.details(), info.value.details()
    response = stub.ModelInfer(good_request(), timeout=30)
    assert [o.name for o in response.outputs] == ["logits", "probabilities"]
    return info.value.details()


def edit(change: Callable[[service_pb2.ModelInferRequest], None]) -> service_pb2.ModelInferRequest:
    request = good_request()
    change(request)
    return request


NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_model(stub: Stub) -> None:
    expect(stub, edit(lambda r: setattr(r, "model_name", "nope")), NOT_FOUND, "'nope'", "digits")


def test_unknown_version(stub: Stub) -> None:
    expect(stub, edit(lambda r: setattr(r, "model_version", "9")), NOT_FOUND, "version '9'")


def test_missing_input(stub: Stub) -> None:
    request = service_pb2.ModelInferRequest(model_name="digits")
    expect(stub, request, INVALID, "missing input(s) input", "FP32[-1, 64]")


def test_unknown_input(stub: Stub) -> None:
    expect(stub, edit(lambda r: setattr(r.inputs[0], "name", "pixels")), INVALID, "'pixels'")


def test_extra_input(stub: Stub) -> None:
    def add(r: service_pb2.ModelInferRequest) -> None:
        r.inputs.add(name="input", datatype="FP32", shape=[2, 64])
        r.raw_input_contents.append(np.ones((2, 64), np.float32).tobytes())

    expect(stub, edit(add), INVALID, "appears more than once")


def test_wrong_datatype(stub: Stub) -> None:
    expect(stub, edit(lambda r: setattr(r.inputs[0], "datatype", "FP64")), INVALID, "'FP64'")


def test_unsupported_datatype(stub: Stub) -> None:
    details = expect(stub, edit(lambda r: setattr(r.inputs[0], "datatype", "BYTES")), INVALID)
    assert "not a supported datatype" in details


def test_wrong_shape(stub: Stub) -> None:
    def reshape(r: service_pb2.ModelInferRequest) -> None:
        del r.inputs[0].shape[:]
        r.inputs[0].shape.extend([2, 32, 2])

    expect(stub, edit(reshape), INVALID, "3 dimensions", "FP32[-1, 64]")


def test_negative_dimension(stub: Stub) -> None:
    def reshape(r: service_pb2.ModelInferRequest) -> None:
        del r.inputs[0].shape[:]
        r.inputs[0].shape.extend([-2, 64])

    expect(stub, edit(reshape), INVALID, "does not match")


def test_raw_length_mismatch(stub: Stub) -> None:
    def trim(r: service_pb2.ModelInferRequest) -> None:
        r.raw_input_contents[0] = r.raw_input_contents[0][:-4]

    expect(stub, edit(trim), INVALID, "508 bytes, expected 512")


def test_contents_and_raw(stub: Stub) -> None:
    def both(r: service_pb2.ModelInferRequest) -> None:
        r.inputs[0].contents.fp32_contents.extend([0.0] * 128)

    expect(stub, edit(both), INVALID, "both typed contents and raw_input_contents")


def test_raw_count_mismatch(stub: Stub) -> None:
    expect(stub, edit(lambda r: r.raw_input_contents.append(b"")), INVALID, "2 entries")


def test_no_data(stub: Stub) -> None:
    expect(stub, edit(lambda r: r.ClearField("raw_input_contents")), INVALID, "no data")


def test_typed_count_mismatch(stub: Stub) -> None:
    def typed(r: service_pb2.ModelInferRequest) -> None:
        r.ClearField("raw_input_contents")
        r.inputs[0].contents.fp32_contents.extend([0.0] * 5)

    expect(stub, edit(typed), INVALID, "fp32_contents has 5 values, expected 128")


def test_empty_batch(stub: Stub) -> None:
    def empty(r: service_pb2.ModelInferRequest) -> None:
        r.inputs[0].shape[0] = 0
        r.raw_input_contents[0] = b""

    expect(stub, edit(empty), INVALID, "empty batch")


def test_unknown_output(stub: Stub) -> None:
    expect(stub, edit(lambda r: r.outputs.add(name="embedding")), INVALID, "'embedding'")


def test_too_many_rows(stub: Stub) -> None:
    def big(r: service_pb2.ModelInferRequest) -> None:
        r.inputs[0].shape[0] = 101
        r.raw_input_contents[0] = np.ones((101, 64), np.float32).tobytes()

    expect(stub, edit(big), EXHAUSTED, "max_batch_rows=100")


def test_overflowing_shape(stub: Stub) -> None:
    def huge(r: service_pb2.ModelInferRequest) -> None:
        r.inputs[0].shape[0] = 2**62

    expect(stub, edit(huge), EXHAUSTED, "max_batch_rows")


def test_zero_size_tensor_with_a_huge_dimension(stub: Stub) -> None:
    # Found by the fuzzer: 0 elements pass the element limit, but numpy cannot make the shape.
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="t", datatype="FP16", shape=[1, 0, 2**62])
    request.raw_input_contents.append(b"")
    expect(stub, request, EXHAUSTED, "max_tensor_elements=10000", "no dimension")


def test_raw_bool_bytes_must_be_zero_or_one(stub: Stub) -> None:
    # Found by the fuzzer: numpy would make booleans out of any byte.
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="t", datatype="FP16", shape=[1, 1, 1])
    request.inputs.add(name="flag", datatype="BOOL", shape=[2])
    request.raw_input_contents.extend([b"\0\0", b"\x01\x02"])
    expect(stub, request, INVALID, "bytes other than 0 and 1")


def test_request_id_too_long(stub: Stub) -> None:
    expect(
        stub, edit(lambda r: setattr(r, "id", "x" * 257)), EXHAUSTED, "max_request_id_length=256"
    )


def test_too_many_inputs(stub: Stub) -> None:
    def many(r: service_pb2.ModelInferRequest) -> None:
        for i in range(4):
            r.inputs.add(name=f"in{i}", datatype="FP32", shape=[1, 64])

    expect(stub, edit(many), EXHAUSTED, "max_inputs=4")


def test_message_over_size_limit(stub: Stub) -> None:
    def huge(r: service_pb2.ModelInferRequest) -> None:
        r.raw_input_contents[0] = b"\0" * (2 << 20)

    expect(stub, edit(huge), EXHAUSTED)


def test_model_exception_is_internal_and_contained(server: ServerThread, stub: Stub) -> None:
    request = service_pb2.ModelInferRequest(model_name="failing")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    expect(stub, request, grpc.StatusCode.INTERNAL, "RuntimeError: boom: weights on fire")
    server.failing.fail = False  # type: ignore[attr-defined]
    try:
        response = stub.ModelInfer(request, timeout=30)
    finally:
        server.failing.fail = True  # type: ignore[attr-defined]
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [4.0]


def test_model_that_failed_to_load(server: ServerThread, stub: Stub) -> None:
    client = triton.InferenceServerClient(server.address)
    assert not client.is_model_ready("broken")
    assert client.is_model_ready("digits")
    assert client.is_server_ready()  # strict_readiness is off in this server
    details = expect(
        stub, edit(lambda r: setattr(r, "model_name", "broken")), grpc.StatusCode.UNAVAILABLE
    )
    assert "broken" in details and "model.onnx" in details


def test_tritonclient_sees_the_same_errors(server: ServerThread) -> None:
    client = triton.InferenceServerClient(server.address)
    inp = triton.InferInput("input", [1, 10], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 10), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits", [inp])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape [1, 10] does not match FP32[-1, 64]" in info.value.message()
