"""The batcher on its own: batching, splitting, limits, failures, lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.batcher import Batcher
from sidecar.config import BatchingConfig, load_model_config
from sidecar.errors import (
    ConfigError,
    ModelExecutionError,
    ModelLoadError,
    ResourceExhaustedError,
    UnavailableError,
)
from sidecar.runtimes.fakes import SumRuntime
from sidecar.types import ModelSignature, Prediction, Tensors, TensorSpec
from tests.batching.fakes import GatedRuntime, PoisonRuntime, ScalarRuntime, WideSumRuntime

LONG = 10_000_000  # µs: a queue delay no test should ever wait out


def config(**fields: Any) -> BatchingConfig:
    return BatchingConfig(enabled=True, **fields)


def rows_of(rng: np.random.Generator, rows: int, width: int = 4) -> Tensors:
    return {"x": rng.normal(size=(rows, width)).astype(np.float32)}


def run(coro: Awaitable[Any], timeout: float = 20) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll (yielding to the loop) until condition() holds; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------- results


def test_batched_results_equal_unbatched_row_for_row() -> None:
    rng = np.random.default_rng(1)
    sizes = [int(n) for n in rng.integers(1, 4, size=24)]
    requests = [rows_of(rng, n) for n in sizes]
    runtime = SumRuntime()
    reference = SumRuntime()
    batches: list[tuple[int, float]] = []

    async def main() -> list[Prediction]:
        batcher = Batcher(
            "m",
            runtime,
            config(max_batch_size=sum(sizes), max_queue_delay_us=LONG),
            on_batch=lambda rows, seconds: batches.append((rows, seconds)),
        )
        results = await asyncio.gather(*(batcher.predict(r, len(r["x"])) for r in requests))
        await batcher.close()
        return list(results)

    results = run(main())
    assert runtime.calls == [sum(sizes)]  # one executed batch for 24 requests
    assert [rows for rows, _ in batches] == [sum(sizes)]
    assert batches[0][1] >= 0
    for request, result in zip(requests, results, strict=True):
        alone = run(reference.predict(request))
        assert set(result.outputs) == {"sum", "echo"}
        for name, expected in alone.items():
            np.testing.assert_array_equal(result.outputs[name], expected)
        assert result.queue_seconds >= 0


def test_onnx_model_batched_equals_unbatched(examples_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sidecar.config import ModelConfig, ThreadsConfig
    from sidecar.runtimes.onnx import OnnxRuntime

    features = np.load(examples_dir / "digits" / "holdout_features.npy").astype(np.float32)
    rng = np.random.default_rng(2)
    sizes = [int(n) for n in rng.integers(1, 6, size=16)]
    starts = np.cumsum([0, *sizes[:-1]])
    requests = [{"input": features[s : s + n]} for s, n in zip(starts, sizes, strict=True)]

    async def main() -> tuple[list[Prediction], list[Tensors]]:
        with ThreadPoolExecutor(2) as executor:
            runtime = OnnxRuntime(
                "digits",
                examples_dir / "digits" / "1" / "model.onnx",
                ModelConfig(),
                "cpu",
                ThreadsConfig(),
                executor,
            )
            await runtime.load()
            batcher = Batcher(
                "digits", runtime, config(max_batch_size=sum(sizes), max_queue_delay_us=LONG)
            )
            batched = await asyncio.gather(*(batcher.predict(r, len(r["input"])) for r in requests))
            alone = [await runtime.predict(r) for r in requests]
            assert batcher.batches == 1
            await batcher.close()
            await runtime.unload()
        return list(batched), alone

    batched, alone = run(main())
    for got, want in zip(batched, alone, strict=True):
        for name in ("logits", "probabilities"):
            np.testing.assert_allclose(got.outputs[name], want[name], rtol=1e-5, atol=1e-6)
        assert got.outputs["probabilities"].shape[0] == want["probabilities"].shape[0]


def test_incompatible_shapes_are_batched_separately() -> None:
    rng = np.random.default_rng(3)
    widths = [3, 5] * 6
    requests = [rows_of(rng, 2, width) for width in widths]
    runtime = WideSumRuntime()

    async def main() -> list[Prediction]:
        # 12 rows per width fill a batch of 12 rows exactly: no waiting, one batch per width.
        batcher = Batcher("m", runtime, config(max_batch_size=12, max_queue_delay_us=LONG))
        results = await asyncio.gather(*(batcher.predict(r, 2) for r in requests))
        await batcher.close()
        return list(results)

    results = run(main())
    assert sorted(runtime.widths) == [3, 5]
    assert runtime.calls == [12, 12]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result.outputs["echo"], request["x"])
        np.testing.assert_array_equal(
            result.outputs["sum"], request["x"].sum(axis=1, keepdims=True, dtype=np.float32)
        )


# --------------------------------------------------------------------------- failures


def test_a_failing_batch_fails_only_its_requests() -> None:
    rng = np.random.default_rng(4)
    requests = [rows_of(rng, 1) for _ in range(8)]
    requests[1]["x"][0, 0] = -1.0  # poisons the first batch of four
    runtime = PoisonRuntime()

    async def main() -> list[Prediction | BaseException]:
        batcher = Batcher("m", runtime, config(max_batch_size=4, max_queue_delay_us=LONG))
        results = await asyncio.gather(
            *(batcher.predict(r, 1) for r in requests), return_exceptions=True
        )
        await batcher.close()
        return list(results)

    results = run(main())
    assert runtime.calls == [4, 4]
    for result in results[:4]:
        assert isinstance(result, RuntimeError)
        assert "poisoned" in str(result)
    for request, result in zip(requests[4:], results[4:], strict=True):
        assert isinstance(result, Prediction)
        np.testing.assert_array_equal(result.outputs["echo"], request["x"])


def test_outputs_without_batch_dimension_fail_that_batch_with_a_clear_message() -> None:
    async def main() -> None:
        batcher = Batcher("m", ScalarRuntime(), config(max_batch_size=2, max_queue_delay_us=LONG))
        rng = np.random.default_rng(5)
        results = await asyncio.gather(
            *(batcher.predict(rows_of(rng, 1), 1) for _ in range(2)), return_exceptions=True
        )
        await batcher.close()
        for result in results:
            assert isinstance(result, ModelExecutionError)
            assert "batch of 2 rows" in result.message
            assert "sum []" in result.message
            assert "batching.enabled false" in result.message

    run(main())


def test_model_with_a_fixed_first_dimension_cannot_be_batched() -> None:
    runtime = SumRuntime()
    fixed = ModelSignature(
        inputs=(TensorSpec("x", "FP32", (1, 4)),), outputs=runtime.signature.outputs, platform="f"
    )

    class Fixed(SumRuntime):
        @property
        def signature(self) -> ModelSignature:
            return fixed

    with pytest.raises(ModelLoadError, match=r"first dimension.*FP32\[1, 4\]"):
        Batcher("m", Fixed(), config())


def test_preferred_sizes_must_fit_max_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "batching:\n  enabled: true\n  max_batch_size: 8\n  preferred_batch_sizes: [4, 16]\n"
    )
    with pytest.raises(ConfigError, match=r"preferred_batch_sizes \[4, 16\] must lie in 1..max"):
        load_model_config(path)


# --------------------------------------------------------------------------- limits


def test_full_queue_refuses_at_once_naming_the_limit() -> None:
    runtime = GatedRuntime()
    rng = np.random.default_rng(6)

    async def main() -> None:
        batcher = Batcher(
            "m", runtime, config(max_batch_size=8, max_queue_delay_us=0, max_queue_size=3)
        )
        first = asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1))
        await wait_until(runtime.started.is_set)  # the first batch runs and holds the slot
        waiting = [asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1)) for _ in range(3)]
        await wait_until(lambda: batcher.depth == 3)
        with pytest.raises(UnavailableError) as info:
            await batcher.predict(rows_of(rng, 1), 1)
        assert info.value.reason == "queue_full"
        assert "batching.max_queue_size=3" in info.value.message
        assert info.value.code == "UNAVAILABLE"
        assert batcher.depth == 3  # the refused request never entered the queue
        runtime.release()
        await asyncio.gather(first, *waiting)
        assert batcher.depth == 0
        # While the first ran, the three waiting requests gathered into one batch.
        assert runtime.calls == [1, 3]
        await batcher.close()

    run(main())


def test_request_larger_than_max_batch_size_is_refused() -> None:
    async def main() -> None:
        batcher = Batcher("m", SumRuntime(), config(max_batch_size=4))
        with pytest.raises(ResourceExhaustedError, match=r"5 rows.*batching.max_batch_size=4"):
            await batcher.predict(rows_of(np.random.default_rng(7), 5), 5)
        await batcher.close()

    run(main())


def test_batches_never_exceed_max_batch_size() -> None:
    rng = np.random.default_rng(8)
    sizes = [3, 3, 3, 2, 1, 3, 1]
    runtime = GatedRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, config(max_batch_size=6, max_queue_delay_us=0))
        blocker = asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1))
        await wait_until(runtime.started.is_set)
        tasks = [asyncio.ensure_future(batcher.predict(rows_of(rng, n), n)) for n in sizes]
        await wait_until(lambda: batcher.depth == len(sizes))
        runtime.release()
        await asyncio.gather(blocker, *tasks)
        await batcher.close()

    run(main())
    # FIFO, never splitting a request: [3,3] [3,2,1] [3,1]
    assert runtime.calls == [1, 6, 6, 4]


async def arrive_one_by_one(batcher: Batcher, count: int, rng: np.random.Generator) -> None:
    """Requests arrive one at a time, the scheduler idle between them; all answered in 5 s."""
    tasks = []
    for index in range(count):
        tasks.append(asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1)))
        if index < count - 1:
            await wait_until(lambda waiting=index + 1: batcher.depth == waiting)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


@pytest.mark.parametrize("together", [True, False])
def test_preferred_batch_size_is_sent_without_waiting_for_the_delay(together: bool) -> None:
    rng = np.random.default_rng(9)
    runtime = SumRuntime()

    async def main() -> None:
        batcher = Batcher(
            "m",
            runtime,
            config(max_batch_size=64, preferred_batch_sizes=(4,), max_queue_delay_us=LONG),
        )
        # With a 10 s delay and room for 64 rows, only the preferred size sends these now.
        if together:
            await asyncio.wait_for(
                asyncio.gather(*(batcher.predict(rows_of(rng, 1), 1) for _ in range(4))), 5
            )
        else:
            await arrive_one_by_one(batcher, 4, rng)
        await batcher.close()

    run(main())
    assert runtime.calls == [4]


def test_full_batch_is_sent_without_waiting_for_the_delay() -> None:
    rng = np.random.default_rng(15)
    runtime = SumRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, config(max_batch_size=3, max_queue_delay_us=LONG))
        await arrive_one_by_one(batcher, 3, rng)
        await batcher.close()

    run(main())
    assert runtime.calls == [3]


def test_largest_preferred_size_that_the_queue_can_form_goes_first() -> None:
    rng = np.random.default_rng(10)
    runtime = GatedRuntime()

    async def main() -> None:
        batcher = Batcher(
            "m",
            runtime,
            config(max_batch_size=16, preferred_batch_sizes=(2, 4), max_queue_delay_us=20_000),
        )
        blocker = asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1))
        await wait_until(runtime.started.is_set)
        tasks = [asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1)) for _ in range(7)]
        await wait_until(lambda: batcher.depth == 7)
        runtime.release()
        await asyncio.gather(blocker, *tasks)
        await batcher.close()

    run(main())
    # 7 waiting: a preferred 4, then the 3 left hold a preferred 2, then 1 after the delay.
    assert runtime.calls == [1, 4, 2, 1]


def test_lone_request_waits_the_queue_delay_and_reports_it() -> None:
    runtime = SumRuntime()

    async def main() -> Prediction:
        batcher = Batcher("m", runtime, config(max_batch_size=8, max_queue_delay_us=30_000))
        result = await batcher.predict(rows_of(np.random.default_rng(11), 2), 2)
        await batcher.close()
        return result

    result = run(main())
    assert runtime.calls == [2]
    assert 0.025 <= result.queue_seconds < 5


# --------------------------------------------------------------------------- lifecycle


def test_cancelled_request_is_not_executed() -> None:
    rng = np.random.default_rng(12)
    runtime = GatedRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, config(max_batch_size=8, max_queue_delay_us=0))
        blocker = asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1))
        await wait_until(runtime.started.is_set)
        gone = asyncio.ensure_future(batcher.predict(rows_of(rng, 3), 3))
        kept = asyncio.ensure_future(batcher.predict(rows_of(rng, 2), 2))
        await wait_until(lambda: batcher.depth == 2)
        gone.cancel()
        runtime.release()
        await asyncio.gather(blocker, kept)
        assert gone.cancelled()
        await batcher.close()

    run(main())
    assert runtime.calls == [1, 2]


def test_close_refuses_waiting_requests_and_lets_the_running_batch_finish() -> None:
    rng = np.random.default_rng(13)
    runtime = GatedRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, config(max_batch_size=8, max_queue_delay_us=0))
        running = asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1))
        await wait_until(runtime.started.is_set)
        waiting = asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1))
        await wait_until(lambda: batcher.depth == 1)
        closing = asyncio.ensure_future(batcher.close())
        await wait_until(waiting.done)
        with pytest.raises(UnavailableError, match="unloaded while the request waited"):
            waiting.result()
        assert not closing.done()  # still waiting for the running batch
        runtime.release()
        await closing
        assert isinstance(running.result(), Prediction)
        with pytest.raises(UnavailableError, match="unloading"):
            await batcher.predict(rows_of(rng, 1), 1)

    run(main())
    assert runtime.calls == [1]


def test_failing_on_batch_callback_does_not_fail_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(rows: int, seconds: float) -> None:
        raise ValueError("listener bug")

    async def main() -> Prediction:
        batcher = Batcher("m", SumRuntime(), config(max_queue_delay_us=0), on_batch=explode)
        result = await batcher.predict(rows_of(np.random.default_rng(14), 1), 1)
        await batcher.close()
        return result

    result = run(main())
    assert result.outputs["sum"].shape == (1, 1)
    assert "on_batch callback failed" in caplog.text


class TaskRecording(SumRuntime):
    """Records the task each batch ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any] | None] = []

    async def predict(self, inputs: Tensors) -> Tensors:
        self.tasks.append(asyncio.current_task())
        return await super().predict(inputs)


