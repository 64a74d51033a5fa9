"""Multiple-testing corrections and per-feature combination of p-values.

Two different problems, two kinds of tools:

* **Across features** (many hypotheses, one verdict per feature):
  :func:`bonferroni` controls the family-wise error rate under any
  dependence; :func:`benjamini_hochberg` controls the false discovery rate
  (under independence or positive dependence). Under the global null — no
  feature drifted — both reject anything with probability at most alpha, so
  either keeps the dataset-level false-alarm rate at alpha; BH gains power
  when several features drift.
* **Across tests of one feature** (several tests of the *same* null, strongly
  dependent because they see the same data): :func:`cauchy_combination`
  (Liu & Xie 2020) or :func:`bonferroni_min`. Both are valid under arbitrary
  dependence — Bonferroni exactly at every threshold, Cauchy asymptotically
  in the tail that matters for small corrected thresholds, and exactly when
  the tests are independent or identical — which Fisher's method is not. For
  the detector's dependent tests Cauchy was measured 3-6 % liberal at
  thresholds of 0.01-0.05 (benchmarks/drift_calibration.py), which is why the
  detector defaults to Bonferroni.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detectors._rows import FloatArray
from detectors.errors import InvalidInputError

__all__ = [
    "MultipleTestResult",
    "benjamini_hochberg",
    "bh_adjusted",
    "bonferroni",
    "bonferroni_min",
    "bonferroni_min_rows",
    "cauchy_combination",
]

#: Below this, tan((0.5 - p) * pi) loses precision; 1 / (p * pi) is used instead (Liu & Xie).
_CAUCHY_SMALL_P = 1e-15


@dataclass(frozen=True, slots=True)
class MultipleTestResult:
    """Reject mask and adjusted p-values (comparable directly with alpha)."""

    reject: npt.NDArray[np.bool_]
    p_adjusted: FloatArray
    alpha: float


def bonferroni(p_values: npt.ArrayLike, alpha: float = 0.05) -> MultipleTestResult:
    """Bonferroni: adjusted p = min(1, m p); controls the family-wise error rate."""
    p = _check_p(p_values)
    _check_alpha(alpha)
    adjusted = np.minimum(p * p.size, 1.0)
    return MultipleTestResult(reject=adjusted <= alpha, p_adjusted=adjusted, alpha=alpha)


def benjamini_hochberg(p_values: npt.ArrayLike, alpha: float = 0.05) -> MultipleTestResult:
    """Benjamini-Hochberg step-up: controls the false discovery rate at alpha.

    Adjusted p-values are ``min_{j >= i} m p_(j) / j`` in sorted order, capped
    at 1 (as ``statsmodels``' "fdr_bh"); rejecting adjusted p <= alpha is the
    step-up procedure.
    """
    p = _check_p(p_values)
    _check_alpha(alpha)
    adjusted = bh_adjusted(p)
    return MultipleTestResult(reject=adjusted <= alpha, p_adjusted=adjusted, alpha=alpha)


def bh_adjusted(p: FloatArray) -> FloatArray:
    """Benjamini-Hochberg adjusted p-values of 1-D ``p`` already known valid (no checks)."""
    m = p.size
    if m == 0:
        return np.zeros(0)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(ranked, 1.0)
    return adjusted


def cauchy_combination(
    p_values: npt.ArrayLike, weights: npt.ArrayLike | None = None, axis: int = -1
) -> FloatArray:
    """Cauchy combination test (Liu & Xie 2020) along ``axis``.

    ``T = sum_i w_i tan((0.5 - p_i) pi)`` with weights summing to one; the
    combined p-value is the standard Cauchy tail ``P(C > T)``. Each term is
    standard Cauchy under its null, so T is exactly standard Cauchy when the
    tests are independent or identical, and its tail stays Cauchy under
    arbitrary dependence as the threshold gets small. A p-value of 0 makes the
    combination 0; p-values of 1 are allowed.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0 or p.shape[axis] == 0:
        raise InvalidInputError("cauchy_combination needs at least one p-value")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidInputError("p-values must be finite and in [0, 1]")
    p = np.moveaxis(p, axis, -1)
    w = _check_weights(weights, p.shape[-1])
    with np.errstate(divide="ignore", over="ignore"):  # p = 0 or subnormal: an infinite term
        terms = np.where(
            p < _CAUCHY_SMALL_P,
            1.0 / (np.maximum(p, 0.0) * np.pi),
            np.tan((0.5 - p) * np.pi),
        )
    # Terms with zero weight must not turn inf * 0 into NaN.
    t = (np.where(w > 0, terms, 0.0) * w).sum(axis=-1)
    with np.errstate(divide="ignore"):
        # P(C > t): arctan(1/t)/pi for t > 0 keeps precision for tiny p-values.
        combined = np.where(
            t > 0, np.arctan(1.0 / np.where(t > 0, t, 1.0)) / np.pi, 0.5 - np.arctan(t) / np.pi
        )
    result: FloatArray = np.clip(combined, 0.0, 1.0)
    return result


def bonferroni_min(
    p_values: npt.ArrayLike, weights: npt.ArrayLike | None = None, axis: int = -1
) -> FloatArray:
    """Weighted Bonferroni across k tests of one hypothesis: ``min(1, min_i p_i / w_i)``.

    Weights sum to one (default ``1/k`` each, giving ``k * min p``). Valid under
    any dependence: the union bound gives ``P(some p_i <= alpha w_i) <= alpha``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0 or p.shape[axis] == 0:
        raise InvalidInputError("bonferroni_min needs at least one p-value")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidInputError("p-values must be finite and in [0, 1]")
    p = np.moveaxis(p, axis, -1)
    return bonferroni_min_rows(p, _check_weights(weights, p.shape[-1]))


def bonferroni_min_rows(p: FloatArray, w: FloatArray) -> FloatArray:
    """:func:`bonferroni_min` along the last axis of valid ``p`` with valid weights (no checks)."""
    with np.errstate(divide="ignore"):
        scaled = np.where(w > 0, p / np.where(w > 0, w, 1.0), np.inf)
    result: FloatArray = np.minimum(scaled.min(axis=-1), 1.0)
    return result


def _check_weights(weights: npt.ArrayLike | None, k: int) -> FloatArray:
    if weights is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or np.any(~np.isfinite(w)) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise InvalidInputError(f"weights must be {k} non-negative numbers summing to 1")
    return w


def _check_p(p_values: npt.ArrayLike) -> FloatArray:
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise InvalidInputError(f"p_values must be 1-D, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidInputError("p-values must be finite and in [0, 1]")
    return p


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha}")
