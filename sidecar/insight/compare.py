"""``inference-sidecar compare A B --data FILE``: two models on the same rows, side by side.

The report a user reads before promoting a converted or quantised model: for
every output the two models share, max and mean absolute difference; for a
classifier's scores, the fraction of rows where both pick the same class; with
``--labels``, each model's accuracy (classifiers) or mean absolute error
(regression); and each model's latency per row, file size and parameter count.

Each model is loaded as the server loads it (with its ``config.yaml`` when it
sits in a model repository, so renamed tensors line up). Both must take one
input; the data file holds its rows. Outputs are paired by name, or by
position when the two models share no output name. A data file, labels file
or output whose shape does not fit is an error naming both shapes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidecar.config import ModelConfig, ThreadsConfig
from sidecar.insight.convert import model_config_for
from sidecar.insight.data import load_array
from sidecar.insight.errors import DataMismatchError, InsightError
from sidecar.runtimes import MODEL_FILES, Runtime, create_runtime
from sidecar.types import Tensors


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """One model's side of the report."""

    path: Path
    runtime: str
    size_bytes: int
    parameters: int
    seconds_per_row: float
    accuracy: float | None = None  # classifiers with labels
    mean_abs_error: float | None = None  # regression with labels


@dataclass(frozen=True, slots=True)
class OutputComparison:
    """One output pair: A's ``name_a`` against B's ``name_b``."""

    name_a: str
    name_b: str
    max_abs_diff: float
    mean_abs_diff: float
    class_agreement: float | None  # fraction of rows with the same argmax (scores outputs)


@dataclass(frozen=True, slots=True)
class CompareReport:
    """Everything ``compare`` measured."""

    rows: int
    a: ModelSummary
    b: ModelSummary
    outputs: tuple[OutputComparison, ...]

    def render(self) -> str:
        """The report as aligned plain text."""
        lines = [f"rows compared: {self.rows}", ""]
        width = max(len(str(self.a.path)), len(str(self.b.path)), 5)
        lines.append(
            f"{'model':<{width}}  {'runtime':<11}  {'size':>10}  {'params':>9}  "
            f"{'µs/row':>9}  {'accuracy':>8}  {'MAE':>9}"
        )
        for m in (self.a, self.b):
            acc = f"{m.accuracy:.4f}" if m.accuracy is not None else "-"
            mae = f"{m.mean_abs_error:.4g}" if m.mean_abs_error is not None else "-"
            lines.append(
                f"{m.path!s:<{width}}  {m.runtime:<11}  {m.size_bytes:>10,}  {m.parameters:>9,}  "
                f"{m.seconds_per_row * 1e6:>9.2f}  {acc:>8}  {mae:>9}"
            )
        lines.append("")
        lines.append(f"{'output (A / B)':<32}  {'max |A-B|':>11}  {'mean |A-B|':>11}  agreement")
        for o in self.outputs:
            name = o.name_a if o.name_a == o.name_b else f"{o.name_a} / {o.name_b}"
            agree = f"{o.class_agreement:.4f}" if o.class_agreement is not None else "-"
            lines.append(f"{name:<32}  {o.max_abs_diff:>11.4g}  {o.mean_abs_diff:>11.4g}  {agree}")
        return "\n".join(lines)


def _model_file(path: Path) -> Path:
    """A model file, or the only model file in a version directory."""
    if path.is_dir():
        found = [path / name for name in MODEL_FILES if (path / name).is_file()]
        if len(found) != 1:
            raise InsightError(
                f"{path}: expected one of {', '.join(MODEL_FILES)} in the directory, "
                f"found {len(found)}"
            )
        return found[0]
    if not path.is_file():
        raise InsightError(f"{path}: no such model file")
    return path


def _runtime(path: Path, device: str) -> tuple[Runtime, ModelConfig]:
    config = model_config_for(path)
    if path.name not in MODEL_FILES and config.runtime is None:
        kind = "onnx" if path.suffix == ".onnx" else "torch"
        config = config.model_copy(update={"runtime": kind})
    return create_runtime(path.stem, path, config, device, ThreadsConfig()), config


def _fit_data(data: np.ndarray, runtime: Runtime, path: Path, data_path: Path) -> Tensors:
    inputs = runtime.signature.inputs
    if len(inputs) != 1:
        raise DataMismatchError(
            f"{path}: compare needs single-input models; this one takes "
            + ", ".join(f"{s.name} {s.describe()}" for s in inputs)
        )
    spec = inputs[0]
    want = spec.shape[1:] if spec.batched else spec.shape
    ok = data.ndim == len(want) + 1 and all(
        w in (-1, g) for w, g in zip(want, data.shape[1:], strict=True)
    )
    if not ok:
        raise DataMismatchError(
            f"data {data_path} has shape {list(data.shape)}, but model {path} takes input "
            f"{spec.name!r} {spec.describe()} (rows of {list(want)})"
        )
    return {spec.name: np.ascontiguousarray(data, dtype=spec.dtype)}


