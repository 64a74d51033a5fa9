"""Welch, Brown-Forsythe and Cramér-von Mises equal scipy's implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors.cvm import cramervonmises_columns
from detectors.errors import InvalidInputError
from detectors.location_scale import brown_forsythe_columns, welch_ttest_columns

SHAPES = [
    (50, 30, 8, None),
    (500, 100, 8, 1),
    (2000, 400, 6, None),
    (2000, 400, 6, 1),
    (21, 40, 5, 0),
]


def _data(seed: int, n_ref: int, n_win: int, n_f: int, decimals: int | None):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_ref, n_f))
    win = rng.normal(0.15, 1.2, size=(n_win, n_f))
    if decimals is not None:
        ref, win = np.round(ref, decimals), np.round(win, decimals)
    return ref, win


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_welch_equals_scipy(shape: tuple, seed: int) -> None:
    ref, win = _data(seed, *shape)
    t, p = welch_ttest_columns(ref, win)
    for f in range(ref.shape[1]):
        e = stats.ttest_ind(win[:, f], ref[:, f], equal_var=False)
        assert t[f] == pytest.approx(e.statistic, rel=1e-10)
        assert p[f] == pytest.approx(e.pvalue, abs=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brown_forsythe_equals_scipy_levene_median(shape: tuple, seed: int) -> None:
    ref, win = _data(seed, *shape)
    w, p = brown_forsythe_columns(ref, win)
    for f in range(ref.shape[1]):
        e = stats.levene(win[:, f], ref[:, f], center="median")
        assert w[f] == pytest.approx(e.statistic, rel=1e-9)
        assert p[f] == pytest.approx(e.pvalue, abs=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cvm_equals_scipy_asymptotic(shape: tuple, seed: int) -> None:
    ref, win = _data(seed, *shape)
    t, p = cramervonmises_columns(ref, win)
    for f in range(ref.shape[1]):
        e = stats.cramervonmises_2samp(ref[:, f], win[:, f], method="asymptotic")
        assert t[f] == pytest.approx(e.statistic, rel=1e-10, abs=1e-12)
        assert p[f] == pytest.approx(e.pvalue, abs=1e-9)


def test_zero_variance_both_sides_is_nan_for_the_caller_to_skip() -> None:
    ref = np.ones((10, 1))
    t, p = welch_ttest_columns(ref, ref)
    assert np.isnan(t[0]) and np.isnan(p[0])
    w, p = brown_forsythe_columns(ref, ref)
    assert np.isnan(w[0]) and np.isnan(p[0])


def test_inputs_checked() -> None:
    with pytest.raises(InvalidInputError, match="at least two rows"):
        welch_ttest_columns(np.ones((1, 2)), np.ones((5, 2)))
    with pytest.raises(InvalidInputError, match="finite"):
        brown_forsythe_columns(np.ones((3, 1)), np.array([[1.0], [np.inf]]))
    with pytest.raises(InvalidInputError, match="same F"):
        cramervonmises_columns(np.ones((3, 1)), np.ones((3, 2)))
