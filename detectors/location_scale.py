"""Tests of location and scale that run on summary statistics.

Both tests need only a few numbers per feature from the reference (kept in
:class:`detectors.reference.Reference`), so evaluating a window is O(n F).

* **Welch's t-test** for a change of mean, without assuming equal variances.
  Valid for any distribution with finite variance once samples are moderately
  large (central limit theorem), and unaffected by ties, so it keeps its size
  on rounded or discrete data. The most powerful test for a pure mean shift
  of roughly normal data. Equal to ``scipy.stats.ttest_ind(window, reference,
  equal_var=False)``.
* **Brown-Forsythe test** (Levene's test centred at the median) for a change
  of spread. Chosen over the F-test of variances because the F-test is only
  valid for normal data — with heavy tails its false-alarm rate is far above
  alpha — whereas the Brown-Forsythe test is a one-way ANOVA on absolute
  deviations from each sample's median and stays close to its nominal level
  for skewed and heavy-tailed data. Equal to ``scipy.stats.levene(window,
  reference, center="median")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from detectors._rows import FloatArray
from detectors.errors import InvalidInputError

__all__ = [
    "SpreadSummary",
    "brown_forsythe_columns",
    "brown_forsythe_from_summaries",
    "median_of_sorted_rows",
    "spread_summary_rows",
    "welch_ttest_columns",
    "welch_ttest_from_stats",
]


def welch_ttest_from_stats(
    mean_ref: FloatArray,
    var_ref: FloatArray,
    n_ref: FloatArray | int,
    mean_win: FloatArray,
    var_win: FloatArray,
    n_win: FloatArray | int,
) -> tuple[FloatArray, FloatArray]:
    """Welch t statistic (window minus reference) and two-sided p-value from summaries.

    Variances use ``ddof=1``. Where both variances are zero the statistic is
    undefined: the result is NaN there and the caller must skip the feature.
    """
    n_r = np.asarray(n_ref, dtype=np.float64)
    n_w = np.asarray(n_win, dtype=np.float64)
    vn_r = var_ref / n_r
    vn_w = var_win / n_w
    se2 = vn_r + vn_w
    ok = se2 > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se2**2 / (vn_w**2 / (n_w - 1) + vn_r**2 / (n_r - 1))
        t = (mean_win - mean_ref) / np.sqrt(se2)
    p = np.full(t.shape, np.nan)
    p[ok] = 2.0 * special.stdtr(df[ok], -np.abs(t[ok]))
    t = np.where(ok, t, np.nan)
    return t, np.minimum(p, 1.0)


def welch_ttest_columns(reference: FloatArray, window: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Welch's t-test per column of finite ``(n_ref, F)`` and ``(n, F)`` arrays."""
    ref, win = _check_pair(reference, window)
    return welch_ttest_from_stats(
        ref.mean(axis=0),
        ref.var(axis=0, ddof=1),
        ref.shape[0],
        win.mean(axis=0),
        win.var(axis=0, ddof=1),
        win.shape[0],
    )


@dataclass(frozen=True, slots=True)
class SpreadSummary:
    """What the Brown-Forsythe test needs from one sample, per feature.

    ``zbar`` is the mean absolute deviation from the sample median and ``ss``
    the sum of squared deviations of those absolute deviations from ``zbar``.
    """

    n: FloatArray
    zbar: FloatArray
    ss: FloatArray


def median_of_sorted_rows(sorted_rows: FloatArray, n: FloatArray | int) -> FloatArray:
    """Median of each row's first ``n`` values (rows sorted ascending)."""
    counts = np.broadcast_to(np.asarray(n, dtype=np.int64), (sorted_rows.shape[0],))
    rows = np.arange(sorted_rows.shape[0])
    lo = sorted_rows[rows, (counts - 1) // 2]
    hi = sorted_rows[rows, counts // 2]
    med: FloatArray = (lo + hi) / 2.0
    return med


def spread_summary_rows(rows: FloatArray, median: FloatArray) -> SpreadSummary:
    """Brown-Forsythe summary of finite rows ``(F, n)`` around their medians."""
    z = np.abs(rows - median[:, None])
    zbar = z.mean(axis=1)
    ss = ((z - zbar[:, None]) ** 2).sum(axis=1)
    n = np.full(rows.shape[0], float(rows.shape[1]))
    return SpreadSummary(n=n, zbar=zbar, ss=ss)


def brown_forsythe_from_summaries(
    ref: SpreadSummary, win: SpreadSummary
) -> tuple[FloatArray, FloatArray]:
    """Brown-Forsythe W statistic and p-value (F distribution with 1 and N-2 dof).

    Where both samples have zero spread about their medians the statistic is
    undefined: NaN, to be skipped by the caller.
    """
    n_tot = ref.n + win.n
    zbar = (ref.n * ref.zbar + win.n * win.zbar) / n_tot
    dfd = n_tot - 2.0
    numer = dfd * (ref.n * (ref.zbar - zbar) ** 2 + win.n * (win.zbar - zbar) ** 2)
    denom = ref.ss + win.ss
    ok = denom > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        w = numer / denom
    p = np.full(w.shape, np.nan)
    p[ok] = special.fdtrc(1.0, dfd[ok], w[ok])
    return np.where(ok, w, np.nan), p


def brown_forsythe_columns(
    reference: FloatArray, window: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Brown-Forsythe (median-centred Levene) test per column of finite 2-D arrays."""
    ref, win = _check_pair(reference, window)
    ref_rows = np.sort(ref.T, axis=1)
    win_rows = np.sort(win.T, axis=1)
    s_ref = spread_summary_rows(ref_rows, median_of_sorted_rows(ref_rows, ref.shape[0]))
    s_win = spread_summary_rows(win_rows, median_of_sorted_rows(win_rows, win.shape[0]))
    return brown_forsythe_from_summaries(s_ref, s_win)


def _check_pair(reference: FloatArray, window: FloatArray) -> tuple[FloatArray, FloatArray]:
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.ndim != 2 or win.ndim != 2 or ref.shape[1] != win.shape[1]:
        raise InvalidInputError(
            f"expected (n_ref, F) and (n, F) with the same F, got {ref.shape} and {win.shape}"
        )
    if ref.shape[0] < 2 or win.shape[0] < 2:
        raise InvalidInputError(
            f"both samples need at least two rows, got {ref.shape[0]} and {win.shape[0]}"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(win))):
        raise InvalidInputError("reference and window must be finite; exclude NaN/Inf first")
    return ref, win
