"""Reductions that turn high-dimensional inputs into a few testable features.

Testing every pixel of an image or every coordinate of an embedding is both
slow and statistically wasteful (the multiple-testing correction eats the
power). Two reductions are offered, plus a cap:

* :func:`channel_stats` — per-channel mean and standard deviation of
  ``(N, C, ...)`` tensors (images: brightness and contrast per channel).
* :class:`RandomProjection` — a fixed Gaussian random projection of the
  flattened rows to ``k`` dimensions, drawn once from an explicit
  ``numpy.random.Generator`` so that the reference and every window are
  projected by the same matrix (Johnson-Lindenstrauss: distances, hence
  distribution shifts, are approximately preserved).
* :func:`cap_features` — keep at most ``max_features`` features, so the number
  of exported time series stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detectors._rows import FloatArray
from detectors.errors import InvalidInputError, ShapeMismatchError

__all__ = ["RandomProjection", "cap_features", "channel_stats", "channel_stats_names"]


def channel_stats(x: np.ndarray) -> FloatArray:
    """Per-channel mean and std (ddof=0) of ``(N, C, ...)``: returns ``(N, 2C)``.

    Columns are ``[mean_0, ..., mean_{C-1}, std_0, ..., std_{C-1}]``.
    Non-finite values propagate (the detector excludes them per feature).
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 3:
        raise InvalidInputError(
            f"channel_stats expects (N, C, ...) with rank >= 3, got {arr.shape}"
        )
    flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
    result: FloatArray = np.concatenate([flat.mean(axis=2), flat.std(axis=2)], axis=1)
    return result


def channel_stats_names(n_channels: int, prefix: str = "channel") -> list[str]:
    """Feature names matching :func:`channel_stats` columns."""
    return [f"{prefix}{c}_mean" for c in range(n_channels)] + [
        f"{prefix}{c}_std" for c in range(n_channels)
    ]


@dataclass(frozen=True, slots=True, eq=False)
class RandomProjection:
    """A fixed ``(d_in, k)`` Gaussian projection matrix with entries N(0, 1/k)."""

    matrix: FloatArray

    @classmethod
    def create(cls, d_in: int, k: int, rng: np.random.Generator) -> RandomProjection:
        """Draw the matrix from ``rng``; the same seed gives the same projection."""
        if d_in < 1 or k < 1:
            raise InvalidInputError(f"d_in and k must be positive, got {d_in} and {k}")
        matrix = rng.standard_normal((d_in, k)) / np.sqrt(k)
        matrix.setflags(write=False)
        return cls(matrix=matrix)

    @property
    def d_in(self) -> int:
        """Number of input dimensions (flattened row length)."""
        return int(self.matrix.shape[0])

    @property
    def k(self) -> int:
        """Number of output dimensions."""
        return int(self.matrix.shape[1])

    def apply(self, x: np.ndarray) -> FloatArray:
        """Project ``(N, ...)``, flattening each row to ``d_in`` values: returns ``(N, k)``."""
        arr = np.asarray(x, dtype=np.float64)
        flat = arr.reshape(arr.shape[0], -1) if arr.ndim >= 1 else arr
        if flat.ndim != 2 or flat.shape[1] != self.d_in:
            raise ShapeMismatchError(
                f"rows flatten to shape {flat.shape[1:]} but the projection expects "
                f"({self.d_in},); input shape {arr.shape}",
                expected=(self.d_in,),
                got=tuple(flat.shape[1:]),
            )
        result: FloatArray = flat @ self.matrix
        return result

    def names(self, prefix: str = "proj") -> list[str]:
        """Feature names for the projected columns."""
        return [f"{prefix}{i}" for i in range(self.k)]


def cap_features(names: Sequence[str], max_features: int) -> tuple[list[str], slice]:
    """Keep the first ``max_features`` features; returns the kept names and a column slice.

    The cap bounds the number of exported per-feature series (and label
    values in Prometheus). Features beyond the cap are not tested at all.
    """
    if max_features < 1:
        raise InvalidInputError(f"max_features must be >= 1, got {max_features}")
    kept = list(names[:max_features])
    return kept, slice(0, len(kept))
