"""Internal types that cross module boundaries: datatypes, tensor specs, signatures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: KServe v2 datatype name → little-endian numpy dtype.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_KIND: dict[tuple[str, int], str] = {(d.kind, d.itemsize): n for n, d in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    """The v2 datatype name of a numpy dtype; ValueError for unsupported ones."""
    name = _BY_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype")
    return name


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output: name, v2 datatype, shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        """The little-endian numpy dtype of this tensor."""
        return DATATYPES[self.datatype]

    @property
    def batched(self) -> bool:
        """True when the first dimension is dynamic (a batch of rows)."""
        return bool(self.shape) and self.shape[0] == -1

    def describe(self) -> str:
        """Human-readable form used in error messages, e.g. ``FP32[-1, 64]``."""
        return f"{self.datatype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a model takes and returns, as read from the file (and config overrides)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str

    def input(self, name: str) -> TensorSpec | None:
        """The input of that name, or None."""
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output of that name, or None."""
        return next((s for s in self.outputs if s.name == name), None)


#: A named set of tensors: what a runtime takes and returns.
Tensors = dict[str, np.ndarray]


class Prediction(NamedTuple):
    """What running one request gives back: its outputs and how long it queued."""

    outputs: Tensors
    queue_seconds: float = 0.0  # time waiting in the batcher before its batch ran
