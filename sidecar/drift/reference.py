"""Reference files: read, check against the model's inputs, and write captured rows.

Formats (``monitoring.drift.reference``):

* ``.npy`` — one array ``(N, *row shape)`` for a model with one watched input;
* ``.npz`` — one array per input, keyed by input name (every watched input;
  to monitor outputs, every model input);
* ``.csv`` — one watched input, one row per line, ``N x elements`` numbers
  (``nan`` allowed), with an optional header row naming the columns.

A reference whose shape or dtype does not fit the model's input is a load
error that names both. Reading and checking touch no model; they run off the
event loop.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidecar.errors import ModelLoadError
from sidecar.types import TensorSpec

#: Key of the single array of a .npy or .csv file, before it is bound to an input.
SINGLE = ""


@dataclass(frozen=True)
class ReferenceFile:
    """Arrays read from a reference file (not yet checked against a model)."""

    path: Path
    arrays: Mapping[str, np.ndarray]  # input name → rows; SINGLE for .npy / .csv
    header: tuple[str, ...] | None = None  # a .csv file's column names


def read_reference(path: Path) -> ReferenceFile:
    """Read a .npy, .npz or .csv reference; ModelLoadError when it cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return ReferenceFile(path, {SINGLE: np.load(path, allow_pickle=False)})
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return ReferenceFile(path, {k: archive[k] for k in archive.files})
        return _read_csv(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"drift reference {path}: cannot read it: {exc}") from exc


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> ReferenceFile:
    with path.open(newline="") as handle:
        first = next(csv.reader(handle), None)
    if first is None:
        raise ValueError("the file is empty")
    header = None if all(_is_number(c) for c in first) else tuple(c.strip() for c in first)
    data = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2, dtype=np.float64)
    if header is not None and data.shape[1] != len(header):
        raise ValueError(f"{len(header)} header columns but {data.shape[1]} values per row")
    return ReferenceFile(path, {SINGLE: data}, header)


def _fits(shape: Sequence[int], spec_row: Sequence[int]) -> bool:
    return len(shape) == len(spec_row) and all(
        want in (-1, got) for got, want in zip(shape, spec_row, strict=True)
    )


def _dtype_fits(dtype: np.dtype, spec: TensorSpec) -> bool:
    """Reference values the input can hold: same kind, or integers for a float input."""
    want = spec.dtype
    if want.kind == "b":
        return dtype.kind == "b"
    if want.kind == "f":
        return dtype.kind in "fiub"
    return dtype.kind in "iub"


def bind_reference(
    where: str,
    ref: ReferenceFile,
    watched: Sequence[TensorSpec],
    every_input: Sequence[TensorSpec],
) -> dict[str, np.ndarray]:
    """The reference rows per input, checked against the model's input specs.

    Returns the watched inputs and whichever other model inputs the file has.
    Raises ModelLoadError naming the file's shape and dtype and the input's.
    """
    arrays = dict(ref.arrays)
    if SINGLE in arrays:
        if len(watched) != 1:
            raise ModelLoadError(
                f"{where}: reference {ref.path} holds one array, but {len(watched)} inputs are "
                f"watched ({', '.join(s.name for s in watched)}); use a .npz keyed by input name"
            )
        array = arrays.pop(SINGLE)
        spec = watched[0]
        if ref.path.suffix.lower() == ".csv":
            array = _csv_rows(where, ref.path, array, spec)
        arrays[spec.name] = array
    else:
        missing = [s.name for s in watched if s.name not in arrays]
        if missing:
            raise ModelLoadError(
                f"{where}: reference {ref.path} has no array for watched input(s) {missing}; "
                f"it has {sorted(arrays)}"
            )
    specs = {s.name: s for s in every_input}
    rows: int | None = None
    bound: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        found = specs.get(name)
        if found is None:
            continue  # a key that is no model input: ignored
        spec = found
        row = spec.shape[1:] if spec.shape else ()
        if array.ndim < 1 or not _fits(array.shape[1:], row) or not _dtype_fits(array.dtype, spec):
            raise ModelLoadError(
                f"{where}: reference {ref.path} has {name!r} of shape {list(array.shape)} and "
                f"dtype {array.dtype}, but the model's input {name!r} is {spec.describe()}: "
                f"expected [N, {', '.join(str(d) for d in row)}] of {spec.datatype}"
            )
        if rows is not None and array.shape[0] != rows:
            raise ModelLoadError(
                f"{where}: reference {ref.path} arrays have different row counts "
                f"({rows} and {array.shape[0]} for {name!r})"
            )
        rows = int(array.shape[0])
        bound[name] = array
    if rows is not None and rows < 2:
        raise ModelLoadError(f"{where}: reference {ref.path} has {rows} rows; at least 2 needed")
    return bound


def _csv_rows(where: str, path: Path, data: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """CSV columns reshaped to the input's row shape and cast to its dtype."""
    row = spec.shape[1:] if spec.shape else ()
    size = int(np.prod(row, dtype=np.int64)) if -1 not in row else data.shape[1]
    if (-1 in row and len(row) > 1) or data.shape[1] != size:
        raise ModelLoadError(
            f"{where}: reference {path} has {data.shape[1]} columns, but the model's input "
            f"{spec.name!r} is {spec.describe()} ({size} elements per row)"
        )
    shaped = data.reshape(data.shape[0], *[d if d != -1 else size for d in row])
    if spec.dtype.kind != "f":
        finite = np.isfinite(shaped)
        if not finite.all() or np.any(shaped != np.round(shaped)):
            raise ModelLoadError(
                f"{where}: reference {path} has non-integer values, but the model's input "
                f"{spec.name!r} is {spec.describe()}"
            )
    return shaped.astype(spec.dtype)


def write_reference(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write captured rows in ``path``'s format, atomically (a partial file is never left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if suffix == ".npz":
                np.savez(handle, **dict(arrays))  # type: ignore[arg-type]
            else:
                (array,) = arrays.values()
                if suffix == ".npy":
                    np.save(handle, array, allow_pickle=False)
                else:
                    np.savetxt(
                        handle, array.reshape(array.shape[0], -1), delimiter=",", fmt="%.17g"
                    )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
