"""Test doubles for the label tests: a store that fails on demand, runtimes with set outputs."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from exporters.labels import LOCAL_STORE
from sidecar.labels.errors import StoreError
from sidecar.labels.store_memory import MemoryStore
from sidecar.labels.types import (
    AttachResult,
    Lookup,
    PutResult,
    ShadowRow,
    StoredPrediction,
    SweepResult,
    TakeResult,
)
from sidecar.runtimes.fakes import SumRuntime
from sidecar.types import ModelSignature, Tensors, TensorSpec


class FlakyStore(MemoryStore):
    """A MemoryStore whose operations raise StoreError while ``broken`` is set."""

    backend = "flaky"

    scope = LOCAL_STORE

    def __init__(self, max_entries: int = 1000, remember_seconds: float = 60.0) -> None:
        super().__init__(max_entries, remember_seconds)
        self.broken = False

    def _check(self, what: str) -> None:
        if self.broken:
            raise StoreError(f"flaky store: {what} failed: connection refused")

    def put(self, rows: Sequence[StoredPrediction], now: float) -> PutResult:
        self._check("write")
        return super().put(rows, now)

    def attach(self, rows: Sequence[ShadowRow], now: float) -> AttachResult:
        self._check("write")
        return super().attach(rows, now)

    def take(self, lookups: Sequence[Lookup], now: float) -> list[TakeResult]:
        self._check("read")
        return super().take(lookups, now)

    def sweep(self, now: float, models: Collection[str]) -> SweepResult:
        self._check("sweep")
        return super().sweep(now, models)


class ChosenClassRuntime(SumRuntime):
    """A classifier that predicts the class index its input holds.

    Input ``input`` FP32[-1, 1] (the class to predict) → ``probabilities``
    FP32[-1, classes], one-hot, so a test decides every prediction exactly.
    """

    def __init__(self, classes: int) -> None:
        super().__init__(width=1)
        self.classes = classes
        self._signature = ModelSignature(
            inputs=(TensorSpec("input", "FP32", (-1, 1)),),
            outputs=(TensorSpec("probabilities", "FP32", (-1, classes)),),
            platform="fake",
        )

    async def predict(self, inputs: Tensors) -> Tensors:
        """One-hot rows of the requested classes."""
        chosen = inputs["input"][:, 0].astype(np.int64)
        return {"probabilities": np.eye(self.classes, dtype=np.float32)[chosen]}
