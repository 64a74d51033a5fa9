"""Two-sample Kolmogorov-Smirnov test for many features at once.

``scipy.stats.ks_2samp`` tests one feature per call and re-sorts both samples
every time. Here the reference is sorted once (when it is fitted), the window
is sorted once per evaluation, and every feature is handled in the same numpy
calls. The statistic and p-values reproduce ``ks_2samp(..., alternative=
"two-sided", method=...)``: the ECDFs are evaluated at every pooled value with
right-continuity, so ties are treated exactly as scipy treats them (which
makes the test conservative on tied data — see ``docs/drift.md``).

The exact p-value (Hodges' "inside" lattice-path recursion, in the
1 - p form of Viehmann 2021, as scipy uses) is computed here along
anti-diagonals of the lattice so that all features advance together; each
cell is computed with the same floating-point operations as scipy's loop.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import stats

from detectors._rows import FloatArray, tie_group_bounds
from detectors.errors import InvalidInputError

__all__ = [
    "KSMethod",
    "ks_2samp_columns",
    "ks_pvalue",
    "ks_statistic_rows",
]

KSMethod = Literal["auto", "asymp", "exact"]

#: scipy's ``ks_2samp(method="auto")`` is exact when both samples have at most this many values.
MAX_AUTO_EXACT_N = 10_000


def ks_statistic_rows(ref_sorted: FloatArray, win_sorted: FloatArray) -> FloatArray:
    """Two-sided KS statistic D per row of row-sorted, finite ``(F, n_ref)`` and ``(F, n)``.

    Only the window's values are visited: ``F_ref - F_win`` can only reach its
    maximum just before a window value (its left limit there) and
    ``F_win - F_ref`` only at a window value, so two binary searches of the
    window in the reference give D exactly as scipy's evaluation at every
    pooled value does, for O(n log n_ref) per feature instead of O(n_ref + n).
    """
    n_f, n_ref = ref_sorted.shape
    n_win = win_sorted.shape[1]
    ref_lt = np.empty((n_f, n_win), dtype=np.int64)
    ref_le = np.empty((n_f, n_win), dtype=np.int64)
    for f in range(n_f):
        ref_lt[f] = np.searchsorted(ref_sorted[f], win_sorted[f], side="left")
        ref_le[f] = np.searchsorted(ref_sorted[f], win_sorted[f], side="right")
    if np.any(win_sorted[:, 1:] == win_sorted[:, :-1]):
        last = np.ones((n_f, n_win), dtype=np.bool_)
        np.not_equal(win_sorted[:, 1:], win_sorted[:, :-1], out=last[:, :-1])
        win_lt, win_le = tie_group_bounds(win_sorted, last)
    else:
        win_lt = np.broadcast_to(np.arange(n_win, dtype=np.int64), (n_f, n_win))
        win_le = win_lt + 1
    # F_ref - F_win at the window values and just before them (all pooled values).
    max_s = np.maximum(
        (ref_lt / n_ref - win_lt / n_win).max(axis=1),
        (ref_le / n_ref - win_le / n_win).max(axis=1),
    )
    max_s = np.maximum(max_s, 0.0)  # the last pooled value always gives 0
    min_s = np.clip((win_le / n_win - ref_le / n_ref).max(axis=1), 0.0, 1.0)
    result: FloatArray = np.where(min_s > max_s, min_s, max_s)
    return result


def ks_pvalue(
    d: FloatArray, n1: int, n2: int, method: KSMethod = "auto"
) -> tuple[FloatArray, FloatArray]:
    """Two-sided p-values for statistics ``d`` of samples sized ``n1`` and ``n2``.

    Returns ``(d, p)``: with the exact method scipy rounds D onto the lattice of
    attainable values, and so does this function. ``method`` is resolved as in
    scipy: "auto" is exact when ``max(n1, n2) <= 10_000``; an exact request whose
    lattice is too large, or whose computation fails, falls back to the
    asymptotic distribution (scipy warns there; this function does not).
    """
    if method not in ("auto", "asymp", "exact"):
        raise InvalidInputError(f"method must be 'auto', 'asymp' or 'exact', got {method!r}")
    if n1 < 1 or n2 < 1:
        raise InvalidInputError(f"both samples need at least one value, got sizes {n1} and {n2}")
    d = np.asarray(d, dtype=np.float64)
    if method == "auto":
        method = "exact" if max(n1, n2) <= MAX_AUTO_EXACT_N else "asymp"
    g = math.gcd(n1, n2)
    n1g, n2g = n1 // g, n2 // g
    if method == "exact" and n1g >= np.iinfo(np.int32).max / n2g:
        method = "asymp"
    if method == "exact":
        d_out, p, ok = _exact_two_sided(d, n1, n2)
        if not np.all(ok):
            p_asymp = _asymp_two_sided(d_out, n1, n2)
            p = np.where(ok, p, p_asymp)
        return d_out, np.clip(p, 0.0, 1.0)
    return d.copy(), np.clip(_asymp_two_sided(d, n1, n2), 0.0, 1.0)


def ks_2samp_columns(
    reference_sorted: FloatArray,
    window: FloatArray,
    method: KSMethod = "auto",
) -> tuple[FloatArray, FloatArray]:
    """KS statistic and two-sided p-value for every column.

    ``reference_sorted`` is ``(n_ref, F)`` with each column sorted ascending;
    ``window`` is ``(n, F)`` in any order. Both must be finite (exclude
    non-finite rows before calling; :class:`detectors.drift.DriftDetector`
    does that per feature). Equal to ``scipy.stats.ks_2samp(ref[:, f],
    window[:, f], method=method)`` for every ``f``.
    """
    ref = np.asarray(reference_sorted, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.ndim != 2 or win.ndim != 2 or ref.shape[1] != win.shape[1]:
        raise InvalidInputError(
            f"expected reference (n_ref, F) and window (n, F) with the same F, "
            f"got {ref.shape} and {win.shape}"
        )
    if ref.shape[0] == 0 or win.shape[0] == 0:
        raise InvalidInputError("reference and window must not be empty")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(win))):
        raise InvalidInputError("reference and window must be finite; exclude NaN/Inf first")
    ref_rows = np.ascontiguousarray(ref.T)
    if np.any(ref_rows[:, 1:] < ref_rows[:, :-1]):
        raise InvalidInputError("reference_sorted must be sorted ascending in every column")
    win_rows = np.sort(win.T, axis=1)
    d = ks_statistic_rows(ref_rows, win_rows)
    return ks_pvalue(d, ref.shape[0], win.shape[0], method)


# --------------------------------------------------------------------------- asymptotic


def _asymp_two_sided(d: FloatArray, n1: int, n2: int) -> FloatArray:
    """scipy's asymptotic branch: Kolmogorov's distribution with n = round(n1 n2 / (n1 + n2))."""
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    if np.round(en) < 1:
        raise InvalidInputError(
            f"the asymptotic KS distribution needs n1*n2/(n1+n2) >= 0.5, got sizes {n1} and {n2}"
        )
    p: FloatArray = np.asarray(stats.kstwo.sf(d, np.round(en)), dtype=np.float64)
    return p


# --------------------------------------------------------------------------- exact


def _exact_two_sided(d: FloatArray, n1: int, n2: int) -> tuple[FloatArray, FloatArray, np.ndarray]:
    """Exact two-sided p-values; returns (d on the lattice, p, ok-mask)."""
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    h = np.round(d * lcm).astype(np.int64)
    d_lattice = h / lcm
    p = np.ones_like(d_lattice)
    ok = np.ones(d.shape, dtype=np.bool_)
    todo = h > 0
    if not np.any(todo):
        return d_lattice, p, ok
    if n1 == n2:
        with np.errstate(invalid="raise", over="raise"):
            for k in np.flatnonzero(todo):
                try:
                    p[k] = _prob_outside_square(n1, int(h[k]))
                except (FloatingPointError, OverflowError):
                    ok[k] = False
    else:
        p[todo] = _prob_outside_band(n1, n2, g, h[todo])
    bad = ~((p >= 0.0) & (p <= 1.0))
    ok &= ~bad
    return d_lattice, p, ok


def _prob_outside_square(n: int, h: int) -> float:
    """P(D_{n,n} >= h/n) by the alternating binomial series in Horner form (equal samples)."""
    total = 0.0
    k = n // h
    while k >= 0:
        term = 1.0
        for j in range(h):
            term = (n - k * h - j) * term / (n + k * h + j + 1)
        total = term * (1.0 - total)
        k -= 1
    return 2.0 * total


def _prob_outside_band(n1: int, n2: int, g: int, h: FloatArray | np.ndarray) -> FloatArray:
    """Share of lattice paths from (0,0) to (m,n) leaving the band |x/m - y/n| < h/lcm.

    Works on a batch of ``h`` values (one per feature) that share the sample
    sizes. A cell (i, j) of the lattice holds the probability that a random
    path to it has already left the band; cells outside the band hold 1, the
    band cells of column 0 hold 0, and every other band cell is
    ``(A(i-1, j) * i + A(i, j-1) * j) / (i + j)``. Cells on one anti-diagonal
    depend only on the previous anti-diagonal, so a whole diagonal (for all
    features) is one vector operation; only a strip of half-width
    ``max(h) / (mg + ng)`` around the diagonal's centre can be inside a band.
    """
    m, n = (n1, n2) if n1 >= n2 else (n2, n1)
    mg, ng = m // g, n // g
    hh = np.asarray(h, dtype=np.int64)
    n_f = hh.shape[0]
    # A band with an empty column means no path stays inside: probability 1 (as scipy).
    cols = np.arange(1, m + 1, dtype=np.int64)
    lo = np.minimum(np.maximum((ng * cols[None, :] - hh[:, None]) // mg + 1, 0), n)
    hi = np.minimum(-((-(ng * cols[None, :] + hh[:, None])) // mg), n + 1)
    empty = np.any(hi <= lo, axis=1)

    h_max = int(hh.max())
    width = mg + ng
    # diag[f, i + 1] holds A(i, s - i) for the current diagonal s; diag[:, 0] is i = -1.
    diag = np.ones((n_f, m + 2), dtype=np.float64)
    diag[:, 1] = 0.0  # cell (0, 0) lies inside every band (h >= 1)
    h_col = hh[:, None]
    for s in range(1, m + n + 1):
        a = max((mg * s - h_max) // width, 0, s - n)
        b = min(-((-(mg * s + h_max)) // width) + 1, m, s) + 1
        i = np.arange(a, b, dtype=np.int64)
        j = s - i
        new = (diag[:, a:b] * i + diag[:, a + 1 : b + 1] * j) / s
        inside = np.abs(ng * i - mg * j) < h_col
        diag[:, a + 1 : b + 1] = np.where(inside, new, 1.0)
        diag[:, a] = 1.0  # left of the strip: outside every band on this diagonal
    p: FloatArray = np.where(empty, 1.0, diag[:, m + 1])
    return p
