"""Runtimes the batching tests need beyond sidecar.runtimes.fakes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np

from sidecar.runtimes.fakes import SumRuntime
from sidecar.types import ModelSignature, Tensors, TensorSpec


class WideSumRuntime(SumRuntime):
    """Like SumRuntime but the width is dynamic: x FP32[-1, -1]."""

    def __init__(self) -> None:
        super().__init__()
        self._signature = ModelSignature(
            inputs=(TensorSpec("x", "FP32", (-1, -1)),),
            outputs=(TensorSpec("sum", "FP32", (-1, 1)), TensorSpec("echo", "FP32", (-1, -1))),
            platform="fake",
        )
        self.widths: list[int] = []  # width of each executed batch

    async def predict(self, inputs: Tensors) -> Tensors:
        """Record the batch's width, then sum."""
        self.widths.append(int(inputs["x"].shape[1]))
        return await super().predict(inputs)


class PoisonRuntime(SumRuntime):
    """Fails any batch that contains the value -1 (a row that crashes the model)."""

    async def predict(self, inputs: Tensors) -> Tensors:
        """Raise when poisoned, else sum."""
        self.calls.append(int(inputs["x"].shape[0]))
        if bool(np.any(inputs["x"] == -1)):
            raise RuntimeError("poisoned row in batch")
        x = inputs["x"]
        return {"sum": x.sum(axis=1, keepdims=True, dtype=np.float32), "echo": np.array(x)}


class GatedRuntime(SumRuntime):
    """Blocks every batch until ``release()``; ``started`` is set when one begins.

    Works across threads (the server runs on its own loop), so it waits on a
    threading.Event in an executor thread.
    """

    def __init__(self, width: int = 4) -> None:
        super().__init__(width)
        self.started = threading.Event()
        self._gate = threading.Event()

    def release(self) -> None:
        """Let every waiting and future batch run."""
        self._gate.set()

    async def predict(self, inputs: Tensors) -> Tensors:
        """Wait for the gate (at most 30 s), then sum."""
        self.started.set()
        await asyncio.get_running_loop().run_in_executor(None, self._gate.wait, 30)
        return await super().predict(inputs)


class ScalarRuntime(SumRuntime):
    """Returns one total for the whole batch: its output has no batch dimension."""

    async def predict(self, inputs: Tensors) -> Tensors:
        """A scalar sum."""
        x = inputs["x"]
        return {"sum": np.array(x.sum(), dtype=np.float32), "echo": np.array(x)}


def poll_until(condition: Callable[[], bool], timeout: float = 30, every: float = 0.005) -> None:
    """Check ``condition`` every few ms until it holds; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)
