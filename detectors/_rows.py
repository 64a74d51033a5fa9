"""Row-wise helpers shared by the rank-based tests (private).

Everything here works on *feature-major* arrays: one row per feature, shape
``(F, n)``, each row sorted ascending. Merging a sorted reference row with a
sorted window row is one stable ``argsort`` over both rows at once (timsort
merges the two runs in linear time), which is what makes KS and
Cramér-von Mises cheap across many features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class MergedRows:
    """Two sorted samples per row merged into one sorted pooled sample.

    ``values[f]`` is the pooled sample of feature ``f`` in ascending order,
    ``from_a[f, k]`` says whether position ``k`` came from the first sample,
    and ``last_of_tie[f, k]`` marks the last position of each run of equal
    values (where a right-continuous ECDF is evaluated).
    """

    values: FloatArray
    from_a: BoolArray
    last_of_tie: BoolArray
    n_a: int
    n_b: int


def merge_sorted_rows(a_sorted: FloatArray, b_sorted: FloatArray) -> MergedRows:
    """Merge row-sorted ``a`` (F, n_a) and ``b`` (F, n_b); equal values keep ``a`` first."""
    n_f, n_a = a_sorted.shape
    n_b = b_sorted.shape[1]
    pooled = np.concatenate([a_sorted, b_sorted], axis=1)
    order = np.argsort(pooled, axis=1, kind="stable")
    values = np.take_along_axis(pooled, order, axis=1)
    from_a = order < n_a
    last = np.ones((n_f, n_a + n_b), dtype=np.bool_)
    np.not_equal(values[:, 1:], values[:, :-1], out=last[:, :-1])
    return MergedRows(values=values, from_a=from_a, last_of_tie=last, n_a=n_a, n_b=n_b)


def tie_group_bounds(values: FloatArray, last_of_tie: BoolArray) -> tuple[IntArray, IntArray]:
    """For every position of row-sorted ``values``, the [start, end) of its run of equal values."""
    n_f, n = values.shape
    idx = np.broadcast_to(np.arange(n, dtype=np.int64), (n_f, n))
    first = np.ones((n_f, n), dtype=np.bool_)
    first[:, 1:] = last_of_tie[:, :-1]
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
    # end (exclusive) = one past the last position of the run: reverse running minimum.
    end_at_last = np.where(last_of_tie, idx + 1, n)
    end = np.minimum.accumulate(end_at_last[:, ::-1], axis=1)[:, ::-1]
    return start, end


def sort_rows_with_nan_last(x: FloatArray) -> FloatArray:
    """Sort each row ascending; NaN (used to mark excluded values) sorts to the end."""
    return np.sort(x, axis=1)
