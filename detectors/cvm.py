"""Two-sample Cramér-von Mises test for many features at once.

The statistic weighs the squared ECDF difference over the whole range, so it
sees shifts in location and scale (and shape changes) with more power than KS
in the centre of the distribution. This module reproduces
``scipy.stats.cramervonmises_2samp(x, y, method="asymptotic")``: mid-ranks in
the pooled sample, Anderson's statistic ``T``, its exact finite-sample mean
and variance, and the limiting distribution of the one-sample statistic
(Csörgő & Faraway 1996), with scipy's series truncation (terms below 1e-7).

Assumption: continuous data. With ties the mid-ranks keep the statistic
defined, but the null distribution is then conservative (p-values too large).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, kv

from detectors._rows import FloatArray, MergedRows, merge_sorted_rows, tie_group_bounds
from detectors.errors import InvalidInputError

__all__ = [
    "cramervonmises_columns",
    "cramervonmises_merged",
    "cramervonmises_rows",
    "cvm_asymptotic_pvalue",
]


def cramervonmises_rows(
    ref_sorted: FloatArray, win_sorted: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Statistic T and asymptotic p-value per row of row-sorted finite (F, n_ref) and (F, n)."""
    return cramervonmises_merged(merge_sorted_rows(ref_sorted, win_sorted))


def cramervonmises_merged(merged: MergedRows) -> tuple[FloatArray, FloatArray]:
    """Statistic T and asymptotic p-value from reference and window rows already merged."""
    nx, ny = merged.n_a, merged.n_b
    if nx <= 1 or ny <= 1:
        raise InvalidInputError(f"both samples need at least two values, got {nx} and {ny}")
    n_f = merged.values.shape[0]
    start, end = tie_group_bounds(merged.values, merged.last_of_tie)
    midrank = (start + end + 1) / 2.0
    rx = midrank[merged.from_a].reshape(n_f, nx)
    ry = midrank[~merged.from_a].reshape(n_f, ny)
    u = nx * ((rx - np.arange(1, nx + 1)) ** 2).sum(axis=1) + ny * (
        (ry - np.arange(1, ny + 1)) ** 2
    ).sum(axis=1)
    k, n = nx * ny, nx + ny
    t = u / (k * n) - (4 * k - 1) / (6 * n)
    return t, cvm_asymptotic_pvalue(t, nx, ny)


def cramervonmises_columns(
    reference: FloatArray, window: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Cramér-von Mises statistic and p-value for every column of ``(n_ref, F)`` and ``(n, F)``.

    Equal to ``scipy.stats.cramervonmises_2samp(reference[:, f], window[:, f],
    method="asymptotic")``. Inputs must be finite.
    """
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.ndim != 2 or win.ndim != 2 or ref.shape[1] != win.shape[1]:
        raise InvalidInputError(
            f"expected (n_ref, F) and (n, F) with the same F, got {ref.shape} and {win.shape}"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(win))):
        raise InvalidInputError("reference and window must be finite; exclude NaN/Inf first")
    return cramervonmises_rows(np.sort(ref.T, axis=1), np.sort(win.T, axis=1))


def cvm_asymptotic_pvalue(t: FloatArray, nx: int, ny: int) -> FloatArray:
    """p-value of T by the normalised limiting distribution (scipy's "asymptotic" method)."""
    k, n = nx * ny, nx + ny
    et = (1 + 1 / n) / 6
    vt = (n + 1) * (4 * k * n - 3 * (nx**2 + ny**2) - 2 * k) / (45 * n**2 * 4 * k)
    tn = 1 / 6 + (np.asarray(t, dtype=np.float64) - et) / math.sqrt(45 * vt)
    p = np.ones_like(tn)
    # Below 0.003 the limiting cdf is < 1.3e-18: p is 1 to double precision (as scipy).
    big = tn >= 0.003
    if np.any(big):
        p[big] = np.clip(1.0 - _cdf_cvm_inf(tn[big]), 0.0, None)
    return p


def _cdf_cvm_inf(x: FloatArray) -> FloatArray:
    """Limiting cdf of the one-sample CvM statistic, Csörgő & Faraway (1996) eq. 1.2-1.3.

    Terms are added per element until a term falls below 1e-7, the same
    truncation scipy uses, so the p-values agree to rounding.
    """
    total = np.zeros_like(x)
    active = np.ones(x.shape, dtype=np.bool_)
    k = 0
    while np.any(active):
        xa = x[active]
        u = math.exp(gammaln(k + 0.5) - gammaln(k + 1)) / (np.pi**1.5 * np.sqrt(xa))
        y = 4 * k + 1
        q = y**2 / (16 * xa)
        term = u * math.sqrt(y) * np.exp(-q) * kv(0.25, q)
        total[active] += term
        still = np.abs(term) >= 1e-7
        idx = np.flatnonzero(active)
        active[idx[~still]] = False
        k += 1
    return total