async def _run(runtime: Runtime, inputs: Tensors, batch: int) -> tuple[Tensors, float]:
    """Every row through the model in batches; outputs concatenated, seconds per row."""
    (name, rows), *_ = inputs.items()
    total = rows.shape[0]
    await runtime.predict({name: rows[: min(batch, total)]})  # warm-up
    chunks: list[Tensors] = []
    started = time.perf_counter()
    for start in range(0, total, batch):
        chunks.append(await runtime.predict({name: rows[start : start + batch]}))
    elapsed = time.perf_counter() - started
    merged = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
    return merged, elapsed / max(total, 1)


def _pairs(a: Tensors, b: Tensors, path_a: Path, path_b: Path) -> list[tuple[str, str]]:
    common = [n for n in a if n in b]
    if common:
        return [(n, n) for n in common]
    if len(a) != len(b):
        raise DataMismatchError(
            f"model {path_a} has outputs {', '.join(a)} and model {path_b} has "
            f"{', '.join(b)}: no common name and different counts, so they cannot be paired"
        )
    return list(zip(a, b, strict=True))


def _is_scores(value: np.ndarray) -> bool:
    return value.ndim == 2 and value.shape[1] >= 2 and value.dtype.kind == "f"


def _score_output(config: ModelConfig, outputs: Tensors) -> str | None:
    classification = config.monitoring.classification
    if classification is not None and classification.output in outputs:
        return classification.output
    return next((n for n, v in outputs.items() if _is_scores(v)), None)


def _label_metrics(
    labels: np.ndarray | None, config: ModelConfig, outputs: Tensors, path: Path, labels_path: Path
) -> tuple[float | None, float | None]:
    if labels is None:
        return None, None
    rows = next(iter(outputs.values())).shape[0]
    if labels.shape[0] != rows:
        raise DataMismatchError(
            f"labels {labels_path} have {labels.shape[0]} rows (shape {list(labels.shape)}), "
            f"but the data has {rows} rows"
        )
    scores = _score_output(config, outputs)
    regression = config.monitoring.regression
    if scores is not None and regression is None:
        predicted = outputs[scores].argmax(axis=1)
        return float(np.mean(predicted == labels.reshape(rows, -1)[:, 0])), None
    name = regression.outputs[0] if regression is not None else next(iter(outputs))
    value = outputs[name].reshape(rows, -1).astype(np.float64)
    if value.shape[1] != labels.reshape(rows, -1).shape[1]:
        raise DataMismatchError(
            f"labels {labels_path} have shape {list(labels.shape)}, but model {path}'s output "
            f"{name!r} has shape {list(outputs[name].shape)}"
        )
    return None, float(np.mean(np.abs(value - labels.reshape(rows, -1))))


def compare(
    a: Path,
    b: Path,
    data: Path,
    labels: Path | None = None,
    *,
    batch_size: int = 256,
    device: str = "cpu",
) -> CompareReport:
    """Run both models on ``data`` and report how they differ."""
    return asyncio.run(_compare(a, b, data, labels, batch_size, device))


async def _compare(
    a: Path, b: Path, data_path: Path, labels_path: Path | None, batch: int, device: str
) -> CompareReport:
    path_a, path_b = _model_file(a), _model_file(b)
    data = load_array(data_path)
    labels = load_array(labels_path) if labels_path is not None else None
    runtime_a, config_a = _runtime(path_a, device)
    runtime_b, config_b = _runtime(path_b, device)
    await runtime_a.load()
    try:
        await runtime_b.load()
        try:
            inputs_a = _fit_data(data, runtime_a, path_a, data_path)
            inputs_b = _fit_data(data, runtime_b, path_b, data_path)
            out_a, per_row_a = await _run(runtime_a, inputs_a, batch)
            out_b, per_row_b = await _run(runtime_b, inputs_b, batch)
            info_a, info_b = runtime_a.info, runtime_b.info
        finally:
            await runtime_b.unload()
    finally:
        await runtime_a.unload()

    comparisons = []
    for name_a, name_b in _pairs(out_a, out_b, path_a, path_b):
        va, vb = out_a[name_a], out_b[name_b]
        if va.shape != vb.shape:
            raise DataMismatchError(
                f"output {name_a!r} of {path_a} has shape {list(va.shape)}, output {name_b!r} "
                f"of {path_b} has shape {list(vb.shape)}"
            )
        diff = np.abs(va.astype(np.float64) - vb.astype(np.float64))
        agreement = (
            float(np.mean(va.argmax(axis=1) == vb.argmax(axis=1)))
            if _is_scores(va) and _is_scores(vb)
            else None
        )
        comparisons.append(
            OutputComparison(
                name_a,
                name_b,
                float(diff.max(initial=0.0)),
                float(diff.mean()) if diff.size else 0.0,
                agreement,
            )
        )
    acc_a, mae_a = _label_metrics(labels, config_a, out_a, path_a, labels_path or data_path)
    acc_b, mae_b = _label_metrics(labels, config_b, out_b, path_b, labels_path or data_path)
    return CompareReport(
        rows=int(data.shape[0]),
        a=ModelSummary(
            path_a,
            info_a.runtime,
            info_a.file_size_bytes,
            info_a.parameters,
            per_row_a,
            acc_a,
            mae_a,
        ),
        b=ModelSummary(
            path_b,
            info_b.runtime,
            info_b.file_size_bytes,
            info_b.parameters,
            per_row_b,
            acc_b,
            mae_b,
        ),
        outputs=tuple(comparisons),
    )
