"""PyTorch: TorchScript (``model.pt``) and torch.export archives (``model.pt2``).

Only these two formats load, and neither may run a pickle of arbitrary
Python. TorchScript's own unpickler knows only torch types. A torch.export
archive is not safe by itself: ``torch.export.load`` unpickles sample inputs
and pickled weights with ``torch.load(weights_only=False)`` when the safe load
fails, and "opaque object" constants with plain ``pickle.loads``. So before
torch is used, ``import_torch`` sets ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` (torch
then refuses arbitrary objects in every ``torch.load`` of this process), and
an archive holding custom or opaque object constants is refused before torch
reads it; the archive is read once into memory, so what was checked is what
loads. Torch is imported lazily; a torch model without torch installed is a
clear error naming the extra.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections import Counter
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sidecar.config import ModelConfig, ThreadsConfig
from sidecar.errors import MissingDependencyError, ModelLoadError
from sidecar.runtimes.base import ModelFileRuntime, RuntimeInfo, apply_overrides, file_digest
from sidecar.types import ModelSignature, Tensors, TensorSpec

if TYPE_CHECKING:
    from sidecar.insight.activations import ActivationTaps

_TORCH_TYPES = {
    "torch.bool": "BOOL",
    "torch.int8": "INT8",
    "torch.int16": "INT16",
    "torch.int32": "INT32",
    "torch.int64": "INT64",
    "torch.uint8": "UINT8",
    "torch.uint16": "UINT16",
    "torch.uint32": "UINT32",
    "torch.uint64": "UINT64",
    "torch.float16": "FP16",
    "torch.float32": "FP32",
    "torch.float64": "FP64",
}


#: Constants of a torch.export archive that torch would unpickle as arbitrary objects.
_UNSAFE_PT2_CONSTANTS = ("custom_obj_", "opaque_obj_")


def import_torch() -> Any:
    """Import torch (every ``torch.load`` forced to weights only), or name the extra to install."""
    # Documented torch switch, read at each torch.load: no pickle of arbitrary objects,
    # even where torch itself asks for weights_only=False (torch.export.load does).
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            "PyTorch models (model.pt / model.pt2) need torch: "
            "pip install 'inference-sidecar[torch]'"
        ) from exc
    return torch


def resolve_device(torch: Any, device: str) -> str:
    """``auto`` → ``cuda:0`` when a GPU is visible, else ``cpu``; checks cuda:N exists."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} requested but torch sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA devices"
            )
        return f"cuda:{index}"
    return "cpu"


