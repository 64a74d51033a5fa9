"""``inference-sidecar convert``: a TorchScript or torch.export model → ONNX (and int8 ONNX).

The source is loaded the way the server loads it (``TorchRuntime``: no
pickles), with its ``config.yaml`` when it sits in a model repository, so the
ONNX file gets the names clients already use (config ``rename``s applied) and
its batch dimension (every ``-1``) stays dynamic. The result drops into the
repository as ``<model>/<version>/model.onnx`` without tensor overrides.

- **torch.export** (``model.pt2``): ``torch.onnx.export(program, dynamo=True)``,
  the exporter PyTorch maintains. It needs ``onnxscript``
  (``pip install 'inference-sidecar[convert]'``).
- **TorchScript** (``model.pt``): the dynamo exporter refuses ScriptModules, so
  the TorchScript-based exporter (``dynamo=False``) traces it on an example
  batch. PyTorch deprecates that exporter; its warnings are silenced here.

``--int8`` also writes a dynamically quantised copy
(``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations
quantised at run time). Check either file with ``inference-sidecar compare``
before promoting it.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.config import InsightConfig, ModelConfig, ThreadsConfig, load_model_config
from sidecar.errors import MissingDependencyError
from sidecar.insight.errors import ConversionError
from sidecar.runtimes.torch import TorchRuntime
from sidecar.types import ModelSignature, Tensors, TensorSpec

#: Rows of the example batch the exporters trace with (2, so a batch of 1 is not baked in).
EXAMPLE_ROWS = 2
#: Size given to dynamic non-batch dimensions in the example batch.
EXAMPLE_DIM = 8
DEFAULT_OPSET = 18


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What ``convert`` wrote, and how close the ONNX model is to the source on one batch."""

    source: Path
    output: Path
    size_bytes: int
    max_abs_diff: float  # ONNX vs torch on a seeded example batch, over every output
    int8_output: Path | None = None
    int8_size_bytes: int = 0
    int8_max_abs_diff: float = 0.0


def model_config_for(path: Path) -> ModelConfig:
    """The config.yaml of a model file laid out as ``<model>/<version>/<file>``, or defaults."""
    candidate = path.parent.parent / "config.yaml"
    in_repository = path.parent.name.isdigit() and candidate.is_file()
    config = load_model_config(candidate) if in_repository else ModelConfig()
    # Insight features configure serving, not conversion: load the file bare.
    return config.model_copy(update={"insight": InsightConfig()})


def example_inputs(signature: ModelSignature, seed: int = 0) -> Tensors:
    """A seeded example batch matching the signature (dynamic dims get small sizes)."""
    rng = np.random.default_rng(seed)
    out: Tensors = {}
    for spec in signature.inputs:
        shape = _example_shape(spec)
        if spec.dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return out


def _example_shape(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(
        (EXAMPLE_ROWS if i == 0 else EXAMPLE_DIM) if d == -1 else d
        for i, d in enumerate(spec.shape)
    )


def _dynamic_axes(specs: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]]:
    return {
        s.name: {
            i: ("batch" if i == 0 else f"{s.name}_dim{i}") for i, d in enumerate(s.shape) if d == -1
        }
        for s in specs
        if -1 in s.shape
    }


def convert(
    source: Path,
    output: Path,
    *,
    config: ModelConfig | None = None,
    int8_output: Path | None = None,
    opset: int = DEFAULT_OPSET,
) -> ConvertResult:
    """Export ``source`` (model.pt / model.pt2) to ONNX at ``output``; optionally int8 too."""
    if source.suffix not in (".pt", ".pt2"):
        raise ConversionError(
            f"{source}: convert takes a TorchScript (.pt) or torch.export (.pt2) file"
        )
    config = config or model_config_for(source)
    return asyncio.run(_convert(source, output, config, int8_output, opset))


