"""Distances between a window and the reference: PSI and Wasserstein-1.

Neither is a hypothesis test (no p-value); they size a change for dashboards.

* **PSI** (population stability index) over the reference's quantile bins:
  ``sum_k (w_k - r_k) * ln(w_k / r_k)`` with ``r_k``, ``w_k`` the proportions
  in bin ``k``. An empty bin would make the log infinite, so both proportions
  are floored at ``epsilon`` (default 1e-4, i.e. 0.01 %; the floor adds at
  most ``K * epsilon * ln(1 / epsilon)`` ≈ 0.009 for 10 bins). Conventional
  reading: < 0.1 no change, 0.1-0.25 moderate, >= 0.25 major; the thresholds
  are parameters.
* **Wasserstein-1** between the two empirical distributions, divided by the
  reference's standard deviation so that it reads in reference sigmas
  (a pure mean shift of 0.1 sigma gives about 0.1). Equal to
  ``scipy.stats.wasserstein_distance(ref, window) / std(ref)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from detectors._rows import FloatArray, MergedRows, merge_sorted_rows
from detectors.errors import InvalidInputError

__all__ = [
    "PSI_EPSILON",
    "PsiLevel",
    "psi_from_counts",
    "psi_level",
    "wasserstein_columns",
    "wasserstein_merged",
    "wasserstein_rows",
]

#: Floor for bin proportions in PSI (empty bins would make it infinite).
PSI_EPSILON = 1e-4

PsiLevel = Literal["none", "moderate", "major"]


def psi_from_counts(
    reference_counts: FloatArray, window_counts: FloatArray, epsilon: float = PSI_EPSILON
) -> FloatArray:
    """PSI per row of padded ``(F, K)`` bin counts (padding bins are zero in both rows).

    Bins empty in both samples contribute nothing; otherwise proportions are
    floored at ``epsilon``. Rows whose reference or window total is zero get NaN
    and must be skipped by the caller.
    """
    if not 0 < epsilon < 1:
        raise InvalidInputError(f"epsilon must be in (0, 1), got {epsilon}")
    ref = np.atleast_2d(np.asarray(reference_counts, dtype=np.float64))
    win = np.atleast_2d(np.asarray(window_counts, dtype=np.float64))
    if ref.shape != win.shape:
        raise InvalidInputError(f"count shapes differ: {ref.shape} and {win.shape}")
    n_r = ref.sum(axis=1, keepdims=True)
    n_w = win.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.maximum(ref / n_r, epsilon)
        w = np.maximum(win / n_w, epsilon)
        terms = (w - r) * np.log(w / r)
    used = (ref + win) > 0
    psi: FloatArray = np.where(used, terms, 0.0).sum(axis=1)
    empty = (n_r[:, 0] <= 0) | (n_w[:, 0] <= 0)
    result: FloatArray = np.where(empty, np.nan, psi)
    return result


def psi_level(psi: float, thresholds: tuple[float, float] = (0.1, 0.25)) -> PsiLevel:
    """Classify a PSI value as "none", "moderate" or "major" by two increasing thresholds."""
    moderate, major = thresholds
    if not 0 <= moderate <= major:
        raise InvalidInputError(f"thresholds must satisfy 0 <= moderate <= major, got {thresholds}")
    if psi >= major:
        return "major"
    if psi >= moderate:
        return "moderate"
    return "none"


def wasserstein_rows(ref_sorted: FloatArray, win_sorted: FloatArray) -> FloatArray:
    """Wasserstein-1 distance per row of row-sorted finite ``(F, n_ref)`` and ``(F, n)``.

    The integral of |F_ref - F_win| is a sum over the pooled sorted sample:
    between consecutive pooled values both ECDFs are constant.
    """
    return wasserstein_merged(merge_sorted_rows(ref_sorted, win_sorted))


def wasserstein_merged(merged: MergedRows) -> FloatArray:
    """Wasserstein-1 distance per row from two samples already merged."""
    c_ref = np.cumsum(merged.from_a, axis=1)[:, :-1]
    c_win = np.arange(1, merged.n_a + merged.n_b, dtype=np.int64) - c_ref
    gaps = np.diff(merged.values, axis=1)
    dist: FloatArray = (np.abs(c_ref / merged.n_a - c_win / merged.n_b) * gaps).sum(axis=1)
    return dist


def wasserstein_columns(reference: FloatArray, window: FloatArray) -> FloatArray:
    """Wasserstein-1 distance per column, in units of the reference column's std (ddof=0).

    Both inputs are ``(n, F)`` and finite. A column whose reference std is zero
    gets NaN (there is no scale to express the distance in).
    """
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.ndim != 2 or win.ndim != 2 or ref.shape[1] != win.shape[1]:
        raise InvalidInputError(
            f"expected (n_ref, F) and (n, F) with the same F, got {ref.shape} and {win.shape}"
        )
    if ref.shape[0] == 0 or win.shape[0] == 0:
        raise InvalidInputError("reference and window must not be empty")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(win))):
        raise InvalidInputError("reference and window must be finite; exclude NaN/Inf first")
    dist = wasserstein_rows(np.sort(ref.T, axis=1), np.sort(win.T, axis=1))
    std = ref.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        result: FloatArray = np.where(std > 0, dist / np.where(std > 0, std, 1.0), np.nan)
    return result
