"""The one small protocol every runtime implements, and helpers they share.

A runtime loads one model file and runs it. Model execution is CPU/GPU work,
so ``predict`` hands it to an executor thread and never runs it on the event
loop. Runtimes know nothing of gRPC, metrics or batching (the batcher wraps a
runtime and offers the same interface).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from sidecar.config import TensorOverride
from sidecar.errors import ModelLoadError
from sidecar.types import ModelSignature, Tensors, TensorSpec


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What is loaded, where, and how big: exported as model metrics."""

    runtime: str  # "onnxruntime" | "torch"
    runtime_version: str
    device: str  # "cpu" | "cuda:0" ...
    file_size_bytes: int
    sha256: str  # first 12 hex digits of the model file's hash
    parameters: int
    layers: int  # ONNX graph nodes / torch leaf modules
    operators: Mapping[str, int] = field(default_factory=dict)  # op type → count
    opset: str = ""  # ONNX opset or torch version that made the file


@runtime_checkable
class Runtime(Protocol):
    """Loads a model and runs batches of it."""

    @property
    def ready(self) -> bool:
        """True between a successful ``load`` and ``unload``."""
        ...

    @property
    def signature(self) -> ModelSignature:
        """Inputs and outputs; valid after ``load``."""
        ...

    @property
    def info(self) -> RuntimeInfo:
        """Runtime, device, size and complexity; valid after ``load``."""
        ...

    async def load(self) -> None:
        """Load the model (off the event loop); raises ModelLoadError."""
        ...

    async def predict(self, inputs: Tensors) -> Tensors:
        """Run the model on validated inputs; raises on model failure."""
        ...

    async def unload(self) -> None:
        """Release the model's memory."""
        ...


def file_digest(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256 (shows a model swapped in place)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def apply_overrides(
    specs: tuple[TensorSpec, ...], overrides: tuple[TensorOverride, ...], what: str, model: str
) -> tuple[TensorSpec, ...]:
    """Apply config.yaml overrides (datatype, shape, rename) to specs read from the file."""
    by_name = {s.name: s for s in specs}
    for over in overrides:
        if over.name not in by_name:
            raise ModelLoadError(
                f"model {model!r}: config.yaml overrides {what} {over.name!r}, but the model's "
                f"{what}s are: {', '.join(by_name) or '(none)'}"
            )
    out = []
    for spec in specs:
        found = next((o for o in overrides if o.name == spec.name), None)
        if found is not None:
            over = found
            if over.shape is not None and len(over.shape) != len(spec.shape) and spec.shape:
                raise ModelLoadError(
                    f"model {model!r}: config.yaml gives {what} {spec.name!r} shape "
                    f"{list(over.shape)}, but the model file says {list(spec.shape)}"
                )
            spec = replace(
                spec,
                name=over.rename or spec.name,
                datatype=over.datatype or spec.datatype,
                shape=over.shape if over.shape is not None else spec.shape,
            )
        out.append(spec)
    return tuple(out)


class ExecutorRuntime:
    """Base for runtimes whose work is synchronous: runs it in an executor thread."""

    def __init__(self, executor: Executor | None) -> None:
        self._executor = executor
        self._ready = False

    @property
    def ready(self) -> bool:
        """True between a successful ``load`` and ``unload``."""
        return self._ready

    async def _in_executor(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)  # type: ignore[arg-type]
