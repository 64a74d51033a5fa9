"""Classification metrics from a confusion matrix.

Rows are true classes and columns predicted classes (scikit-learn's layout).
Per-class precision, recall and F1 follow scikit-learn's definitions; a ratio
whose denominator is zero (a class never predicted, or never present) is
``zero_division`` (default 0.0, scikit-learn's value after its warning), so
the result never holds NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detectors._rows import FloatArray, IntArray
from detectors.errors import InvalidInputError

__all__ = ["ClassificationMetrics", "classification_metrics", "confusion_matrix"]


@dataclass(frozen=True, slots=True, eq=False)
class ClassificationMetrics:
    """Accuracy, per-class precision/recall/F1 and their unweighted (macro) means."""

    n: int
    accuracy: float
    support: IntArray
    precision: FloatArray
    recall: FloatArray
    f1: FloatArray
    macro_precision: float
    macro_recall: float
    macro_f1: float


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> IntArray:
    """Count (true, predicted) pairs of integer labels in ``[0, n_classes)``."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise InvalidInputError(
            f"y_true and y_pred must be 1-D of equal length, got {t.shape}, {p.shape}"
        )
    if n_classes < 1:
        raise InvalidInputError(f"n_classes must be >= 1, got {n_classes}")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= n_classes or p.max() >= n_classes):
        raise InvalidInputError(f"labels must lie in [0, {n_classes})")
    flat = t.astype(np.int64) * n_classes + p.astype(np.int64)
    counts: IntArray = np.bincount(flat, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    return counts


def classification_metrics(
    confusion: npt.ArrayLike, zero_division: float = 0.0
) -> ClassificationMetrics:
    """Metrics from a square confusion matrix of non-negative counts."""
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise InvalidInputError(f"confusion must be a non-empty square matrix, got {cm.shape}")
    if np.any(cm < 0) or not np.all(np.isfinite(cm)):
        raise InvalidInputError("confusion must hold non-negative counts")
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    total = float(cm.sum())
    precision = _ratio(tp, predicted, zero_division)
    recall = _ratio(tp, actual, zero_division)
    f1 = _ratio(2 * tp, predicted + actual, zero_division)
    return ClassificationMetrics(
        n=int(total),
        accuracy=float(tp.sum() / total) if total > 0 else zero_division,
        support=actual.astype(np.int64),
        precision=precision,
        recall=recall,
        f1=f1,
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
    )


def _ratio(num: FloatArray, den: FloatArray, zero_division: float) -> FloatArray:
    out: FloatArray = np.full(num.shape, float(zero_division))
    np.divide(num, den, out=out, where=den > 0)
    return out
