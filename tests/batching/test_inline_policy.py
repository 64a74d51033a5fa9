"""Small model calls run on the event loop, big or slow ones in the executor thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sidecar.config import ModelConfig, ThreadsConfig
from sidecar.runtimes.base import ExecutorRuntime, InlinePolicy
from sidecar.types import Tensors

MAX = 100e-6  # seconds


def test_first_call_of_a_size_goes_to_a_thread_and_a_fast_one_promotes_it() -> None:
    policy = InlinePolicy(MAX)
    assert not policy.inline(64, now=0.0)
    policy.ran_in_thread(64, wall=20e-6, cpu=20e-6)
    assert policy.inline(64, now=0.0)
    assert policy.inline(10, now=0.0)  # smaller calls are at least as fast
    assert not policy.inline(65, now=0.0)  # larger ones are unknown


def slow_inline_calls(policy: InlinePolicy, size: int, now: float) -> None:
    """Enough slow inline calls in a row to demote ``size``."""
    for _ in range(InlinePolicy.SLOW_CALLS):
        assert policy.inline(size, now=now)
        policy.ran_inline(size, wall=150e-6, cpu=150e-6, now=now)


def test_thread_call_slowed_by_the_gil_makes_a_candidate_probed_once_per_backoff() -> None:
    policy = InlinePolicy(MAX)
    policy.ran_in_thread(64, wall=900e-6, cpu=30e-6)  # waited for the GIL; computed fast
    slow_inline_calls(policy, 64, now=0.0)  # probed inline: it really is slow (a GPU wait?)
    assert not policy.inline(64, now=0.5)
    policy.ran_in_thread(64, wall=900e-6, cpu=30e-6)
    slow_inline_calls(policy, 64, now=1.0)  # the back-off (1 s) passed: probed again
    assert not policy.inline(64, now=2.5)  # back-off doubled to 2 s
    assert policy.inline(64, now=3.0)
    policy.ran_inline(64, wall=10e-6, cpu=10e-6, now=3.0)  # fast now: promoted
    assert policy.inline(64, now=3.0)
    policy.ran_in_thread(128, wall=5e-3, cpu=3e-3)  # computes slowly (> 10 × 100 µs): no probe
    assert not policy.inline(128, now=100.0)
    policy.ran_in_thread(96, wall=2e-3, cpu=500e-6)  # maybe slowed by contention: probe it
    assert policy.inline(96, now=100.0)


def test_slow_inline_calls_in_a_row_demote_their_size() -> None:
    policy = InlinePolicy(MAX)
    policy.ran_in_thread(64, wall=10e-6, cpu=10e-6)
    slow_inline_calls(policy, 32, now=0.0)
    assert policy.inline(31, now=0.0)
    assert not policy.inline(32, now=0.0)
    assert not policy.inline(64, now=0.0)


def test_one_slow_inline_call_between_fast_ones_is_not_enough() -> None:
    policy = InlinePolicy(MAX)
    policy.ran_in_thread(64, wall=10e-6, cpu=10e-6)
    for _ in range(10):
        policy.ran_inline(64, wall=150e-6, cpu=150e-6, now=0.0)
        policy.ran_inline(64, wall=10e-6, cpu=10e-6, now=0.0)
    assert policy.inline(64, now=0.0)


def test_preempted_inline_calls_are_not_slow() -> None:
    """Wall time far above the limit but little CPU: the process was descheduled."""
    policy = InlinePolicy(MAX)
    policy.ran_in_thread(64, wall=10e-6, cpu=10e-6)
    for _ in range(10):
        policy.ran_inline(64, wall=5 * MAX, cpu=MAX / 10, now=0.0)
    assert policy.inline(64, now=0.0)


def test_inline_calls_that_block_without_cpu_are_slow() -> None:
    """A model waiting on a device: little CPU, but it holds the loop for long."""
    policy = InlinePolicy(MAX)
    policy.ran_in_thread(64, wall=10e-6, cpu=10e-6)
    for _ in range(InlinePolicy.SLOW_CALLS):
        assert policy.inline(64, now=0.0)
        policy.ran_inline(64, wall=MAX * InlinePolicy.PROBE_FACTOR, cpu=MAX / 10, now=0.0)
    assert not policy.inline(64, now=0.0)


def test_slow_thread_call_never_becomes_inline() -> None:
    policy = InlinePolicy(MAX)
    for now in (0.0, 10.0, 100.0):
        policy.ran_in_thread(64, wall=5e-3, cpu=5e-3)
        assert not policy.inline(64, now=now)


def test_zero_disables_inline_calls() -> None:
    policy = InlinePolicy(0.0)
    policy.ran_in_thread(1, wall=1e-6, cpu=1e-6)
    assert not policy.inline(1, now=100.0)


class Recording(ExecutorRuntime):
    """Runs a function that records which thread ran it and sleeps ``delay``."""

    def __init__(
        self, executor: ThreadPoolExecutor, delay: float, inline_max: float, sleep: bool = False
    ) -> None:
        super().__init__(executor, inline_max)
        self.delay = delay
        self.sleep = sleep
        self.threads: list[int] = []

    def _work(self, inputs: Tensors) -> Tensors:
        self.threads.append(threading.get_ident())
        if self.sleep:  # stands for a model waiting on a device: slow, but no CPU
            time.sleep(self.delay)
        elif self.delay:  # stands for a model computing: burns CPU for ``delay`` seconds
            end = time.thread_time() + self.delay
            while time.thread_time() < end:
                pass
        return {"y": inputs["x"] * 2}

    _run = _work  # the synchronous call ExecutorRuntime runs inline or in a thread


def run_calls(runtime: Recording, calls: int) -> tuple[int, list[np.ndarray]]:
    async def main() -> tuple[int, list[np.ndarray]]:
        x = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
        outs = [(await runtime.predict(x))["y"] for _ in range(calls)]
        return threading.get_ident(), outs

    return asyncio.run(main())


def test_fast_model_runs_on_the_loop_after_its_first_call() -> None:
    with ThreadPoolExecutor(1) as executor:
        runtime = Recording(executor, delay=0.0, inline_max=0.05)  # 50 ms: always fast
        loop_thread, outs = run_calls(runtime, 5)
    assert runtime.threads[0] != loop_thread
    assert runtime.threads[1:] == [loop_thread] * 4
    for out in outs:
        np.testing.assert_array_equal(out, [[0, 2, 4, 6]])


def test_slow_model_stays_in_the_executor() -> None:
    with ThreadPoolExecutor(1) as executor:
        runtime = Recording(executor, delay=0.002, inline_max=100e-6)
        loop_thread, _ = run_calls(runtime, 5)
    assert loop_thread not in runtime.threads


def test_model_slow_without_cpu_blocks_the_loop_at_most_once_per_backoff() -> None:
    with ThreadPoolExecutor(1) as executor:
        runtime = Recording(executor, delay=0.002, inline_max=100e-6, sleep=True)
        started = time.monotonic()
        loop_thread, _ = run_calls(runtime, 10)
        elapsed = time.monotonic() - started
    on_loop = runtime.threads.count(loop_thread)
    periods = 1 + int(elapsed / InlinePolicy.BACKOFF_SECONDS[0])
    assert on_loop <= InlinePolicy.SLOW_CALLS * periods
    assert on_loop < len(runtime.threads) - 1


def test_onnx_runtime_takes_the_setting_from_threads_config(examples_dir: Path) -> None:
    from sidecar.runtimes.onnx import OnnxRuntime

    x = {"input": np.zeros((1, 64), dtype=np.float32)}

    async def main(threads: ThreadsConfig) -> tuple[Tensors, Tensors]:
        with ThreadPoolExecutor(1) as executor:
            runtime = OnnxRuntime(
                "digits",
                examples_dir / "digits" / "1" / "model.onnx",
                ModelConfig(),
                "cpu",
                threads,
                executor,
            )
            await runtime.load()
            first = await runtime.predict(x)
            # Once the executor is shut down, only an inline call can still answer.
            executor.shutdown(wait=True)
            try:
                second = await runtime.predict(x)
            finally:
                await runtime.unload()
        return first, second

    # 1 s: the digits model is certainly faster than that.
    first, second = asyncio.run(main(ThreadsConfig(inline_max_us=1_000_000)))
    np.testing.assert_array_equal(first["probabilities"], second["probabilities"])
    try:
        asyncio.run(main(ThreadsConfig(inline_max_us=0)))
    except RuntimeError as exc:
        assert "shutdown" in str(exc)
    else:
        raise AssertionError("with inline_max_us=0 every call must go to the executor")


def test_predict_inline_answers_only_once_calls_of_that_size_are_known_fast() -> None:
    """The data plane's task-free path: None (go await predict) until a call proved fast."""
    x = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    with ThreadPoolExecutor(1) as executor:
        runtime = Recording(executor, delay=0.0, inline_max=0.05)
        assert runtime.predict_inline(x) is None  # unknown size: belongs in a thread
        assert runtime.threads == []  # ... and nothing ran
        run_calls(runtime, 1)  # the first call, in the thread, proves it fast
        out = runtime.predict_inline(x)
    assert out is not None
    np.testing.assert_array_equal(out["y"], [[0, 2, 4, 6]])
    assert runtime.threads[-1] == threading.get_ident()  # ran right here, synchronously
    bigger = {"x": np.zeros((2, 4), dtype=np.float32)}
    assert runtime.predict_inline(bigger) is None