@pytest.mark.parametrize("delay_us", [0, 1000])
def test_idle_batcher_without_delay_runs_a_lone_request_in_the_callers_task(
    delay_us: int,
) -> None:
    runtime = TaskRecording()

    async def main() -> asyncio.Task[Any] | None:
        batcher = Batcher("m", runtime, config(max_queue_delay_us=delay_us))
        result = await batcher.predict(rows_of(np.random.default_rng(16), 2), 2)
        assert result.outputs["sum"].shape == (2, 1)
        await batcher.close()
        return asyncio.current_task()

    caller = run(main())
    assert runtime.calls == [2]
    # No delay: nothing to wait for, no hop through the scheduler task.
    assert (runtime.tasks[0] is caller) == (delay_us == 0)


def test_caller_cancelled_while_its_lone_request_runs_frees_the_slot() -> None:
    runtime = GatedRuntime()
    rng = np.random.default_rng(17)

    async def main() -> Prediction:
        batcher = Batcher("m", runtime, config(max_queue_delay_us=0))
        lone = asyncio.ensure_future(batcher.predict(rows_of(rng, 1), 1))
        await wait_until(runtime.started.is_set)
        lone.cancel()
        await asyncio.wait([lone])
        runtime.release()
        result = await batcher.predict(rows_of(rng, 1), 1)
        await batcher.close()
        return result

    result = run(main())
    assert result.outputs["sum"].shape == (1, 1)
