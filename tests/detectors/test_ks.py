"""KS p-values and statistics equal scipy.stats.ks_2samp, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from detectors.errors import InvalidInputError
from detectors.ks import ks_2samp_columns, ks_pvalue
from tests.detectors.helpers import quietly

CASES = [
    # (n_ref, n_window, n_features, decimals or None, shift)
    (50, 30, 12, None, 0.0),
    (30, 50, 12, None, 0.4),
    (100, 100, 8, None, 0.2),
    (100, 100, 8, 0, 0.2),
    (37, 53, 10, 1, 0.0),
    (200, 120, 10, 1, 0.3),
    (300, 300, 6, 1, 0.1),
    (1000, 250, 6, None, 0.1),
    (1000, 250, 6, 1, 0.1),
    (12, 7, 20, 0, 0.0),
    (3, 5, 20, None, 1.0),
    (60, 40, 6, None, 3.0),
]


def _data(seed: int, n_ref: int, n_win: int, n_f: int, decimals: int | None, shift: float):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_ref, n_f))
    win = rng.normal(shift, 1.0, size=(n_win, n_f))
    if decimals is not None:
        ref, win = np.round(ref, decimals), np.round(win, decimals)
    return ref, win


@pytest.mark.parametrize("method", ["asymp", "exact", "auto"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scipy(case: tuple, method: str, seed: int) -> None:
    ref, win = _data(seed, *case)
    d, p = ks_2samp_columns(np.sort(ref, axis=0), win, method)  # type: ignore[arg-type]
    expected = [
        quietly(lambda f=f: stats.ks_2samp(ref[:, f], win[:, f], method=method))
        for f in range(ref.shape[1])
    ]
    np.testing.assert_allclose(d, [e.statistic for e in expected], rtol=0, atol=1e-12)
    np.testing.assert_allclose(p, [e.pvalue for e in expected], rtol=0, atol=1e-9)
    assert np.all((p >= 0) & (p <= 1))


def test_identical_samples_have_p_one() -> None:
    x = np.random.default_rng(3).normal(size=(40, 3))
    d, p = ks_2samp_columns(np.sort(x, axis=0), x, "exact")
    np.testing.assert_array_equal(d, 0.0)
    np.testing.assert_array_equal(p, 1.0)


def test_large_samples_asymp_match_scipy_and_auto_switches() -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(12_000, 2))
    win = rng.normal(0.05, 1.0, size=(3_000, 2))
    d, p = ks_2samp_columns(np.sort(ref, axis=0), win, "auto")  # > 10,000: asymptotic
    for f in range(2):
        expected = stats.ks_2samp(ref[:, f], win[:, f], method="auto")
        assert d[f] == pytest.approx(expected.statistic, abs=1e-12)
        assert p[f] == pytest.approx(expected.pvalue, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.integers(-3, 3), min_size=2, max_size=25),
    b=st.lists(st.integers(-3, 3), min_size=2, max_size=25),
    method=st.sampled_from(["asymp", "exact"]),
)
def test_heavily_tied_small_samples_match_scipy(a: list[int], b: list[int], method: str) -> None:
    ref = np.sort(np.asarray(a, dtype=float))[:, None]
    win = np.asarray(b, dtype=float)[:, None]
    d, p = ks_2samp_columns(ref, win, method)  # type: ignore[arg-type]
    expected = quietly(lambda: stats.ks_2samp(a, b, method=method))
    assert d[0] == pytest.approx(expected.statistic, abs=1e-12)
    assert p[0] == pytest.approx(expected.pvalue, abs=1e-9)


def test_rejects_unsorted_reference_non_finite_and_mismatched_columns() -> None:
    x = np.array([[2.0], [1.0], [3.0]])
    with pytest.raises(InvalidInputError, match="sorted"):
        ks_2samp_columns(x, x)
    with pytest.raises(InvalidInputError, match="finite"):
        ks_2samp_columns(np.sort(x, axis=0), np.array([[np.nan], [1.0]]))
    with pytest.raises(InvalidInputError, match=r"\(3, 1\) and \(3, 2\)"):
        ks_2samp_columns(np.sort(x, axis=0), np.ones((3, 2)))
    with pytest.raises(InvalidInputError, match="method"):
        ks_pvalue(np.array([0.1]), 10, 10, "bogus")  # type: ignore[arg-type]
