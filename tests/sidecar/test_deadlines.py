"""Deadlines and hung models: expired requests never reach the model, a hung model
fails its own requests with DEADLINE_EXCEEDED, is reported stalled, and does not
take the other models (or their threads) down with it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.app import AppParts, build_server
from sidecar.config import ModelConfig
from sidecar.dataplane import DataPlane
from sidecar.errors import DeadlineExceededError
from sidecar.examples import MODEL_REPOSITORY
from sidecar.models import ModelManager
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from sidecar.runtimes.fakes import BlockingRuntime, SleepingRuntime, SumRuntime
from tests.helpers import (
    RecordingListener,
    ServerThread,
    free_port,
    server_config,
    spawn,
    wait_for_line,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def request(model: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return req


def digits_request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="digits")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return req


def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)  # polling interval of a bounded poll


def test_request_whose_deadline_passed_never_reaches_the_model(tmp_path: Path) -> None:
    recorder = RecordingListener()
    runtime = SumRuntime()

    async def scenario() -> None:
        models = ModelManager(server_config(tmp_path), tmp_path, [recorder])
        await models.add("sum", "1", ModelConfig(), runtime)
        plane = DataPlane(models, [recorder])
        with pytest.raises(DeadlineExceededError) as info:
            await plane.infer(request("sum"), time_remaining=0.0)
        assert "deadline passed before the model ran" in info.value.message
        with pytest.raises(DeadlineExceededError):
            await plane.infer(request("sum"), time_remaining=-1.0)
        response = await plane.infer(request("sum"), time_remaining=5.0)
        assert response.model_name == "sum"

    asyncio.run(scenario())
    assert runtime.calls == [1]  # only the request with time left ran
    assert recorder.reasons("sum")[:2] == [("DEADLINE_EXCEEDED", "deadline_passed")] * 2


def test_client_deadline_shorter_than_the_model(tmp_path: Path) -> None:
    sleepy = SleepingRuntime(0.5)

    async def scenario() -> None:
        models = ModelManager(server_config(tmp_path), tmp_path)
        await models.add("sleepy", "1", ModelConfig(), sleepy)
        plane = DataPlane(models)
        started = time.perf_counter()
        with pytest.raises(DeadlineExceededError) as info:
            await plane.infer(request("sleepy"), time_remaining=0.1)
        assert time.perf_counter() - started < 0.4
        assert "client's deadline passed while the model ran" in info.value.message
        # The client gave up, not the model: it is not stalled, and the call is
        # accounted until it really returns.
        model = models.resolve("sleepy")
        assert not model.stalled and model.inflight == 1
        await asyncio.wait_for(_until(lambda: model.inflight == 0), 5)

    asyncio.run(scenario())


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)  # polling interval; the caller bounds the wait


@pytest.fixture
def hung_server(
    tmp_path: Path,
) -> Iterator[tuple[ServerThread, BlockingRuntime, RecordingListener]]:
    """digits (ONNX) and a model that wedges its executor thread, one thread per model."""
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPOSITORY / "digits", repo / "digits")
    recorder = RecordingListener()
    config = server_config(repo, threads={"executor_workers": 1})
    server = build_server(config, AppParts(listeners=[recorder]))
    # The fake blocks a thread of the pool the server gives this model, as a real
    # runtime's native call would.
    hung = BlockingRuntime(server.plane.models.executor("hung"))
    hung_config = ModelConfig.model_validate(
        {"limits": {"timeout_seconds": 0.3, "max_concurrent_requests": 4}}
    )
    thread = ServerThread(server)

    async def start() -> None:
        await server.plane.models.add("hung", "1", hung_config, hung)
        await server.start()

    try:
        thread.call(start())
        yield thread, hung, recorder
    finally:
        hung.release.set()
        thread.close()


def test_hung_model_times_out_stalls_and_recovers_without_hurting_others(
    hung_server: tuple[ServerThread, BlockingRuntime, RecordingListener],
) -> None:
    server, hung, recorder = hung_server
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        def ready(name: str) -> bool:
            return stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready

        assert status("hung") == SERVING
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as timed_out:
            stub.ModelInfer(request("hung"), timeout=30)
        assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not answer within its timeout of 0.3s" in timed_out.value.details()
        assert time.monotonic() - started < 5

        # The call still holds its thread: the model is stalled and says so.
        eventually(lambda: status("hung") == NOT_SERVING)
        assert not ready("hung")
        assert status("") == NOT_SERVING  # strict readiness: route traffic elsewhere
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request("hung"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stalled" in refused.value.details()
        assert time.monotonic() - started < 1  # refused at once, not after a timeout

        # The other model runs on its own thread (pools of one thread each here).
        for _ in range(3):
            assert stub.ModelInfer(digits_request(), timeout=5).model_name == "digits"
        assert status("digits") == SERVING and ready("digits")

        hung.release.set()  # the native call finally returns
        eventually(lambda: status("hung") == SERVING)
        assert ready("hung") and status("") == SERVING
        assert stub.ModelInfer(request("hung"), timeout=30).model_name == "hung"

    reasons = recorder.reasons("hung")
    assert ("DEADLINE_EXCEEDED", "") in reasons  # a failure, counted by code
    assert ("UNAVAILABLE", "model_stalled") in reasons
    assert reasons[-1] == ("OK", "")


def test_sigterm_with_a_hung_model_exits_within_the_grace_period() -> None:
    # A thread wedged in a model cannot be stopped, and the interpreter joins executor
    # threads at exit: without an explicit exit the process never ended.
    port = free_port()
    with spawn(["-m", "tests.hung_server", str(port)]) as proc:
        wait_for_line(proc.stderr, "serving gRPC")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request("hung"), timeout=30)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for_line(proc.stderr, "the model is stalled")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # grace period 2 s
        assert "1 model call(s) still running past their timeout (hung)" in proc.stderr.read()
