"""SIGTERM: in-flight requests complete, new ones are refused, the process exits 0."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from tests.helpers import free_port, spawn, wait_for_line


def request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="sleepy")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return req


def test_sigterm_drains_in_flight_request() -> None:
    port = free_port()
    with spawn(["-m", "tests.sleepy_server", str(port), "1.5"]) as proc:
        wait_for_line(proc.stderr, "serving gRPC")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            outcome: dict[str, object] = {}

            def call() -> None:
                try:
                    outcome["response"] = stub.ModelInfer(request(), timeout=30)
                except grpc.RpcError as exc:
                    outcome["error"] = exc

            caller = threading.Thread(target=call)
            caller.start()
            wait_for_line(proc.stderr, "predict started")
            os.kill(proc.pid, signal.SIGTERM)
            wait_for_line(proc.stderr, "shutting down")
            # New work is refused while the old request drains.
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            caller.join(30)
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert isinstance(response, pb.ModelInferResponse)
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [4.0]
        assert proc.wait(timeout=30) == 0


def test_sigterm_turns_health_not_serving_while_draining() -> None:
    port = free_port()
    with spawn(["-m", "tests.sleepy_server", str(port), "3"]) as proc:
        wait_for_line(proc.stderr, "serving gRPC")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="")
            assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            future = stub.ModelInfer.future(request(), timeout=30)
            wait_for_line(proc.stderr, "predict started")
            os.kill(proc.pid, signal.SIGTERM)
            wait_for_line(proc.stderr, "shutting down")
            assert future.result().model_name == "sleepy"
        assert proc.wait(timeout=30) == 0


def test_cli_serve_exits_zero_on_sigterm(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "empty").mkdir(parents=True)
    args = ["-m", "sidecar.cli", "serve", "--model-repository", str(repo)]
    with spawn([*args, "--grpc-port", str(free_port()), "--metrics-port", "0"]) as proc:
        wait_for_line(proc.stderr, "serving gRPC")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