class TorchRuntime(ModelFileRuntime):
    """Runs a TorchScript or torch.export model under ``torch.inference_mode()``."""

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
        self._module: Any = None
        self._torch: Any = None
        self._device = "cpu"
        self._taps: ActivationTaps | None = None

    @property
    def path(self) -> Path:
        """The model file."""
        return self._path

    @property
    def module(self) -> Any:
        """The loaded torch module (ScriptModule or exported GraphModule); valid after load."""
        assert self._module is not None, "load() first"
        return self._module

    @property
    def activations(self) -> ActivationTaps | None:
        """Taps on the layers ``insight.activations`` names (None when not configured)."""
        return self._taps

    async def load(self) -> None:
        """Load the module in the executor and move it to the device."""
        await self._in_executor(self._load)
        self._ready = True

    def _load(self) -> None:
        torch = import_torch()
        self._torch = torch
        if self._threads.intra_op_threads:
            torch.set_num_threads(self._threads.intra_op_threads)
        try:
            self._device = resolve_device(torch, self._device_setting)
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {self._name!r}: {exc}") from exc
        try:
            if self._path.suffix == ".pt2":
                inputs, outputs, ops = self._load_exported(torch)
            else:
                inputs, outputs, ops = self._load_script(torch)
        except ModelLoadError:
            raise
        except Exception as exc:  # torch raises many untyped errors on bad files
            raise ModelLoadError(f"model {self._name!r}: {self._path}: {exc}") from exc
        self._signature = ModelSignature(
            inputs=apply_overrides(inputs, self._config.inputs, "input", self._name),
            outputs=apply_overrides(outputs, self._config.outputs, "output", self._name),
            platform="pytorch_torchscript" if self._path.suffix == ".pt" else "pytorch_export",
        )
        for spec in self._signature.inputs + self._signature.outputs:
            if spec.datatype == "" or not spec.shape:
                raise ModelLoadError(
                    f"model {self._name!r}: tensor {spec.name!r} needs a datatype and shape in "
                    "config.yaml (TorchScript files do not record them)"
                )
        self._input_order = [s.name for s in self._signature.inputs]
        self._output_names = [s.name for s in self._signature.outputs]
        if self._config.insight.activations is not None:
            from sidecar.insight.activations import ActivationTaps

            self._taps = ActivationTaps.attach(
                torch,
                self._module,
                self._config.insight.activations,
                model=self._name,
                device=self._device,
                input_order=self._input_order,
            )
        modules = list(self._module.modules())
        self._info = RuntimeInfo(
            runtime="torch",
            runtime_version=str(torch.__version__),
            device=self._device,
            file_size_bytes=self._path.stat().st_size,
            sha256=file_digest(self._path),
            parameters=int(sum(p.numel() for p in self._module.parameters())),
            layers=sum(1 for m in modules if not list(m.children())),
            operators=ops,
            opset=f"torch {torch.__version__}",
        )

    def _load_script(
        self, torch: Any
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict[str, int]]:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but is the format users deploy today.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(self._path), map_location=self._device)
        module.eval()
        self._module = module
        arg_names = [a.name for a in module.forward.schema.arguments[1:]]
        declared_in = {o.name: o for o in self._config.inputs}
        inputs = tuple(
            TensorSpec(n, declared_in[n].datatype or "", declared_in[n].shape or ())
            if n in declared_in
            else TensorSpec(n, "", ())
            for n in arg_names
        )
        outputs = tuple(
            TensorSpec(o.name, o.datatype or "", o.shape or ()) for o in self._config.outputs
        )
        if not outputs:
            raise ModelLoadError(
                f"model {self._name!r}: TorchScript model needs its outputs listed in "
                "config.yaml (outputs: [{name, datatype, shape}])"
            )
        ops = Counter(n.kind() for n in module.inlined_graph.nodes())
        return inputs, outputs, dict(ops)

    def _load_exported(
        self, torch: Any
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict[str, int]]:
        data = self._path.read_bytes()
        _refuse_unsafe_archive(self._path, data)
        program = torch.export.load(io.BytesIO(data))
        graph = program.graph
        placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
        user_inputs = list(program.graph_signature.user_inputs)
        inputs = tuple(self._spec_of(name, placeholders[name].meta["val"]) for name in user_inputs)
        out_node = next(n for n in graph.nodes if n.op == "output")
        values = out_node.args[0]
        values = values if isinstance(values, (tuple, list)) else (values,)
        outputs = tuple(self._spec_of(f"output{i}", v.meta["val"]) for i, v in enumerate(values))
        ops = Counter(str(n.target) for n in graph.nodes if n.op == "call_function")
        self._module = program.module().to(self._device)
        return inputs, outputs, dict(ops)

    def _spec_of(self, name: str, value: Any) -> TensorSpec:
        datatype = _TORCH_TYPES.get(str(value.dtype))
        if datatype is None:
            raise ModelLoadError(f"model {self._name!r}: tensor {name!r} has dtype {value.dtype}")
        shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        return TensorSpec(name, datatype, shape)

    def _run(self, inputs: Tensors) -> Tensors:
        torch = self._torch
        with torch.inference_mode():
            args = [
                torch.from_numpy(a if a.flags.writeable else a.copy()).to(self._device)
                for a in (inputs[n] for n in self._input_order)
            ]
            taps = self._taps
            if taps is not None and taps.begin(int(args[0].shape[0]) if args else 1):
                result = taps.run(self._module, args)
            else:
                result = self._module(*args)
            if isinstance(result, dict):
                result = [result[n] for n in self._output_names]
            elif not isinstance(result, (tuple, list)):
                result = [result]
            if len(result) != len(self._output_names):
                raise ValueError(
                    f"model returned {len(result)} outputs, its signature has "
                    f"{len(self._output_names)} ({', '.join(self._output_names)})"
                )
            return {
                n: np.asarray(t.detach().cpu().numpy())
                for n, t in zip(self._output_names, result, strict=True)
            }

    async def unload(self) -> None:
        """Drop the module and free cached GPU memory."""
        self._ready = False
        if self._taps is not None:
            self._taps.detach()
            self._taps = None
        self._module = None
        if self._torch is not None and self._device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def _refuse_unsafe_archive(path: Path, data: bytes) -> None:
    """ModelLoadError when a torch.export archive holds constants torch would unpickle."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{path}: not a torch.export archive: {exc}") from exc
    unsafe = [
        n
        for n in names
        if "/data/constants/" in n and n.rsplit("/", 1)[-1].startswith(_UNSAFE_PT2_CONSTANTS)
    ]
    if unsafe:
        raise ModelLoadError(
            f"{path}: holds pickled Python objects ({', '.join(unsafe[:3])}); only tensors "
            "are loaded, never arbitrary pickles"
        )
