"""Drift monitoring without a network: a model manager with fake runtimes, a registry to read."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from sidecar.config import ModelConfig, ServerConfig
from sidecar.drift import DriftMonitoring
from sidecar.drift.monitor import ModelMonitor
from sidecar.events import RequestRecord
from sidecar.models import ModelManager, ServedModel
from sidecar.runtimes.base import Runtime, RuntimeInfo
from sidecar.runtimes.fakes import SumRuntime
from sidecar.types import ModelSignature, Tensors, TensorSpec


class FakeRuntime:
    """A runtime with the given signature; ``predict`` returns each output from a function."""

    def __init__(self, signature: ModelSignature) -> None:
        self._signature = signature
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def info(self) -> RuntimeInfo:
        return RuntimeInfo("fake", "0", "cpu", 0, "000000000000", 0, 0)

    async def load(self) -> None:
        self._ready = True

    async def predict(self, inputs: Tensors) -> Tensors:
        rows = next(iter(inputs.values())).shape[0]
        return {
            s.name: np.zeros((rows, *s.shape[1:]), dtype=s.dtype) for s in self._signature.outputs
        }

    async def unload(self) -> None:
        self._ready = False


def signature(inputs: Mapping[str, tuple[str, tuple[int, ...]]]) -> ModelSignature:
    """Inputs as given, one output ``y`` FP32[-1, 1]."""
    return ModelSignature(
        inputs=tuple(TensorSpec(n, dt, shape) for n, (dt, shape) in inputs.items()),
        outputs=(TensorSpec("y", "FP32", (-1, 1)),),
        platform="fake",
    )


class Harness:
    """A ModelManager whose only model hook and listener is a DriftMonitoring.

    The worker thread is not started: ``process()`` runs it once, here, so tests
    are deterministic and never sleep.
    """

    def __init__(self, repository: Path, now: list[float] | None = None) -> None:
        self.repository = repository
        self.registry = CollectorRegistry()
        self.now = now if now is not None else [1000.0]
        self.drift = DriftMonitoring(
            self.registry, clock=lambda: 1.7e9 + self.now[0], monotonic=lambda: self.now[0]
        )
        self.manager = ModelManager(ServerConfig(), repository, [self.drift], hooks=[self.drift])

    def add(
        self, drift: dict[str, Any], runtime: Runtime, name: str = "m", **monitoring: Any
    ) -> ServedModel:
        """Load a model ``name`` whose directory is ``repository/name`` (where references live)."""
        config = ModelConfig.model_validate({"monitoring": {"drift": drift, **monitoring}})
        path = self.repository / name / "1" / "model.onnx"
        return asyncio.run(self.manager.add(name, "1", config, runtime, path))

    def monitor(self, model: ServedModel) -> ModelMonitor:
        monitor = self.drift.monitor(model)
        assert monitor is not None, model.error
        return monitor

    def request(self, model: ServedModel, inputs: Tensors, outputs: Tensors | None = None) -> None:
        """What the data plane does for an answered request."""
        rows = next(iter(inputs.values())).shape[0]
        if outputs is None:
            outputs = asyncio.run(model.runtime.predict(inputs))
        self.drift.on_request(RequestRecord(model, "id", "OK", rows, 0.001, 0.0, inputs, outputs))

    def process(self) -> None:
        """One round of the drift worker."""
        self.drift.worker.run_once()

    def samples(self, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Samples named ``name`` whose labels include ``labels``: {sorted other labels: value}."""
        text = generate_latest(self.registry).decode()
        found: dict[tuple[tuple[str, str], ...], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != name:
                    continue
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    rest = tuple(
                        sorted((k, v) for k, v in sample.labels.items() if k not in labels)
                    )
                    found[rest] = float(sample.value)
        return found

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample with exactly these labels, or None."""
        found = self.samples(name, **labels)
        return found.get((), None)


def write_reference(repository: Path, name: str, file: str, data: Any) -> Path:
    """Write a reference file into ``repository/name``."""
    path = repository / name / file
    path.parent.mkdir(parents=True, exist_ok=True)
    if file.endswith(".npz"):
        np.savez(path, **data)
    elif file.endswith(".npy"):
        np.save(path, data)
    else:
        path.write_text(data)
    return path


#: Features of the summing model the worker and tap tests serve.
SUM_WIDTH = 4


def sum_harness(tmp_path: Path) -> Harness:
    """A repository with model ``m``'s reference of 2,000 N(0, 1) rows × SUM_WIDTH (seed 0)."""
    rng = np.random.default_rng(0)
    write_reference(tmp_path, "m", "reference.npy", rng.standard_normal((2000, SUM_WIDTH)))
    return Harness(tmp_path)


def load_sum(harness: Harness, **drift: Any) -> ServedModel:
    """Serve the summing model with drift on windows of 100 (``drift`` overrides settings)."""
    settings: dict[str, Any] = {"reference": "reference.npy", "window_size": 100, "min_window": 50}
    settings.update(drift)
    model = harness.add(settings, SumRuntime(SUM_WIDTH))
    assert model.ready, model.error
    return model
