"""Reference.fit: kinds, bins, summaries and reasons for unusable columns."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.errors import InvalidReferenceError
from detectors.reference import Reference


def _fit(data: np.ndarray, **kw: object) -> Reference:
    return Reference.fit(data, [f"f{i}" for i in range(data.shape[1])], **kw)  # type: ignore[arg-type]


def test_summaries_and_bins() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1000, 3))
    ref = _fit(data, max_bins=10)
    np.testing.assert_allclose(ref.mean, data.mean(axis=0))
    np.testing.assert_allclose(ref.var, data.var(axis=0, ddof=1))
    np.testing.assert_allclose(ref.std, data.std(axis=0))
    np.testing.assert_allclose(ref.median, np.median(data, axis=0))
    np.testing.assert_allclose(ref.sorted_rows, np.sort(data.T, axis=1))
    for f in range(3):
        assert ref.kinds[f] == "continuous"
        assert ref.bin_edges[f].size == 9
        assert ref.bin_counts[f].sum() == 1000
        assert np.all(ref.bin_counts[f] == 100)
    assert all(r is None for r in ref.unusable)
    assert not ref.sorted_rows.flags.writeable


def test_discrete_and_categorical_kinds() -> None:
    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, size=500).astype(float)  # few distinct values
    rounded = np.round(rng.normal(size=500), 1)  # many ties, but > 20 distinct values
    codes = rng.integers(0, 4, size=500).astype(float)
    ref = _fit(np.c_[counts, rounded, codes], categorical=[False, False, True])
    assert ref.kinds == ("discrete", "continuous", "categorical")
    distinct = np.unique(counts)
    np.testing.assert_array_equal(ref.bin_edges[0], distinct[1:])  # one bin per value
    np.testing.assert_array_equal(ref.bin_counts[0], [np.sum(counts == v) for v in distinct])
    np.testing.assert_array_equal(ref.bin_edges[2], [0, 1, 2, 3])  # the categories
    assert ref.bin_counts[2].sum() == 500


def test_unusable_columns_have_reasons() -> None:
    data = np.random.default_rng(2).normal(size=(50, 4))
    data[:, 1] = 7.0
    data[:, 2] = np.nan
    data[1:, 3] = np.inf
    ref = _fit(data)
    assert ref.unusable[0] is None
    assert "constant" in (ref.unusable[1] or "")
    assert "no finite values" in (ref.unusable[2] or "")
    assert "fewer than 2" in (ref.unusable[3] or "")
    assert ref.n_finite.tolist() == [50, 50, 0, 1]


def test_non_finite_reference_values_are_excluded_per_feature() -> None:
    data = np.random.default_rng(3).normal(size=(100, 2))
    data[:10, 0] = np.nan
    ref = _fit(data)
    assert ref.n_finite.tolist() == [90, 100]
    assert ref.mean[0] == pytest.approx(data[10:, 0].mean())
    assert np.all(np.isnan(ref.sorted_rows[0, 90:]))


@pytest.mark.parametrize(
    ("data", "names", "match"),
    [
        (np.ones(5), ["a"], "2-D"),
        (np.ones((0, 2)), ["a", "b"], "no rows"),
        (np.ones((5, 2)), ["a"], "1 feature names given for 2 columns"),
        (np.ones((5, 2)), ["a", "a"], "unique"),
        (np.array([["x", "y"]]), ["a", "b"], "real numbers"),
    ],
)
def test_invalid_reference(data: np.ndarray, names: list[str], match: str) -> None:
    with pytest.raises(InvalidReferenceError, match=match):
        Reference.fit(data, names)
