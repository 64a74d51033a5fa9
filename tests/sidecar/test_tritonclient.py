"""The real Triton client (tritonclient.grpc) against a real server on loopback."""

from __future__ import annotations

import queue
import warnings
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers import ServerThread


@pytest.fixture(scope="module")
def client(example_server: ServerThread) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(example_server.address)


@pytest.fixture(scope="module")
def holdout(examples_dir: Path) -> np.ndarray:
    return np.load(examples_dir / "digits" / "holdout_features.npy")


def _infer(
    client: triton.InferenceServerClient, model: str, x: np.ndarray, **kw: Any
) -> triton.InferResult:
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], **kw)


def test_server_rpcs(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "7")
    meta = client.get_server_metadata()
    assert meta.name == "inference-sidecar"
    assert meta.version


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("digits")
    assert meta.platform == "onnxruntime_onnx"
    assert list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [
        ("logits", [-1, 10]),
        ("probabilities", [-1, 10]),
    ]
    export = client.get_model_metadata("digits_export")
    assert export.platform == "pytorch_export"
    assert [t.name for t in export.outputs] == ["logits", "probabilities"]


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_onnx_outputs_equal_onnxruntime(
    client: triton.InferenceServerClient, holdout: np.ndarray, examples_dir: Path, rows: int
) -> None:
    import onnxruntime as ort

    x = holdout[:rows]
    session = ort.InferenceSession(str(examples_dir / "digits" / "1" / "model.onnx"))
    logits, probs = session.run(None, {"input": x})
    result = _infer(client, "digits", x)
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)


@pytest.mark.parametrize("rows", [1, 5, 33])
def test_torch_outputs_equal_torch(
    client: triton.InferenceServerClient, holdout: np.ndarray, examples_dir: Path, rows: int
) -> None:
    import torch

    x = holdout[:rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(examples_dir / "digits_torch" / "1" / "model.pt"))
    exported = torch.export.load(str(examples_dir / "digits_export" / "1" / "model.pt2")).module()
    with torch.inference_mode():
        want_script = [t.numpy() for t in scripted(torch.from_numpy(x.copy()))]
        want_export = [t.numpy() for t in exported(torch.from_numpy(x.copy()))]
    got = _infer(client, "digits_torch", x)
    np.testing.assert_array_equal(got.as_numpy("logits"), want_script[0])
    np.testing.assert_array_equal(got.as_numpy("probabilities"), want_script[1])
    got = _infer(client, "digits_export", x)
    np.testing.assert_array_equal(got.as_numpy("logits"), want_export[0])
    np.testing.assert_array_equal(got.as_numpy("probabilities"), want_export[1])


def test_regression_model(client: triton.InferenceServerClient, examples_dir: Path) -> None:
    import onnxruntime as ort

    x = np.load(examples_dir / "diabetes" / "reference.npy")[:10]
    session = ort.InferenceSession(str(examples_dir / "diabetes" / "1" / "model.onnx"))
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("diabetes", [inp]).as_numpy("prediction")
    np.testing.assert_array_equal(got, session.run(None, {"input": x})[0])


def test_requested_outputs_only(client: triton.InferenceServerClient, holdout: np.ndarray) -> None:
    result = _infer(client, "digits", holdout[:3], outputs=[triton.InferRequestedOutput("logits")])
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["logits"]
    assert result.as_numpy("probabilities") is None


def test_request_id_echoed_or_generated(
    client: triton.InferenceServerClient, holdout: np.ndarray
) -> None:
    assert _infer(client, "digits", holdout[:1], request_id="req-42").get_response().id == "req-42"
    first = _infer(client, "digits", holdout[:1]).get_response().id
    second = _infer(client, "digits", holdout[:1]).get_response().id
    assert first and second and first != second


def test_typed_contents_through_tritons_own_stub(
    example_server: ServerThread, holdout: np.ndarray
) -> None:
    import onnxruntime as ort

    from sidecar.examples import MODEL_REPOSITORY

    x = holdout[:4]
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(example_server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    names = [o.name for o in response.outputs]
    probs = np.frombuffer(response.raw_output_contents[names.index("probabilities")], "<f4")
    session = ort.InferenceSession(str(MODEL_REPOSITORY / "digits" / "1" / "model.onnx"))
    np.testing.assert_array_equal(probs.reshape(4, 10), session.run(None, {"input": x})[1])


def test_stream_infer(client: triton.InferenceServerClient, holdout: np.ndarray) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(20):
            inp = triton.InferInput("input", [2, 64], "FP32")
            inp.set_data_from_numpy(holdout[2 * i : 2 * i + 2])
            client.async_stream_infer("digits", [inp], request_id=f"s{i}")
        bad = triton.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        client.async_stream_infer("digits", [bad], request_id="bad")
        got = {}
        errors = []
        for _ in range(21):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                got[result.get_response().id] = result.as_numpy("probabilities")
    finally:
        client.stop_stream()
    assert sorted(got) == sorted(f"s{i}" for i in range(20))
    assert len(errors) == 1 and "does not match FP32[-1, 64]" in errors[0]
    full = _infer(client, "digits", holdout[:40]).as_numpy("probabilities")
    for i in range(20):
        np.testing.assert_array_equal(got[f"s{i}"], full[2 * i : 2 * i + 2])
