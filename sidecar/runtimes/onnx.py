"""ONNX Runtime: CPU execution provider, or CUDA when the device asks for it."""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from sidecar.config import ModelConfig, ThreadsConfig
from sidecar.errors import MissingDependencyError, ModelLoadError
from sidecar.runtimes.base import ModelFileRuntime, RuntimeInfo, apply_overrides, file_digest
from sidecar.types import ModelSignature, Tensors, TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def import_onnxruntime() -> Any:
    """Import onnxruntime, or say which extra installs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            "ONNX models need onnxruntime: pip install 'inference-sidecar[onnx]' "
            "(or '[onnx-gpu]' for CUDA)"
        ) from exc
    return onnxruntime


def cuda_available() -> bool:
    """True when onnxruntime offers the CUDA execution provider."""
    try:
        ort = import_onnxruntime()
    except MissingDependencyError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


class OnnxRuntime(ModelFileRuntime):
    """Runs ``model.onnx`` with onnxruntime."""

    def __init__(
        self,
        name: str,
        path: Path,
        config: ModelConfig,
        device: str,
        threads: ThreadsConfig,
        executor: Executor | None = None,
    ) -> None:
        super().__init__(name, path, config, device, threads, executor)
        self._session: Any = None
        self._output_names: list[str] = []

    @property
    def session_options(self) -> Any:
        """The onnxruntime SessionOptions the session was created with."""
        assert self._session is not None, "load() first"
        return self._session.get_session_options()

    async def load(self) -> None:
        """Create the inference session in the executor."""
        await self._in_executor(self._load)
        self._ready = True

    def _providers(self, ort: Any) -> tuple[list[Any], str]:
        available = ort.get_available_providers()
        device = self._device_setting
        if device == "auto":
            device = "cuda:0" if "CUDAExecutionProvider" in available else "cpu"
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise ModelLoadError(
                    f"model {self._name!r}: device {self._device_setting!r} needs onnxruntime's "
                    "CUDAExecutionProvider, which this onnxruntime lacks; install the "
                    "onnx-gpu extra (onnxruntime-gpu) or set device: cpu"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], (
                f"cuda:{index}"
            )
        return ["CPUExecutionProvider"], "cpu"

    def _load(self) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        intra = self._config.onnx.intra_op_threads
        inter = self._config.onnx.inter_op_threads
        opts.intra_op_num_threads = intra if intra is not None else self._threads.intra_op_threads
        opts.inter_op_num_threads = inter if inter is not None else self._threads.inter_op_threads
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPT_LEVELS[self._config.onnx.graph_optimization_level]
        )
        opts.log_severity_level = 3
        providers, device = self._providers(ort)
        try:
            session = ort.InferenceSession(str(self._path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"model {self._name!r}: {self._path}: {exc}") from exc
        inputs = tuple(self._spec(i) for i in session.get_inputs())
        outputs = tuple(self._spec(o) for o in session.get_outputs())
        self._output_names = [o.name for o in session.get_outputs()]
        file_inputs = {s.name: s for s in inputs}
        for over in self._config.inputs:
            spec = file_inputs.get(over.name)
            if spec is not None and over.datatype and over.datatype != spec.datatype:
                raise ModelLoadError(
                    f"model {self._name!r}: config.yaml gives input {over.name!r} datatype "
                    f"{over.datatype}, but the ONNX file says {spec.datatype}"
                )
        self._signature = ModelSignature(
            inputs=apply_overrides(inputs, self._config.inputs, "input", self._name),
            outputs=apply_overrides(outputs, self._config.outputs, "output", self._name),
            platform="onnxruntime_onnx",
        )
        self._input_map = {
            s.name: f.name for s, f in zip(self._signature.inputs, inputs, strict=True)
        }
        self._client_outputs = [s.name for s in self._signature.outputs]
        self._session = session
        self._info = self._describe(ort.__version__, device)

    def _spec(self, arg: Any) -> TensorSpec:
        datatype = _ORT_TYPES.get(arg.type)
        if datatype is None:
            raise ModelLoadError(
                f"model {self._name!r}: tensor {arg.name!r} has type {arg.type}, which the "
                f"KServe v2 protocol cannot carry here (supported: {', '.join(_ORT_TYPES)})"
            )
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)
        return TensorSpec(arg.name, datatype, shape)

    def _describe(self, version: str, device: str) -> RuntimeInfo:
        params = layers = 0
        ops: Counter[str] = Counter()
        opset = ""
        try:
            import onnx
            from onnx import numpy_helper

            model = onnx.load(str(self._path), load_external_data=False)
            layers = len(model.graph.node)
            ops.update(node.op_type for node in model.graph.node)
            params = sum(int(numpy_helper.to_array(t).size) for t in model.graph.initializer)
            opset = ",".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)
        except ImportError:
            log.info("onnx not installed: model %s complexity metrics unavailable", self._name)
        return RuntimeInfo(
            runtime="onnxruntime",
            runtime_version=version,
            device=device,
            file_size_bytes=self._path.stat().st_size,
            sha256=file_digest(self._path),
            parameters=params,
            layers=layers,
            operators=dict(ops),
            opset=opset,
        )

    def _run(self, inputs: Tensors) -> Tensors:
        feed = {self._input_map[name]: value for name, value in inputs.items()}
        results = self._session.run(self._output_names, feed)
        return dict(zip(self._client_outputs, results, strict=True))

    async def unload(self) -> None:
        """Drop the session."""
        self._ready = False
        self._session = None
