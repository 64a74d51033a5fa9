"""PSI, Wasserstein, and the multiple-testing / combination tools."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors.correction import (
    benjamini_hochberg,
    bonferroni,
    bonferroni_min,
    cauchy_combination,
)
from detectors.distance import psi_from_counts, psi_level, wasserstein_columns
from detectors.errors import InvalidInputError


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_wasserstein_equals_scipy_over_reference_std(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(700, 5)) * 2
    win = rng.normal(0.3, 1.5, size=(300, 5))
    if decimals is not None:
        ref, win = np.round(ref, decimals), np.round(win, decimals)
    got = wasserstein_columns(ref, win)
    for f in range(5):
        want = stats.wasserstein_distance(ref[:, f], win[:, f]) / ref[:, f].std()
        assert got[f] == pytest.approx(want, rel=1e-10)


def test_wasserstein_constant_reference_is_nan() -> None:
    assert np.isnan(wasserstein_columns(np.ones((5, 1)), np.zeros((5, 1)))[0])


def test_psi_matches_formula_and_floors_empty_bins() -> None:
    ref = np.array([[25.0, 25, 25, 25]])
    win = np.array([[40.0, 30, 30, 0]])
    r, w = ref / 100, np.maximum(win / 100, 1e-4)
    want = float(np.sum((w - r) * np.log(w / r)))
    assert psi_from_counts(ref, win)[0] == pytest.approx(want)
    assert psi_from_counts(ref, ref)[0] == 0.0
    assert psi_level(0.05) == "none"
    assert psi_level(0.1) == "moderate"
    assert psi_level(0.3) == "major"
    assert psi_level(0.3, (0.5, 1.0)) == "none"
    with pytest.raises(InvalidInputError):
        psi_level(0.1, (0.3, 0.2))


def test_bonferroni_and_bh_match_scipy() -> None:
    p = np.random.default_rng(0).uniform(size=40) ** 3
    bh = benjamini_hochberg(p, 0.05)
    np.testing.assert_allclose(bh.p_adjusted, stats.false_discovery_control(p, method="bh"))
    assert np.array_equal(bh.reject, bh.p_adjusted <= 0.05)
    bf = bonferroni(p, 0.05)
    np.testing.assert_allclose(bf.p_adjusted, np.minimum(p * 40, 1))
    assert bf.reject.sum() <= bh.reject.sum()


def test_cauchy_combination_known_values_and_tails() -> None:
    # A single p-value, or identical p-values, combine to themselves.
    p = np.array([[0.3], [0.01]])
    np.testing.assert_allclose(cauchy_combination(p), [0.3, 0.01], rtol=1e-12)
    np.testing.assert_allclose(cauchy_combination(np.full((1, 4), 0.02)), [0.02], rtol=1e-10)
    # Tiny p-values keep their precision; a zero stays zero.
    assert cauchy_combination(np.array([1e-30, 0.5]))[()] == pytest.approx(2e-30, rel=1e-6)
    assert cauchy_combination(np.array([0.0, 1.0]))[()] == 0.0
    # Weights: a zero weight ignores that test.
    assert cauchy_combination(np.array([0.01, 0.9]), [1.0, 0.0])[()] == pytest.approx(0.01)
    with pytest.raises(InvalidInputError):
        cauchy_combination(np.array([0.1, 0.2]), [0.5, 0.6])
    with pytest.raises(InvalidInputError):
        cauchy_combination(np.array([0.1, np.nan]))


def test_cauchy_is_uniform_for_independent_p_values() -> None:
    rng = np.random.default_rng(5)
    combined = cauchy_combination(rng.uniform(size=(40_000, 3)))
    for alpha in (0.05, 0.01):
        rate = np.mean(combined <= alpha)
        assert abs(rate - alpha) < 4 * np.sqrt(alpha * (1 - alpha) / 40_000)


def test_bonferroni_min_weighted() -> None:
    p = np.array([[0.01, 0.5, 0.2]])
    assert bonferroni_min(p)[0] == pytest.approx(0.03)
    assert bonferroni_min(p, [0.8, 0.1, 0.1])[0] == pytest.approx(0.0125)
    assert bonferroni_min(np.array([0.9, 0.8]))[()] == 1.0
