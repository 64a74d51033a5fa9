"""Standard grpc.health.v1 and server reflection, through their standard clients."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from sidecar.examples import MODEL_REPOSITORY
from tests.helpers import ServerThread, running_server, server_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(MODEL_REPOSITORY / "digits", root / "digits")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    with running_server(server_config(root)) as thread:
        yield thread


def check(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_per_model(server: ServerThread) -> None:
    assert check(server.address, "digits") == SERVING
    assert check(server.address, "broken") == NOT_SERVING
    # strict readiness (the default): one broken model makes the server not ready
    assert check(server.address, "") == NOT_SERVING


def test_health_unknown_service(server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as info:
        check(server.address, "no-such-model")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_overall_serving_when_all_models_load() -> None:
    with running_server(server_config(MODEL_REPOSITORY)) as thread:
        assert check(thread.address, "") == SERVING


def test_reflection_lists_and_describes_services(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {
            "inference.GRPCInferenceService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert "ModelInfer" in service.methods_by_name
        request = pool.FindMessageTypeByName("inference.ModelInferRequest")
        assert request.fields_by_name["raw_input_contents"].number == 7
