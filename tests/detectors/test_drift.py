"""DriftDetector behaviour: results, routing by kind, and bad input never crashing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from detectors.chi2 import bin_counts_sorted, merge_sparse_bins
from detectors.drift import (
    DriftConfig,
    DriftDetector,
    DriftResult,
    class_distribution_drift,
)
from detectors.errors import InvalidInputError, ShapeMismatchError
from detectors.reference import Reference

NAMES = [f"x{i}" for i in range(6)]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference.fit(np.random.default_rng(0).normal(size=(2000, 6)), NAMES)


def _assert_no_nan_anywhere(result: DriftResult) -> None:
    for fr in result.features:
        for value in (fr.combined_p, fr.adjusted_p):
            assert value is None or (math.isfinite(value) and 0 <= value <= 1)
        if fr.skipped_reason is not None:
            assert fr.combined_p is None and fr.adjusted_p is None and not fr.drifted
        for t in fr.tests:
            assert t.p_value is None or (math.isfinite(t.p_value) and 0 <= t.p_value <= 1)
            assert t.statistic is None or math.isfinite(t.statistic)
            assert (t.skipped_reason is None) or (t.p_value is None)


def test_clean_window_result_shape(reference: Reference) -> None:
    window = np.random.default_rng(1).normal(size=(500, 6))
    window[:, 2] += 0.5
    res = DriftDetector(reference).score(window)
    assert res.evaluated and res.drifted
    assert res.drifted_features == ("x2",)
    assert res.n_drifted == 1 and res.n_skipped == 0
    assert (res.n_window, res.n_reference, res.n_features) == (500, 2000, 6)
    fr = res.features[2]
    assert [t.test for t in fr.tests] == ["welch", "brown_forsythe", "chi2", "psi"]
    assert fr.tests[-1].p_value is None  # a distance, not a test
    assert fr.psi_level in ("none", "moderate", "major")
    _assert_no_nan_anywhere(res)


def test_shape_mismatch_names_both_shapes(reference: Reference) -> None:
    det = DriftDetector(reference)
    with pytest.raises(ShapeMismatchError, match=r"\(100, 5\).*\(2000, 6\)") as err:
        det.score(np.zeros((100, 5)))
    assert err.value.expected == (2000, 6) and err.value.got == (100, 5)
    with pytest.raises(ShapeMismatchError):
        det.score(np.zeros(6))


def test_small_window_is_not_evaluated(reference: Reference) -> None:
    res = DriftDetector(reference, DriftConfig(min_window=50)).score(np.zeros((49, 6)))
    assert not res.evaluated and not res.drifted
    assert res.not_evaluated_reason is not None and "min_window=50" in res.not_evaluated_reason
    assert res.n_skipped == 6
    _assert_no_nan_anywhere(res)


def test_non_finite_values_excluded_per_feature_and_counted(reference: Reference) -> None:
    rng = np.random.default_rng(2)
    window = rng.normal(size=(300, 6))
    window[:40, 0] = np.nan
    window[35:50, 1] = np.inf
    window[:, 3] = np.nan  # all-NaN column
    window[:, 4] = -np.inf
    res = DriftDetector(reference).score(window)
    assert res.n_nonfinite_rows_excluded == 300
    by_name = {f.name: f for f in res.features}
    assert by_name["x0"].n_window == 260 and by_name["x0"].skipped_reason is None
    assert by_name["x1"].n_window == 285
    assert "no finite values" in (by_name["x3"].skipped_reason or "")
    assert by_name["x4"].skipped_reason is not None
    assert res.n_skipped == 2 and not res.drifted
    two_rows = rng.normal(size=(300, 6))
    two_rows[[0, 5], 0] = np.nan
    two_rows[5, 2] = np.inf
    assert DriftDetector(reference).score(two_rows).n_nonfinite_rows_excluded == 2
    _assert_no_nan_anywhere(res)


def test_too_few_finite_values_in_one_feature(reference: Reference) -> None:
    window = np.random.default_rng(3).normal(size=(100, 6))
    window[10:, 5] = np.nan
    res = DriftDetector(reference, DriftConfig(min_window=50)).score(window)
    assert "10 finite values" in (res.features[5].skipped_reason or "")
    assert res.n_skipped == 1


def test_bad_reference_columns_are_skipped_with_reasons() -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(size=(500, 4))
    data[:, 0] = 1.0  # constant
    data[:, 1] = np.nan  # no finite values
    data[:, 2] = rng.choice([0.0, 1.0], size=500)  # two values -> discrete, two bins
    ref = Reference.fit(data, ["const", "nan", "binary", "ok"])
    window = rng.normal(size=(200, 4))
    window[:, 0] = 2.0
    window[:, 2] = rng.choice([0.0, 1.0], size=200)
    res = DriftDetector(ref).score(window)
    f = {fr.name: fr for fr in res.features}
    assert "constant" in (f["const"].skipped_reason or "")
    assert "no finite values" in (f["nan"].skipped_reason or "")
    assert f["binary"].kind == "discrete" and f["binary"].skipped_reason is None
    assert res.n_skipped == 2
    _assert_no_nan_anywhere(res)


def test_single_bin_feature_skips_chi2_but_keeps_other_tests() -> None:
    rng = np.random.default_rng(5)
    data = np.c_[rng.normal(size=1000), np.r_[np.zeros(998), [1.0, 2.0]]]
    ref = Reference.fit(data, ["a", "rare"])
    res = DriftDetector(ref).score(np.c_[rng.normal(size=200), np.zeros(200)])
    rare = res.features[1]
    chi2 = next(t for t in rare.tests if t.test == "chi2")
    assert chi2.p_value is None and "fewer than 2 bins" in (chi2.skipped_reason or "")
    assert rare.combined_p is not None  # Welch and Brown-Forsythe still ran
    _assert_no_nan_anywhere(res)


def test_constant_window_against_constant_spread_is_not_nan() -> None:
    ref = Reference.fit(np.r_[np.zeros(500), np.ones(500)][:, None], ["b"])
    res = DriftDetector(ref).score(np.zeros((100, 1)))
    assert res.drifted  # all zeros against half ones: chi2 and Welch both see it
    _assert_no_nan_anywhere(res)


def test_categorical_feature_uses_chi2_with_unseen_category() -> None:
    rng = np.random.default_rng(6)
    ref = Reference.fit(rng.integers(0, 3, size=(3000, 1)).astype(float), ["c"], [True])
    window = rng.integers(0, 3, size=(400, 1)).astype(float)
    window[:60] = 7.0  # a category the reference never had
    res = DriftDetector(ref).score(window)
    fr = res.features[0]
    assert fr.kind == "categorical" and fr.tests[0].test == "chi2"
    assert res.drifted
    same = DriftDetector(ref).score(rng.integers(0, 3, size=(400, 1)).astype(float))
    assert same.features[0].combined_p is not None and same.features[0].combined_p > 1e-3


@pytest.mark.parametrize("tests", [("ks",), ("cvm",), ("welch", "ks", "cvm", "chi2")])
def test_optional_rank_tests(reference: Reference, tests: tuple) -> None:
    window = np.random.default_rng(7).normal(size=(300, 6))
    cfg = DriftConfig(continuous_tests=tests, distances=("psi", "wasserstein"))
    res = DriftDetector(reference, cfg).score(window)
    assert [t.test for t in res.features[0].tests] == [*_in_run_order(tests), "psi", "wasserstein"]
    _assert_no_nan_anywhere(res)


def _in_run_order(tests: tuple) -> list[str]:
    order = ["welch", "brown_forsythe", "ks", "cvm", "chi2"]
    return [t for t in order if t in tests]


def test_cvm_is_skipped_on_tied_data() -> None:
    rng = np.random.default_rng(8)
    ref = Reference.fit(np.round(rng.normal(size=(1000, 1)), 1), ["r"])
    res = DriftDetector(ref, DriftConfig(continuous_tests=("cvm", "welch"))).score(
        np.round(rng.normal(size=(200, 1)), 1)
    )
    cvm = res.features[0].tests[1]
    assert cvm.test == "cvm" and cvm.p_value is None and "tied" in (cvm.skipped_reason or "")
    assert res.features[0].combined_p is not None


def test_bonferroni_combination_and_correction(reference: Reference) -> None:
    window = np.random.default_rng(9).normal(size=(300, 6))
    cfg = DriftConfig(combine="bonferroni", correction="bonferroni")
    res = DriftDetector(reference, cfg).score(window)
    fr = res.features[0]
    ps = [t.p_value for t in fr.tests if t.p_value is not None]
    assert fr.combined_p == pytest.approx(
        min(1.0, min(p / w for p, w in zip(ps, [0.8, 0.1, 0.1], strict=True)))
    )
    assert fr.adjusted_p == pytest.approx(min(1.0, fr.combined_p * 6))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"correction": "holm"}, "correction"),
        ({"continuous_tests": ()}, "continuous_tests"),
        ({"continuous_tests": ("welch", "welch")}, "continuous_tests"),
        ({"discrete_tests": ("anova",)}, "discrete_tests"),
        ({"categorical_tests": ("ks",)}, "categorical_tests"),
        ({"test_weights": (("welch", -1.0),)}, "test_weights"),
        ({"distances": ("kl",)}, "distances"),
        ({"psi_thresholds": (0.3, 0.1)}, "psi_thresholds"),
        ({"min_window": 1}, "min_window"),
        ({"combine": "fisher"}, "combine"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError, match=f"DriftConfig.{field}"):
        DriftConfig(**kwargs)


def test_class_distribution_drift() -> None:
    rng = np.random.default_rng(10)
    ref = rng.multinomial(5000, [0.5, 0.3, 0.2])
    same = class_distribution_drift(ref, rng.multinomial(800, [0.5, 0.3, 0.2]))
    moved = class_distribution_drift(ref, rng.multinomial(800, [0.4, 0.3, 0.3]))
    assert not same.drifted and same.p_value is not None and same.dof == 2
    assert moved.drifted and moved.p_value is not None and moved.p_value < 1e-6
    assert (moved.n_reference, moved.n_window) == (5000, 800)
    single = class_distribution_drift([100, 0], [50, 0])
    assert single.p_value is None and not single.drifted and single.skipped_reason


_values = st.one_of(
    st.integers(-3, 3).map(float),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@settings(max_examples=80, deadline=None)
@given(
    ref=st.lists(st.lists(_values, min_size=3, max_size=3), min_size=1, max_size=40),
    win=st.lists(st.lists(_values, min_size=3, max_size=3), min_size=0, max_size=40),
    categorical=st.lists(st.booleans(), min_size=3, max_size=3),
    tests=st.sampled_from([("welch", "brown_forsythe", "chi2"), ("ks", "cvm"), ("chi2",)]),
)
def test_arbitrary_small_data_never_crashes_or_yields_nan(
    ref: list[list[float]], win: list[list[float]], categorical: list[bool], tests: tuple
) -> None:
    reference = Reference.fit(np.array(ref), ["a", "b", "c"], categorical=categorical)
    cfg = DriftConfig(
        min_window=2,
        continuous_tests=tests,
        discrete_tests=tests,
        distances=("psi", "wasserstein"),
    )
    res = DriftDetector(reference, cfg).score(np.array(win, dtype=float).reshape(-1, 3))
    assert res.n_skipped + sum(f.combined_p is not None for f in res.features) == 3
    _assert_no_nan_anywhere(res)


def _sparse_reference_and_windows() -> tuple[Reference, list[np.ndarray]]:
    """Discrete and tied features whose rare values force bins to merge, and windows of
    several sizes (the merges depend on the window size), some with NaN."""
    rng = np.random.default_rng(11)
    n = 3000
    values = np.arange(12.0)
    skewed = 0.5 ** np.arange(12)
    data = np.c_[
        rng.choice(values, size=n, p=skewed / skewed.sum()),  # discrete, rare high values
        rng.integers(0, 17, size=n),  # discrete, 17 values, even
        np.round(rng.exponential(size=n), 1),  # continuous with ties, a long sparse tail
        rng.normal(size=n),
        rng.choice(values, size=n, p=skewed[::-1] / skewed.sum()),
    ]
    windows = []
    for size, shift in ((400, 0.0), (150, 1.0), (400, 0.3), (1000, 0.0)):
        w = np.c_[
            rng.choice(values, size=size, p=skewed / skewed.sum()) + shift,
            rng.integers(0, 17, size=size),
            np.round(rng.exponential(size=size), 1),
            rng.normal(size=size) + shift,
            rng.choice(values, size=size, p=skewed[::-1] / skewed.sum()),
        ]
        windows.append(w)
    windows[2][:90, 0] = np.nan  # another window size for one feature only
    return Reference.fit(data, [f"f{i}" for i in range(5)]), windows


def test_binned_chi2_equals_scipy_on_each_feature_s_merged_bins() -> None:
    """The merges of sparse bins, applied to all features of a group at once and cached
    per window size, give each feature the chi-squared of its own merged table."""
    ref, windows = _sparse_reference_and_windows()
    detector = DriftDetector(ref, DriftConfig(min_window=50))
    merged_somewhere = False
    for window in [*windows, *windows]:  # the second time from the caches
        result = detector.score(window)
        for f, feature in enumerate(result.features):
            col = np.sort(window[:, f][np.isfinite(window[:, f])])
            edges, counts = ref.bin_edges[f], ref.bin_counts[f]
            mapping = merge_sparse_bins(counts, col.size)
            merged_somewhere |= bool(mapping[-1] < counts.size - 1)
            table = np.vstack(
                [
                    np.bincount(mapping, weights=counts),
                    np.bincount(mapping, weights=bin_counts_sorted(col, edges)),
                ]
            )
            chi2 = next(t for t in feature.tests if t.test == "chi2")
            if table.shape[1] < 2:
                assert chi2.p_value is None
                continue
            expected = stats.chi2_contingency(table, correction=False)
            assert chi2.statistic == pytest.approx(expected.statistic, rel=1e-9)
            assert chi2.p_value == pytest.approx(expected.pvalue, abs=1e-9)
    assert merged_somewhere  # the case under test did occur


def test_scores_are_the_numbers_of_the_result() -> None:
    """``scores`` (arrays, what the server exports) and ``score`` (objects) agree exactly."""
    ref, windows = _sparse_reference_and_windows()
    for config in (DriftConfig(min_window=50), DriftConfig(min_window=200, combine="cauchy")):
        detector = DriftDetector(ref, config)
        for window in windows:
            scores, result = detector.scores(window), detector.score(window)
            assert scores.evaluated == result.evaluated
            assert scores.drifted == result.drifted
            assert (scores.n_drifted, scores.n_skipped) == (result.n_drifted, result.n_skipped)
            assert scores.drifted_features == result.drifted_features
            assert not scores.statistics.flags.writeable
            for f, feature in enumerate(result.features):
                assert scores.skipped_reasons[f] == feature.skipped_reason or (
                    feature.skipped_reason is None and scores.evaluated_mask[f]
                )
                for test in feature.tests:
                    if test.test in scores.tests:
                        k = scores.tests.index(test.test)
                        got = (scores.statistics[f, k], scores.p_values[f, k])
                    else:
                        k = scores.distances.index(test.test)
                        got = (scores.distance_values[f, k], math.nan)
                    want = [math.nan if v is None else v for v in (test.statistic, test.p_value)]
                    np.testing.assert_array_equal(got, want)
                if feature.combined_p is None:
                    assert math.isnan(scores.combined[f]) and math.isnan(scores.adjusted[f])
                else:
                    assert scores.combined[f] == feature.combined_p
                    assert scores.adjusted[f] == feature.adjusted_p
