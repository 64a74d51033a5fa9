"""How tensors become drift features: named float64 columns, one row per batch row.

A :class:`FeatureMap` is a list of :class:`Columns`, each reading one tensor
of a request (an input, or an output) and turning its rows into a few
columns: every element (``Flatten``), per-channel statistics or a seeded
random projection (high-dimensional inputs), or a classifier's predicted
class and score columns (``ClassScores``). ``FeatureMap.rows`` concatenates
the tensors of many requests first and transforms each once, so the drift
worker's cost is a handful of numpy calls per drain, however many requests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from detectors.reduction import RandomProjection, channel_stats, channel_stats_names
from sidecar.config import DriftMonitoringConfig, MonitoringConfig
from sidecar.errors import ModelLoadError
from sidecar.types import ModelSignature, TensorSpec

#: Feature name of a classifier's predicted class (argmax of its scores): categorical.
PREDICTED_CLASS = "predicted_class"

Floats = np.ndarray


class Columns(Protocol):
    """Turns one tensor's rows into named columns."""

    @property
    def tensor(self) -> str:
        """The input or output this reads."""
        ...

    @property
    def names(self) -> tuple[str, ...]:
        """One name per column produced."""
        ...

    @property
    def categorical(self) -> tuple[bool, ...]:
        """Per column: holds category codes (tested with chi-squared only)."""
        ...

    def apply(self, x: np.ndarray) -> Floats:
        """``(n, ...)`` → ``(n, len(names))`` float64."""
        ...


def element_names(tensor: str, row_shape: tuple[int, ...]) -> tuple[str, ...]:
    """``tensor`` for a one-element row, else ``tensor[i]`` by flat index."""
    size = int(np.prod(row_shape, dtype=np.int64))
    if size == 1:
        return (tensor,)
    return tuple(f"{tensor}[{i}]" for i in range(size))


