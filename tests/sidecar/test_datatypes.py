"""Every KServe v2 datatype we support, raw and typed, through a real onnxruntime model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from sidecar.codec import CONTENTS_FIELD
from sidecar.types import DATATYPES
from tests.helpers import ServerThread, running_server, server_config
from tests.sidecar.onnx_models import write_identity


@pytest.fixture(scope="module")
def dtype_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("repo")
    for datatype in DATATYPES:
        write_identity(root / f"id_{datatype.lower()}" / "1" / "model.onnx", datatype)
    with running_server(server_config(root)) as thread:
        yield thread


def _sample(datatype: str, rows: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 3)).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (rows, 3), dtype=dtype, endpoint=True)
    return rng.standard_normal((rows, 3)).astype(dtype)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("rows", [1, 4])
def test_raw_roundtrip(dtype_server: ServerThread, datatype: str, rows: int) -> None:
    x = _sample(datatype, rows)
    client = triton.InferenceServerClient(dtype_server.address)
    inp = triton.InferInput("x", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    result = client.infer(f"id_{datatype.lower()}", [inp])
    assert result.get_response().outputs[0].datatype == datatype
    np.testing.assert_array_equal(result.as_numpy("y"), x)


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d in CONTENTS_FIELD])
def test_typed_contents_roundtrip(dtype_server: ServerThread, datatype: str) -> None:
    x = _sample(datatype, 2)
    request = service_pb2.ModelInferRequest(model_name=f"id_{datatype.lower()}")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(x.ravel().tolist())
    with grpc.insecure_channel(dtype_server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], DATATYPES[datatype]).reshape(x.shape)
    np.testing.assert_array_equal(out, x)


def test_fp16_typed_contents_is_refused_with_a_hint(dtype_server: ServerThread) -> None:
    request = service_pb2.ModelInferRequest(model_name="id_fp16")
    tensor = request.inputs.add(name="x", datatype="FP16", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    with grpc.insecure_channel(dtype_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send it as raw_input_contents" in info.value.details()


def test_out_of_range_typed_values(dtype_server: ServerThread) -> None:
    request = service_pb2.ModelInferRequest(model_name="id_int8")
    tensor = request.inputs.add(name="x", datatype="INT8", shape=[1, 3])
    tensor.contents.int_contents.extend([1, 2, 300])
    with grpc.insecure_channel(dtype_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of range for INT8" in info.value.details()


def test_identity_file_is_a_real_model(tmp_path: Path) -> None:
    import onnxruntime as ort

    write_identity(tmp_path / "m.onnx", "FP32")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)