def test_batcher_predict_inline_only_when_idle_and_without_delay() -> None:
    from sidecar.batcher import Batcher
    from sidecar.config import BatchingConfig
    from sidecar.types import ModelSignature, TensorSpec

    x = {"x": np.ones((1, 4), dtype=np.float32)}
    with ThreadPoolExecutor(1) as executor:
        runtime = Recording(executor, delay=0.0, inline_max=0.05)
        runtime.signature = ModelSignature(  # type: ignore[misc]
            inputs=(TensorSpec("x", "FP32", (-1, 4)),),
            outputs=(TensorSpec("y", "FP32", (-1, 4)),),
            platform="test",
        )
        run_calls(runtime, 1)  # proves calls of this size fast
        counted: list[int] = []
        idle = Batcher("m", runtime, BatchingConfig(enabled=True), lambda r, s: counted.append(r))
        prediction = idle.predict_inline(x, 1)
        assert prediction is not None
        np.testing.assert_array_equal(prediction.outputs["y"], [[2, 2, 2, 2]])
        assert counted == [1] and idle.batches == 1
        delayed = Batcher("m", runtime, BatchingConfig(enabled=True, max_queue_delay_us=500))
        assert delayed.predict_inline(x, 1) is None  # must wait for company: the queue path
        too_many = {"x": np.ones((idle.config.max_batch_size + 1, 4), dtype=np.float32)}
        assert idle.predict_inline(too_many, idle.config.max_batch_size + 1) is None