@dataclass(frozen=True)
class Flatten:
    """Every element of a row is a feature."""

    tensor: str
    names: tuple[str, ...]
    categorical: tuple[bool, ...]

    def apply(self, x: np.ndarray) -> Floats:
        """Rows flattened, as float64."""
        return np.asarray(x, dtype=np.float64).reshape(x.shape[0], len(self.names))


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of ``(n, C, ...)`` rows."""

    tensor: str
    names: tuple[str, ...]
    categorical: tuple[bool, ...]

    def apply(self, x: np.ndarray) -> Floats:
        """``(n, 2C)``: channel means, then channel standard deviations."""
        return channel_stats(x)


@dataclass(frozen=True)
class Projection:
    """A fixed seeded Gaussian random projection of each flattened row."""

    tensor: str
    names: tuple[str, ...]
    categorical: tuple[bool, ...]
    projection: RandomProjection = field(repr=False)

    def apply(self, x: np.ndarray) -> Floats:
        """``(n, k)``."""
        return self.projection.apply(x)


@dataclass(frozen=True)
class ClassScores:
    """A classifier's score tensor: the predicted class (categorical) and each class's score.

    A row whose scores are not all finite has no predicted class (NaN, excluded
    by the tests) but keeps its finite scores.
    """

    tensor: str
    names: tuple[str, ...]
    categorical: tuple[bool, ...]

    def apply(self, x: np.ndarray) -> Floats:
        """``(n, 1 + K)``: predicted class index, then the K scores."""
        k = len(self.names) - 1
        scores = np.asarray(x, dtype=np.float64).reshape(x.shape[0], k)
        out = np.empty((scores.shape[0], k + 1), dtype=np.float64)
        out[:, 1:] = scores
        finite = np.isfinite(scores).all(axis=1)
        out[:, 0] = np.where(finite, scores.argmax(axis=1), np.nan)
        return out


class FeatureMap:
    """Named features of one scope (inputs or outputs) and how to compute them."""

    def __init__(self, columns: Sequence[Columns]) -> None:
        self.columns = tuple(columns)
        self.names = tuple(n for c in self.columns for n in c.names)
        self.categorical = tuple(f for c in self.columns for f in c.categorical)
        self.tensors = tuple(dict.fromkeys(c.tensor for c in self.columns))

    @property
    def width(self) -> int:
        """Number of features."""
        return len(self.names)

    def rows(self, batch: Sequence[Mapping[str, np.ndarray]]) -> Floats:
        """The features of several requests' tensors, stacked: ``(total rows, width)``."""
        joined: dict[str, np.ndarray] = {}
        for name in self.tensors:
            parts = [t[name] for t in batch]
            joined[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        blocks = [c.apply(joined[c.tensor]) for c in self.columns]
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


# --------------------------------------------------------------------------- building


def _where(model: str, version: str) -> str:
    return f"model {model!r} version {version}: monitoring.drift"


def input_features(
    model: str,
    version: str,
    config: DriftMonitoringConfig,
    inputs: Sequence[TensorSpec],
    row_shapes: Mapping[str, tuple[int, ...]],
) -> FeatureMap:
    """The input features: each watched input by ``config.reduction``, named by config."""
    where = _where(model, version)
    unknown = set(config.feature_names) - {s.name for s in inputs}
    if unknown:
        raise ModelLoadError(
            f"{where}.feature_names names {sorted(unknown)}, not watched inputs; watched: "
            f"{', '.join(s.name for s in inputs)}"
        )
    reduction = config.reduction
    columns: list[Columns] = []
    for index, spec in enumerate(inputs):
        shape = row_shapes[spec.name]
        size = int(np.prod(shape, dtype=np.int64))
        given = config.feature_names.get(spec.name)
        if reduction.method == "none":
            names = given if given is not None else element_names(spec.name, shape)
            if len(names) != size:
                raise ModelLoadError(
                    f"{where}.feature_names[{spec.name!r}] has {len(names)} names but a row of "
                    f"input {spec.name!r} has {size} elements (shape {list(shape)})"
                )
            flags = tuple(n in config.categorical for n in names)
            columns.append(Flatten(spec.name, tuple(names), flags))
        elif given is not None:
            raise ModelLoadError(
                f"{where}.feature_names[{spec.name!r}]: names only apply with reduction "
                f"'none'; reduction {reduction.method!r} names its own features"
            )
        elif reduction.method == "channel_stats":
            if len(shape) < 2:
                raise ModelLoadError(
                    f"{where}.reduction channel_stats needs (N, C, ...) inputs; input "
                    f"{spec.name!r} has rows of shape {list(shape)}"
                )
            stats_names = tuple(f"{spec.name}:{n}" for n in channel_stats_names(shape[0]))
            columns.append(ChannelStats(spec.name, stats_names, (False,) * len(stats_names)))
        else:
            rng = np.random.default_rng([reduction.seed, index])
            projection = RandomProjection.create(size, reduction.k, rng)
            proj_names = tuple(f"{spec.name}:{n}" for n in projection.names())
            columns.append(
                Projection(spec.name, proj_names, (False,) * len(proj_names), projection)
            )
    features = FeatureMap(columns)
    unknown_categorical = [n for n in config.categorical if n not in features.names]
    if unknown_categorical:
        raise ModelLoadError(
            f"{where}.categorical names {unknown_categorical}, not input features (categorical "
            f"needs reduction 'none'); features are named like {', '.join(features.names[:3])}"
        )
    return _finish(features, config, where, "inputs")


def output_features(
    model: str,
    version: str,
    config: DriftMonitoringConfig,
    monitoring: MonitoringConfig,
    signature: ModelSignature,
    row_shapes: Mapping[str, tuple[int, ...]],
) -> FeatureMap | None:
    """The output features by the model's task; None when there is nothing to watch.

    Classification: the predicted class (categorical) and every class's score.
    Regression: the regression outputs. No task: every floating-point output.
    """
    where = _where(model, version)
    columns: list[Columns] = []
    if monitoring.classification is not None:
        cls = monitoring.classification
        names = (PREDICTED_CLASS, *(f"{cls.output}[{c}]" for c in cls.class_names))
        columns.append(ClassScores(cls.output, names, (True,) + (False,) * (len(names) - 1)))
    else:
        if monitoring.regression is not None:
            wanted = list(monitoring.regression.outputs)
        else:
            wanted = [s.name for s in signature.outputs if s.dtype.kind == "f"]
        for name in wanted:
            shape = row_shapes[name]
            flat = element_names(name, shape)
            columns.append(Flatten(name, flat, (False,) * len(flat)))
    if not columns:
        return None
    return _finish(FeatureMap(columns), config, where, "outputs")


def _finish(
    features: FeatureMap, config: DriftMonitoringConfig, where: str, scope: str
) -> FeatureMap:
    repeated = sorted(n for n, count in Counter(features.names).items() if count > 1)
    if repeated:
        raise ModelLoadError(f"{where}: feature names repeat in {scope}: {repeated[:5]}")
    if features.width > config.max_features:
        raise ModelLoadError(
            f"{where}: {features.width} {scope} features, more than max_features="
            f"{config.max_features}; configure a reduction (channel_stats or random_projection) "
            "or watch fewer inputs"
        )
    return features
