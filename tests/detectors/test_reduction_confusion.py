"""Reductions for high-dimensional inputs, and confusion-matrix metrics vs scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.confusion import classification_metrics, confusion_matrix
from detectors.errors import InvalidInputError, ShapeMismatchError
from detectors.reduction import RandomProjection, cap_features, channel_stats, channel_stats_names


def test_channel_stats() -> None:
    x = np.random.default_rng(0).normal(size=(4, 3, 5, 6))
    out = channel_stats(x)
    assert out.shape == (4, 6)
    np.testing.assert_allclose(out[:, :3], x.mean(axis=(2, 3)))
    np.testing.assert_allclose(out[:, 3:], x.reshape(4, 3, -1).std(axis=2))
    assert channel_stats_names(3)[0] == "channel0_mean" and len(channel_stats_names(3)) == 6
    with pytest.raises(InvalidInputError):
        channel_stats(np.ones((4, 3)))


def test_random_projection_is_seeded_and_fixed() -> None:
    a = RandomProjection.create(12, 4, np.random.default_rng(7))
    b = RandomProjection.create(12, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    x = np.random.default_rng(1).normal(size=(10, 3, 4))
    out = a.apply(x)
    assert out.shape == (10, 4)
    np.testing.assert_allclose(out, x.reshape(10, -1) @ a.matrix)
    assert not a.matrix.flags.writeable
    with pytest.raises(ShapeMismatchError, match=r"\(12,\)"):
        a.apply(np.ones((2, 5)))


def test_cap_features() -> None:
    names, cols = cap_features([f"f{i}" for i in range(10)], 3)
    assert names == ["f0", "f1", "f2"]
    assert np.arange(10)[cols].tolist() == [0, 1, 2]
    with pytest.raises(InvalidInputError):
        cap_features(["a"], 0)


@pytest.mark.parametrize("seed", range(4))
def test_metrics_equal_sklearn(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    k = 5
    y_true = rng.integers(0, k, size=300)
    y_pred = np.where(rng.uniform(size=300) < 0.6, y_true, rng.integers(0, k - 1, size=300))
    cm = confusion_matrix(y_true, y_pred, k)
    np.testing.assert_array_equal(cm, metrics.confusion_matrix(y_true, y_pred, labels=range(k)))
    m = classification_metrics(cm)
    labels = list(range(k))
    assert m.accuracy == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    kw = {"labels": labels, "average": None, "zero_division": 0.0}
    np.testing.assert_allclose(m.precision, metrics.precision_score(y_true, y_pred, **kw))
    np.testing.assert_allclose(m.recall, metrics.recall_score(y_true, y_pred, **kw))
    np.testing.assert_allclose(m.f1, metrics.f1_score(y_true, y_pred, **kw))
    kw["average"] = "macro"
    assert m.macro_f1 == pytest.approx(metrics.f1_score(y_true, y_pred, **kw))
    assert m.macro_precision == pytest.approx(metrics.precision_score(y_true, y_pred, **kw))
    assert m.macro_recall == pytest.approx(metrics.recall_score(y_true, y_pred, **kw))


def test_metrics_never_nan() -> None:
    m = classification_metrics(np.array([[3, 0], [0, 0]]))
    assert m.precision.tolist() == [1.0, 0.0] and m.recall.tolist() == [1.0, 0.0]
    assert not np.any(np.isnan(m.f1))
    with pytest.raises(InvalidInputError):
        classification_metrics(np.ones((2, 3)))
