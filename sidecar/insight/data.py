"""Reading arrays from files: reference data, compare's ``--data`` and ``--labels``.

``.npy`` (loaded without pickles), ``.npz`` (holding exactly one array) and
``.csv`` (numbers only, comma-separated, an optional header line) are read;
anything else is an error naming the file and the formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sidecar.insight.errors import DataFileError

FORMATS = (".npy", ".npz", ".csv")


def load_array(path: Path) -> np.ndarray:
    """The array stored in ``path`` (.npy, single-array .npz, or numeric .csv)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataFileError(f"{path}: unsupported data file; use one of {', '.join(FORMATS)}")
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if len(names) != 1:
                    raise DataFileError(
                        f"{path}: holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                        "save exactly one"
                    )
                return np.asarray(archive[names[0]])
        return _load_csv(path)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise DataFileError(f"{path}: not a numeric array: {exc}") from exc


def _load_csv(path: Path) -> np.ndarray:
    with path.open() as handle:
        first = handle.readline()
    try:
        [float(v) for v in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    data = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
    return data[:, 0] if data.shape[1] == 1 else data
