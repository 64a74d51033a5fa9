"""Model runtimes behind one protocol (see ``base.Runtime``)."""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

from sidecar.config import ModelConfig, ThreadsConfig
from sidecar.runtimes.base import Runtime, RuntimeInfo

__all__ = ["MODEL_FILES", "Runtime", "RuntimeInfo", "create_runtime"]

#: Model file names a version directory may hold, and the runtime for each.
MODEL_FILES: dict[str, str] = {"model.onnx": "onnx", "model.pt": "torch", "model.pt2": "torch"}


def create_runtime(
    name: str,
    path: Path,
    config: ModelConfig,
    device: str,
    threads: ThreadsConfig,
    executor: Executor | None = None,
) -> Runtime:
    """The runtime for a model file; its heavy backend is imported only on load."""
    kind = config.runtime or MODEL_FILES[path.name]
    if kind == "onnx":
        from sidecar.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(name, path, config, device, threads, executor)
    from sidecar.runtimes.torch import TorchRuntime

    return TorchRuntime(name, path, config, device, threads, executor)
