"""Batching through a real server on loopback: unary and streamed, results, limits, records."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from sidecar.app import AppParts
from sidecar.config import BatchingConfig, ModelConfig
from sidecar.events import BaseListener, RequestRecord
from sidecar.models import ServedModel
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc
from tests.batching.fakes import GatedRuntime, PoisonRuntime, poll_until
from tests.helpers import ServerThread, running_server, server_config


class Recorder(BaseListener):
    """Keeps every executed batch and answered request."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, float]] = []
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def on_batch(self, model: ServedModel, rows: int, compute_seconds: float) -> None:
        with self._lock:
            self.batches.append((model.name, rows, compute_seconds))

    def on_request(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)

    def batch_rows(self, model: str) -> list[int]:
        with self._lock:
            return [rows for name, rows, _ in self.batches if name == model]


def request(model: str, x: np.ndarray, name: str = "input") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name=name, datatype="FP32", shape=x.shape)
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return req


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    for index, out in enumerate(response.outputs):
        if out.name == name:
            data = np.frombuffer(response.raw_output_contents[index], dtype=np.float32)
            return data.reshape(tuple(out.shape))
    raise KeyError(name)


def run(coro: Any, timeout: float = 60) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


TOTAL_ROWS = 48


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    """A repository with digits twice: unbatched, and batched to fill at exactly 48 rows."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(examples_dir / "digits", root / "digits")
    shutil.copytree(examples_dir / "digits", root / "digits_batched")
    (root / "digits_batched" / "config.yaml").write_text(
        # A 5 s delay with a batch that fills at exactly TOTAL_ROWS rows: every request
        # of a test joins the same batch, so the count of batches is deterministic.
        f"batching:\n  enabled: true\n  max_batch_size: {TOTAL_ROWS}\n"
        "  max_queue_delay_us: 5000000\n"
    )
    return root


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def server(digits_pair: Path, recorder: Recorder) -> Iterator[ServerThread]:
    with running_server(server_config(digits_pair), AppParts(listeners=[recorder])) as thread:
        yield thread


def requests_of_holdout(examples_dir: Path) -> list[np.ndarray]:
    features = np.load(examples_dir / "digits" / "holdout_features.npy").astype(np.float32)
    sizes = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6, 7, 5]  # 48 rows in 13 requests
    assert sum(sizes) == TOTAL_ROWS
    starts = np.cumsum([0, *sizes[:-1]])
    return [features[s : s + n] for s, n in zip(starts, sizes, strict=True)]


def test_batched_server_answers_equal_unbatched_row_for_row(
    server: ServerThread, recorder: Recorder, examples_dir: Path
) -> None:
    chunks = requests_of_holdout(examples_dir)

    async def main() -> tuple[list[pb.ModelInferResponse], list[pb.ModelInferResponse]]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            batched = await asyncio.gather(
                *(stub.ModelInfer(request("digits_batched", x)) for x in chunks)
            )
            alone = [await stub.ModelInfer(request("digits", x)) for x in chunks]
        return list(batched), alone

    before = len(recorder.batch_rows("digits_batched"))
    batched, alone = run(main())
    assert recorder.batch_rows("digits_batched")[before:] == [TOTAL_ROWS]
    for got, want, x in zip(batched, alone, chunks, strict=True):
        assert got.model_name == "digits_batched"
        assert got.id  # every request keeps its own id
        for name in ("logits", "probabilities"):
            assert output(got, name).shape == (len(x), 10)
            np.testing.assert_allclose(output(got, name), output(want, name), rtol=1e-5, atol=1e-6)
    ids = {r.id for r in batched}
    assert len(ids) == len(batched)
    records = [r for r in recorder.records if r.model and r.model.name == "digits_batched"]
    assert all(r.code == "OK" for r in records)
    assert max(r.queue_seconds for r in records) > 0


def test_stream_messages_are_batched_too(
    server: ServerThread, recorder: Recorder, examples_dir: Path
) -> None:
    chunks = requests_of_holdout(examples_dir)

    async def main() -> dict[str, pb.ModelStreamInferResponse]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelStreamInfer()
            for index, x in enumerate(chunks):
                req = request("digits_batched", x)
                req.id = f"m{index}"
                await call.write(req)
            await call.done_writing()
            answers = {}
            async for message in call:
                answers[message.infer_response.id] = message
            return answers

    before = len(recorder.batch_rows("digits_batched"))
    answers = run(main())
    assert recorder.batch_rows("digits_batched")[before:] == [TOTAL_ROWS]
    assert sorted(answers) == sorted(f"m{i}" for i in range(len(chunks)))
    for index, x in enumerate(chunks):
        message = answers[f"m{index}"]
        assert message.error_message == ""
        assert output(message.infer_response, "probabilities").shape == (len(x), 10)


def test_full_queue_answers_unavailable_and_is_recorded_as_rejected(tmp_path: Path) -> None:
    gated = GatedRuntime()
    recorder = Recorder()
    batching = BatchingConfig(
        enabled=True, max_batch_size=8, max_queue_delay_us=0, max_queue_size=2
    )
    fakes = [("gated", gated, ModelConfig(batching=batching))]
    with running_server(server_config(tmp_path), AppParts(listeners=[recorder]), fakes) as thread:
        model = thread.server.plane.models.resolve("gated")
        x = np.ones((1, 4), dtype=np.float32)
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            first = stub.ModelInfer.future(request("gated", x, "x"), timeout=30)
            assert gated.started.wait(30)
            queued = [
                stub.ModelInfer.future(request("gated", x, "x"), timeout=30) for _ in range(2)
            ]
            poll_until(lambda: model.queue_depth == 2)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("gated", x, "x"), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "batching queue is full" in str(info.value.details())
            assert "batching.max_queue_size=2" in str(info.value.details())
            gated.release()
            for future in (first, *queued):
                assert output(future.result(), "sum").shape == (1, 1)
    rejected = [r for r in recorder.records if r.code == "UNAVAILABLE"]
    assert [r.reason for r in rejected] == ["queue_full"]
    assert sum(rows for _, rows, _ in recorder.batches) == 3


def test_failing_batch_fails_only_its_requests_over_grpc(tmp_path: Path) -> None:
    poison = PoisonRuntime()
    batching = BatchingConfig(enabled=True, max_batch_size=4, max_queue_delay_us=5_000_000)
    fakes = [("poison", poison, ModelConfig(batching=batching))]
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(2, 4)).astype(np.float32) for _ in range(4)]
    xs[0][1, 2] = -1.0  # the batch holding this request fails

    async def main(address: str) -> list[Any]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            # Two rows each, four rows a batch: the first two requests fill one batch.
            first = await asyncio.gather(
                *(stub.ModelInfer(request("poison", x, "x")) for x in xs[:2]),
                return_exceptions=True,
            )
            second = await asyncio.gather(
                *(stub.ModelInfer(request("poison", x, "x")) for x in xs[2:]),
                return_exceptions=True,
            )
        return [*first, *second]

    with running_server(server_config(tmp_path), fakes=fakes) as thread:  # no models but fakes
        results = run(main(thread.address))
    assert poison.calls == [4, 4]
    for result in results[:2]:
        assert isinstance(result, grpc.aio.AioRpcError)
        assert result.code() == grpc.StatusCode.INTERNAL
        assert "poisoned row in batch" in str(result.details())
    for result, x in zip(results[2:], xs[2:], strict=True):
        assert isinstance(result, pb.ModelInferResponse)
        np.testing.assert_array_equal(output(result, "echo"), x)
