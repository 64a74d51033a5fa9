"""benchmarks/echo_server.py answers like the real server, byte for byte in size.

The serving-stack comparison is only fair if the echo server's messages are
the size of ours; its ``--onnx`` mode must compute what our server computes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from benchmarks.common import Server, echo_command, free_port, server_process
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from tests.helpers import ServerThread, running_server, server_config


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(examples_dir / "digits", root / "digits")
    with running_server(server_config(root)) as thread:
        yield thread


@pytest.fixture(scope="module", params=[False, True], ids=["echo", "onnx-inline"])
def echo(request: pytest.FixtureRequest) -> Iterator[tuple[Server, bool]]:
    port = free_port()
    with server_process("echo", echo_command(port, request.param), port) as server:
        yield server, request.param


def infer(target: str, x: np.ndarray) -> pb.ModelInferResponse:
    req = pb.ModelInferRequest(model_name="digits", id="r1")
    req.inputs.add(name="input", datatype="FP32", shape=x.shape)
    req.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(target) as channel:
        response: pb.ModelInferResponse = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            req, timeout=30
        )
    return response


def test_echo_server_answers_with_our_sizes_and_metadata(
    ours: ServerThread, echo: tuple[Server, bool], examples_dir: Path
) -> None:
    server, runs_model = echo
    x = np.load(examples_dir / "digits" / "holdout_features.npy")[:5].astype(np.float32)
    mine, theirs = infer(ours.address, x), infer(server.target, x)
    assert [(o.name, o.datatype, list(o.shape)) for o in theirs.outputs] == [
        (o.name, o.datatype, list(o.shape)) for o in mine.outputs
    ]
    assert [len(b) for b in theirs.raw_output_contents] == [
        len(b) for b in mine.raw_output_contents
    ]
    assert theirs.id == "r1"
    assert abs(theirs.ByteSize() - mine.ByteSize()) <= 16  # ids and version strings differ
    if runs_model:
        assert theirs.raw_output_contents[1] == mine.raw_output_contents[1]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=30)
        assert [(t.name, list(t.shape)) for t in meta.inputs] == [("input", [-1, 64])]
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
