"""Chi-squared tests of homogeneity: categorical counts and counts over fixed bins.

Two samples (reference and window) are compared on a 2 x K table of counts.
The statistic is Pearson's ``sum (O - E)^2 / E`` with ``E`` from the row and
column totals, ``K - 1`` degrees of freedom and no continuity correction
(equal to ``scipy.stats.chi2_contingency(table, correction=False)``).

The chi-squared approximation needs every expected count to be at least 5.
Sparse cells are therefore merged *before* the test, by two documented rules:

* **Categories (unordered)** — :func:`merge_sparse_categories`: categories
  with no observation in either sample are dropped; then, while the smallest
  expected count of the table is below ``min_expected``, the category with the
  smallest pooled count is merged into the category with the next-smallest
  pooled count. Pooled (column) totals are what the homogeneity test
  conditions on, so merging on them keeps the test valid.
* **Ordered bins** — :func:`merge_sparse_bins`: adjacent bins are merged using
  the *reference* proportions only: while some bin's proportion times
  ``min(n_reference, n_window)`` is below ``min_expected``, the smallest bin is
  merged with its smaller neighbour. The rule never looks at the window, so it
  cannot bias the test toward or away from drift.

A table left with fewer than two bins has no test: the result carries a
``skipped_reason`` and ``p_value`` is ``None`` (never NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors._rows import FloatArray, IntArray
from detectors.errors import InvalidInputError

__all__ = [
    "MIN_EXPECTED",
    "Chi2Result",
    "bin_counts_sorted",
    "binned_chi2_rows",
    "chi2_homogeneity",
    "merge_adjacent",
    "merge_sparse_bins",
    "merge_sparse_categories",
    "quantile_bin_edges",
    "quantile_levels",
    "unique_edges",
]

#: Smallest expected count per cell for which the chi-squared approximation is trusted.
MIN_EXPECTED = 5.0


@dataclass(frozen=True, slots=True)
class Chi2Result:
    """A chi-squared test of homogeneity on a 2 x K table (after merging sparse cells).

    ``groups`` lists, for each bin that was tested, the indices of the input
    categories merged into it. ``p_value`` is ``None`` exactly when
    ``skipped_reason`` is set.
    """

    statistic: float | None
    dof: int
    p_value: float | None
    n_bins: int
    groups: tuple[tuple[int, ...], ...]
    skipped_reason: str | None = None


def chi2_homogeneity(
    reference_counts: npt.ArrayLike,
    window_counts: npt.ArrayLike,
    min_expected: float = MIN_EXPECTED,
) -> Chi2Result:
    """Chi-squared homogeneity test of two count vectors over the same K categories.

    Sparse categories are merged first (see the module docstring); the test is
    skipped, with a reason, when either sample is empty or fewer than two
    categories remain.
    """
    ref = _as_counts(reference_counts, "reference_counts")
    win = _as_counts(window_counts, "window_counts")
    if ref.shape != win.shape:
        raise InvalidInputError(
            f"reference_counts and window_counts need the same categories, "
            f"got shapes {ref.shape} and {win.shape}"
        )
    n_ref, n_win = int(ref.sum()), int(win.sum())
    if n_ref == 0 or n_win == 0:
        which = "reference" if n_ref == 0 else "window"
        return _skipped(f"the {which} has no observations")
    groups = merge_sparse_categories(ref, win, min_expected)
    if len(groups) < 2:
        return _skipped(
            f"fewer than 2 categories left after merging sparse ones "
            f"(expected count >= {min_expected:g} needed)",
            groups,
        )
    r = np.array([ref[list(g)].sum() for g in groups], dtype=np.float64)
    w = np.array([win[list(g)].sum() for g in groups], dtype=np.float64)
    stat, p = _pearson_2xk(r[None, :], w[None, :])
    return Chi2Result(
        statistic=float(stat[0]),
        dof=len(groups) - 1,
        p_value=float(p[0]),
        n_bins=len(groups),
        groups=groups,
    )


def merge_sparse_categories(
    reference_counts: IntArray, window_counts: IntArray, min_expected: float = MIN_EXPECTED
) -> tuple[tuple[int, ...], ...]:
    """Group unordered categories so every expected count of the 2 x K table is >= min_expected.

    Returns the groups of input indices, ordered by their smallest index.
    Categories empty in both samples are dropped.
    """
    ref = np.asarray(reference_counts, dtype=np.int64)
    win = np.asarray(window_counts, dtype=np.int64)
    total = ref + win
    n_small_row = min(int(ref.sum()), int(win.sum()))
    n_all = int(total.sum())
    groups: list[list[int]] = [[k] for k in np.flatnonzero(total > 0).tolist()]
    sizes: list[int] = [int(total[g[0]]) for g in groups]
    # The smallest expected count of the table is n_small_row * min(sizes) / n_all.
    while len(groups) >= 2 and n_small_row * min(sizes) < min_expected * n_all:
        order = sorted(range(len(groups)), key=lambda k: (sizes[k], groups[k][0]))
        smallest, next_smallest = order[0], order[1]
        groups[next_smallest].extend(groups[smallest])
        sizes[next_smallest] += sizes[smallest]
        del groups[smallest], sizes[smallest]
    merged = sorted((tuple(sorted(g)) for g in groups), key=lambda g: g[0])
    return tuple(merged)


def merge_adjacent(sizes: Sequence[float], keep_merging: Callable[[list[float]], bool]) -> IntArray:
    """Merge the smallest ordered bin into its smaller neighbour while ``keep_merging(sizes)``.

    Returns, for every input bin, the index of the merged bin it ends in
    (non-decreasing, starting at 0). Ties go to the first smallest bin and,
    between neighbours of equal size, to the left one.
    """
    current = [float(x) for x in sizes]
    members: list[list[int]] = [[k] for k in range(len(current))]
    while len(current) >= 2 and keep_merging(current):
        k = min(range(len(current)), key=current.__getitem__)
        if k == 0:
            nb = 1
        elif k == len(current) - 1:
            nb = k - 1
        else:
            nb = k - 1 if current[k - 1] <= current[k + 1] else k + 1
        lo, hi = min(k, nb), max(k, nb)
        current[lo] += current[hi]
        members[lo].extend(members[hi])
        del current[hi], members[hi]
    mapping = np.empty(len(sizes), dtype=np.int64)
    for new_index, group in enumerate(members):
        mapping[group] = new_index
    return mapping


def merge_sparse_bins(
    reference_counts: IntArray, n_window: int, min_expected: float = MIN_EXPECTED
) -> IntArray:
    """Merge adjacent ordered bins until each holds >= min_expected under the smaller sample.

    Uses only the reference counts (the window is not looked at), so the merge
    cannot bias the test. Returns, for every input bin, the index of the
    merged bin it belongs to (non-decreasing, starting at 0).
    """
    ref = np.asarray(reference_counts, dtype=np.float64)
    n_ref = float(ref.sum())
    if n_ref <= 0:
        return np.zeros(ref.shape[0], dtype=np.int64)
    scale = min(n_ref, float(n_window)) / n_ref
    return merge_adjacent(list(ref), lambda sizes: min(sizes) * scale < min_expected)


def quantile_bin_edges(sorted_values: FloatArray, max_bins: int) -> FloatArray:
    """Interior edges of (at most) ``max_bins`` equiprobable bins of a sorted finite sample.

    Bin ``k`` is ``[edges[k-1], edges[k])`` with open ends at -inf and +inf.
    Edges are the sample quantiles at ``k / max_bins``, made unique, so heavy
    ties give fewer (never empty-by-construction) bins. A sample with a single
    distinct value gets no edges, i.e. one bin.
    """
    if max_bins < 1:
        raise InvalidInputError(f"max_bins must be >= 1, got {max_bins}")
    if sorted_values.size == 0 or max_bins == 1:
        return np.empty(0, dtype=np.float64)
    return unique_edges(np.quantile(sorted_values, quantile_levels(max_bins)), sorted_values[0])


def quantile_levels(max_bins: int) -> FloatArray:
    """The probabilities ``k / max_bins`` (k = 1 .. max_bins - 1) of the interior bin edges."""
    levels: FloatArray = np.arange(1, max_bins, dtype=np.float64) / max_bins
    return levels


def unique_edges(quantiles: FloatArray, minimum: float) -> FloatArray:
    """Sorted unique quantile values above the sample minimum (an edge at it leaves bin 0 empty)."""
    edges = np.unique(quantiles)
    result: FloatArray = edges[edges > minimum].astype(np.float64)
    return result


def bin_counts_sorted(sorted_values: FloatArray, edges: FloatArray) -> IntArray:
    """Counts of a sorted finite sample over the bins defined by ``edges`` (len(edges) + 1 bins)."""
    cum = np.searchsorted(sorted_values, edges, side="left")
    bounds = np.concatenate([[0], cum, [sorted_values.shape[0]]])
    counts: IntArray = np.diff(bounds).astype(np.int64)
    return counts


def binned_chi2_rows(
    reference_counts: FloatArray, window_counts: FloatArray, n_bins: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Vectorised chi-squared homogeneity over padded ``(F, K_max)`` bin counts.

    Row ``f`` uses its first ``n_bins[f]`` bins (the rest must be zero);
    bins empty in both samples are ignored. Returns ``(statistic, p)``;
    rows with fewer than two bins get NaN and must be skipped by the caller.
    """
    stat, _ = _pearson_2xk(reference_counts, window_counts)
    dof = n_bins.astype(np.float64) - 1.0
    valid = dof >= 1
    with np.errstate(invalid="ignore"):
        p = np.where(valid, special.chdtrc(np.where(valid, dof, 1.0), stat), np.nan)
    return np.where(valid, stat, np.nan), p


