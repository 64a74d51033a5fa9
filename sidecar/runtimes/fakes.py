"""Small runtimes for tests: no model file, predictable behaviour.

``SumRuntime`` sums each row, ``FailingRuntime`` raises, ``SleepingRuntime``
waits before answering, ``ThreadSleepRuntime`` holds an executor thread for a
while, ``BlockingRuntime`` wedges one,
``NaNRuntime`` and ``WrongShapeRuntime`` answer badly, ``EchoRuntime`` takes
any signature. Tests of the server, batcher and metrics use them so
they need no real model; they honour the same protocol as the real runtimes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor

import numpy as np

from sidecar.runtimes.base import RuntimeInfo
from sidecar.types import ModelSignature, Tensors, TensorSpec


class SumRuntime:
    """Input ``x`` FP32[-1, width] → output ``sum`` FP32[-1, 1] (row sums) and ``x`` echoed."""

    def __init__(self, width: int = 4) -> None:
        self._ready = False
        self.calls: list[int] = []  # rows per call, for batching tests
        self._signature = ModelSignature(
            inputs=(TensorSpec("x", "FP32", (-1, width)),),
            outputs=(TensorSpec("sum", "FP32", (-1, 1)), TensorSpec("echo", "FP32", (-1, width))),
            platform="fake",
        )

    @property
    def ready(self) -> bool:
        """True after load."""
        return self._ready

    @property
    def signature(self) -> ModelSignature:
        """One input, two outputs."""
        return self._signature

    @property
    def info(self) -> RuntimeInfo:
        """A fixed description."""
        return RuntimeInfo("fake", "0", "cpu", 0, "000000000000", 0, 0)

    async def load(self) -> None:
        """Nothing to load."""
        self._ready = True

    async def predict(self, inputs: Tensors) -> Tensors:
        """Row sums, computed at once."""
        x = inputs["x"]
        self.calls.append(int(x.shape[0]))
        return {"sum": x.sum(axis=1, keepdims=True, dtype=np.float32), "echo": np.array(x)}

    async def unload(self) -> None:
        """Nothing to free."""
        self._ready = False


class FailingRuntime(SumRuntime):
    """Raises from ``predict`` (when ``fail`` is set), like a model that crashes."""

    def __init__(self, message: str = "model exploded", width: int = 4) -> None:
        super().__init__(width)
        self.message = message
        self.fail = True

    async def predict(self, inputs: Tensors) -> Tensors:
        """Raise RuntimeError(message) while ``fail`` is set."""
        if self.fail:
            raise RuntimeError(self.message)
        return await super().predict(inputs)


class SleepingRuntime(SumRuntime):
    """Waits ``delay`` seconds (on an event the test may set early) before answering."""

    def __init__(self, delay: float, width: int = 4) -> None:
        super().__init__(width)
        self.delay = delay
        self.started = asyncio.Event()

    async def predict(self, inputs: Tensors) -> Tensors:
        """Sleep, then sum."""
        self.started.set()
        await asyncio.sleep(self.delay)
        return await super().predict(inputs)


class FailingLoadRuntime(SumRuntime):
    """Fails to load, like a corrupt model file."""

    async def load(self) -> None:
        """Always raise."""
        from sidecar.errors import ModelLoadError

        raise ModelLoadError("fake model refuses to load")


class EchoRuntime(SumRuntime):
    """Any signature: returns each input ``name`` as output ``name`` unchanged (fuzzing)."""

    def __init__(self, inputs: tuple[TensorSpec, ...]) -> None:
        super().__init__()
        self._signature = ModelSignature(inputs=inputs, outputs=inputs, platform="fake")

    async def predict(self, inputs: Tensors) -> Tensors:
        """The inputs, as outputs."""
        self.calls.append(max((int(a.shape[0]) for a in inputs.values() if a.ndim), default=1))
        return dict(inputs)


class NaNRuntime(SumRuntime):
    """Answers with the right shapes and dtypes but every value NaN."""

    async def predict(self, inputs: Tensors) -> Tensors:
        """NaN sums and echoes."""
        outputs = await super().predict(inputs)
        return {name: np.full_like(array, np.nan) for name, array in outputs.items()}


class WrongShapeRuntime(SumRuntime):
    """Answers with one row too many and a missing output: a broken model."""

    async def predict(self, inputs: Tensors) -> Tensors:
        """Row sums of ``x`` plus an extra row; no ``echo``."""
        x = inputs["x"]
        self.calls.append(int(x.shape[0]))
        return {"sum": np.zeros((x.shape[0] + 1, 1), np.float32)}


class BlockingRuntime(SumRuntime):
    """Blocks an executor thread until ``release`` is set, like a model wedged in native code.

    Unlike ``SleepingRuntime`` the work cannot be cancelled: the thread stays busy
    until the event is set, whatever happens to the request that started it.
    """

    def __init__(self, executor: Executor | None = None, width: int = 4) -> None:
        super().__init__(width)
        self._executor = executor
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)  # released once per call that reached the model

    def _block(self) -> None:
        self.entered.release()
        self.release.wait()

    async def predict(self, inputs: Tensors) -> Tensors:
        """Block a thread until released, then sum."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._block)
        return await super().predict(inputs)


class ThreadSleepRuntime(SumRuntime):
    """Holds an executor thread ``delay`` seconds per call, like a model computing.

    Its capacity is (threads of the executor) / delay calls per second: more
    concurrent calls queue for a thread, as they would on a real model.
    """

    def __init__(self, delay: float, executor: Executor | None = None, width: int = 4) -> None:
        super().__init__(width)
        self.delay = delay
        self._executor = executor

    async def predict(self, inputs: Tensors) -> Tensors:
        """Occupy a thread for ``delay`` seconds, then sum."""
        await asyncio.get_running_loop().run_in_executor(self._executor, time.sleep, self.delay)
        return await super().predict(inputs)
