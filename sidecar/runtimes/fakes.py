"""Small runtimes for tests: no model file, predictable behaviour.

``SumRuntime`` sums each row, ``FailingRuntime`` raises, ``SleepingRuntime``
waits before answering. Tests of the server, batcher and metrics use them so
they need no real model; they honour the same protocol as the real runtimes.
"""

from __future__ import annotations

import asyncio

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