# --------------------------------------------------------------------------- helpers


def _pearson_2xk(ref: FloatArray, win: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Pearson statistic and p-value per row of a batch of 2 x K tables."""
    ref = np.asarray(ref, dtype=np.float64)
    win = np.asarray(win, dtype=np.float64)
    n_r = ref.sum(axis=1, keepdims=True)
    n_w = win.sum(axis=1, keepdims=True)
    n = n_r + n_w
    col = ref + win
    used = col > 0
    safe_col = np.where(used, col, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        e_r = n_r * safe_col / n
        e_w = n_w * safe_col / n
        terms = (ref - e_r) ** 2 / e_r + (win - e_w) ** 2 / e_w
    stat = np.where(used, terms, 0.0).sum(axis=1)
    dof = used.sum(axis=1) - 1
    with np.errstate(invalid="ignore"):
        p = np.where(dof >= 1, special.chdtrc(np.maximum(dof, 1), stat), np.nan)
    return stat, p


def _as_counts(x: npt.ArrayLike, name: str) -> IntArray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError(f"{name} must be a non-empty 1-D array of counts, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise InvalidInputError(f"{name} must hold non-negative whole counts")
    counts: IntArray = arr.astype(np.int64)
    return counts


def _skipped(reason: str, groups: tuple[tuple[int, ...], ...] = ()) -> Chi2Result:
    return Chi2Result(
        statistic=None,
        dof=0,
        p_value=None,
        n_bins=len(groups),
        groups=groups,
        skipped_reason=reason,
    )