async def _convert(
    source: Path, output: Path, config: ModelConfig, int8_output: Path | None, opset: int
) -> ConvertResult:
    runtime = TorchRuntime(source.stem, source, config, "cpu", ThreadsConfig())
    await runtime.load()
    try:
        signature = runtime.signature
        example = example_inputs(signature)
        expected = await runtime.predict(example)
        output.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".pt2":
            await asyncio.to_thread(_export_program, source, output, signature, opset)
        else:
            await asyncio.to_thread(_export_script, runtime, output, signature, example, opset)
    finally:
        await runtime.unload()
    diff = await asyncio.to_thread(_check, output, example, expected)
    if int8_output is None:
        return ConvertResult(source, output, output.stat().st_size, diff)
    await asyncio.to_thread(quantize, output, int8_output)
    return ConvertResult(
        source,
        output,
        output.stat().st_size,
        diff,
        int8_output,
        int8_output.stat().st_size,
        await asyncio.to_thread(_check, int8_output, example, expected),
    )


def _torch() -> Any:
    from sidecar.runtimes.torch import import_torch

    return import_torch()


def _export_program(source: Path, output: Path, signature: ModelSignature, opset: int) -> None:
    torch = _torch()
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError as exc:
        raise MissingDependencyError(
            "converting a torch.export model needs onnxscript: "
            "pip install 'inference-sidecar[convert]'"
        ) from exc
    program = torch.export.load(str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                input_names=[s.name for s in signature.inputs],
                output_names=[s.name for s in signature.outputs],
                opset_version=opset,
                verbose=False,
            )
        onnx_program.save(str(output))
    except Exception as exc:  # the exporter raises many untyped errors
        raise ConversionError(f"{source}: torch.onnx.export (dynamo) failed: {exc}") from exc


def _export_script(
    runtime: TorchRuntime, output: Path, signature: ModelSignature, example: Tensors, opset: int
) -> None:
    torch = _torch()
    module = runtime.module
    args = tuple(torch.from_numpy(example[s.name]) for s in signature.inputs)
    try:
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated upstream but is the only one
            # that takes a ScriptModule; its deprecation warnings are expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(output),
                dynamo=False,
                input_names=[s.name for s in signature.inputs],
                output_names=[s.name for s in signature.outputs],
                dynamic_axes=_dynamic_axes(signature.inputs + signature.outputs),
                opset_version=opset,
            )
    except Exception as exc:
        raise ConversionError(
            f"{runtime.path}: torch.onnx.export (TorchScript) failed: {exc}"
        ) from exc


def _check(path: Path, example: Tensors, expected: Tensors) -> float:
    """Load the ONNX file with onnxruntime and return max |onnx - torch| over every output."""
    from sidecar.runtimes.onnx import import_onnxruntime

    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, {i.name: example[i.name] for i in session.get_inputs()})
    except Exception as exc:
        raise ConversionError(f"{path}: onnxruntime cannot run the converted model: {exc}") from exc
    diff = 0.0
    for name, value in zip(names, results, strict=True):
        if name in expected:
            want = expected[name].astype(np.float64)
            diff = max(diff, float(np.max(np.abs(np.asarray(value, np.float64) - want), initial=0)))
    return diff


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize(source: Path, output: Path) -> None:
    """Write a dynamically quantised (int8 weights) copy of the ONNX model ``source``."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise MissingDependencyError(
            "int8 quantisation needs onnxruntime: pip install 'inference-sidecar[onnx]'"
        ) from exc
    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)  # quantize_dynamic advises pre-processing on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # quantize_dynamic writes beside its output; keep the temporary files out of the repo.
            staged = Path(tmp) / "model.int8.onnx"
            quantize_dynamic(str(source), str(staged), weight_type=QuantType.QInt8)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(staged.read_bytes())
    except Exception as exc:
        raise ConversionError(f"{source}: int8 quantisation failed: {exc}") from exc
    finally:
        root.removeFilter(advice)
