"""Chi-squared homogeneity: equal to scipy, sparse cells merged by the documented rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors.chi2 import (
    bin_counts_sorted,
    binned_chi2_rows,
    chi2_homogeneity,
    merge_sparse_bins,
    merge_sparse_categories,
    quantile_bin_edges,
)
from detectors.errors import InvalidInputError


def _scipy_on_groups(ref: np.ndarray, win: np.ndarray, groups) -> tuple[float, float, int]:
    table = np.array([[ref[list(g)].sum() for g in groups], [win[list(g)].sum() for g in groups]])
    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue), int(res.dof)


@pytest.mark.parametrize("seed", range(6))
def test_homogeneity_equals_scipy_after_merging(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 12))
    priors = rng.dirichlet(np.full(k, 0.7))
    ref = rng.multinomial(int(rng.integers(50, 2000)), priors)
    win = rng.multinomial(int(rng.integers(30, 500)), priors)
    res = chi2_homogeneity(ref, win)
    if res.skipped_reason is not None:
        assert res.p_value is None
        return
    stat, p, dof = _scipy_on_groups(ref, win, res.groups)
    assert res.statistic == pytest.approx(stat, rel=1e-12)
    assert res.p_value == pytest.approx(p, abs=1e-9)
    assert res.dof == dof
    expected = stats.contingency.expected_freq(
        np.array(
            [[ref[list(g)].sum() for g in res.groups], [win[list(g)].sum() for g in res.groups]]
        )
    )
    assert expected.min() >= 5.0


def test_no_merge_needed_is_plain_scipy() -> None:
    ref = np.array([120, 80, 100, 95])
    win = np.array([30, 25, 20, 26])
    res = chi2_homogeneity(ref, win)
    assert res.groups == ((0,), (1,), (2,), (3,))
    stat, p, dof = _scipy_on_groups(ref, win, res.groups)
    assert (res.statistic, res.dof) == (pytest.approx(stat), dof)
    assert res.p_value == pytest.approx(p, abs=1e-12)


def test_category_merge_rule_merges_smallest_into_next_smallest() -> None:
    ref = np.array([100, 2, 50, 1, 0])
    win = np.array([40, 1, 20, 2, 0])
    groups = merge_sparse_categories(ref, win)
    # Category 4 is empty in both samples: dropped. Categories 1 and 3 (3 each) merge
    # first; 63 * 6 / 216 < 5 is still too sparse, so they join the next smallest (2).
    assert groups == ((0,), (1, 2, 3))


def test_too_few_categories_is_a_skip_not_nan() -> None:
    res = chi2_homogeneity([100, 1], [30, 0])
    assert res.p_value is None and res.statistic is None
    assert res.skipped_reason is not None and "fewer than 2" in res.skipped_reason
    empty = chi2_homogeneity([0, 0], [3, 4])
    assert empty.p_value is None and "reference" in (empty.skipped_reason or "")


def test_bad_counts_raise() -> None:
    with pytest.raises(InvalidInputError):
        chi2_homogeneity([1, 2], [1, 2, 3])
    with pytest.raises(InvalidInputError):
        chi2_homogeneity([1.5, 2], [1, 2])
    with pytest.raises(InvalidInputError):
        chi2_homogeneity([-1, 2], [1, 2])


def test_bin_merge_uses_reference_only_and_keeps_order() -> None:
    mapping = merge_sparse_bins(np.array([50, 1, 1, 60, 2, 70]), n_window=1000)
    assert mapping.tolist() == [0, 0, 0, 1, 1, 2] or mapping.tolist() == [0, 1, 1, 2, 2, 3]
    assert np.all(np.diff(mapping) >= 0) and mapping[0] == 0
    # with a small window, bins must hold >= 5 expected window values
    ref = np.array([100] * 10)
    mapping = merge_sparse_bins(ref, n_window=20)
    merged = np.bincount(mapping, weights=ref)
    assert np.all(merged / ref.sum() * 20 >= 5)


def test_quantile_edges_are_unique_with_ties() -> None:
    x = np.sort(np.r_[np.zeros(800), np.arange(1, 201, dtype=float)])
    edges = quantile_bin_edges(x, 10)
    assert np.all(np.diff(edges) > 0)
    assert edges[0] > x[0]
    counts = bin_counts_sorted(x, edges)
    assert counts.sum() == x.size and np.all(counts > 0)
    assert quantile_bin_edges(np.ones(50), 10).size == 0


@pytest.mark.parametrize("seed", range(4))
def test_binned_rows_equal_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_f, k = 7, 6
    ref = rng.integers(20, 200, size=(n_f, k)).astype(float)
    win = rng.integers(5, 60, size=(n_f, k)).astype(float)
    n_bins = np.full(n_f, k)
    n_bins[0] = 4
    ref[0, 4:] = 0
    win[0, 4:] = 0
    stat, p = binned_chi2_rows(ref, win, n_bins)
    for f in range(n_f):
        res = stats.chi2_contingency(
            np.vstack([ref[f, : n_bins[f]], win[f, : n_bins[f]]]), correction=False
        )
        assert stat[f] == pytest.approx(res.statistic, rel=1e-12)
        assert p[f] == pytest.approx(res.pvalue, abs=1e-9)
