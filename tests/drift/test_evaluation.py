"""What the drift worker hands the exporter per window: every defined value, nothing else.

``evaluation_of`` turns a window's scores (arrays) into the exporter's
``Evaluation`` without building per-feature objects; these tests hold it to the
detector's full result, feature by feature and test by test.
"""

from __future__ import annotations

import numpy as np
import pytest

from detectors.drift import DriftConfig, DriftDetector, DriftResult
from detectors.reference import Reference
from exporters.drift import Evaluation, FeatureValue
from sidecar.drift.executor import evaluation_of

NAMES = ("a", "b", "c", "flag", "const", "d")


def expected_values(result: DriftResult, exported: frozenset[str]) -> list[FeatureValue]:
    """The exported values, read off the detector's result objects."""
    values: list[FeatureValue] = []
    for feature in result.features:
        if feature.name not in exported:
            continue
        for test in feature.tests:
            if test.statistic is not None or test.p_value is not None:
                values.append(FeatureValue(feature.name, test.test, test.statistic, test.p_value))
        if feature.combined_p is not None:
            values.append(FeatureValue(feature.name, "combined", None, feature.combined_p))
        if feature.adjusted_p is not None:
            values.append(FeatureValue(feature.name, "adjusted", None, feature.adjusted_p))
    return values


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(0)
    n = 2000
    data = np.c_[
        rng.normal(size=(n, 2)),
        rng.integers(0, 6, size=n),
        rng.integers(0, 3, size=n),
        np.ones(n),
        rng.normal(size=n),
    ]
    return Reference.fit(data, NAMES, categorical=[False, False, False, True, False, False])


@pytest.mark.parametrize(
    "config",
    [
        DriftConfig(min_window=50),
        DriftConfig(
            min_window=50,
            continuous_tests=("welch", "ks", "cvm", "chi2"),
            distances=("psi", "wasserstein"),
            combine="cauchy",
            correction="bonferroni",
        ),
    ],
    ids=["defaults", "every-test"],
)
def test_the_evaluation_holds_exactly_the_result_s_values(
    reference: Reference, config: DriftConfig
) -> None:
    rng = np.random.default_rng(1)
    detector = DriftDetector(reference, config)
    exported = frozenset(NAMES[:4])  # "const" (untestable) and "d" are not exported
    for shift in (0.0, 0.4):
        window = np.c_[
            rng.normal(size=(300, 2)) + shift,
            rng.integers(0, 6, size=300),
            rng.integers(0, 4, size=300),  # a category the reference never had
            np.ones(300),
            rng.normal(size=300),
        ]
        window[:260, 1] = np.nan  # too few finite values: "b" is skipped
        result = detector.score(window)
        evaluation = evaluation_of(detector.scores(window), exported, 0.25, 1.7e9)
        assert list(evaluation.values) == expected_values(result, exported)
        assert evaluation.features == ("a", "b", "c", "flag")
        assert (evaluation.drifted, evaluation.features_drifted) == (
            result.drifted,
            result.n_drifted,
        )
        assert evaluation.features_skipped == result.n_skipped == 2
        assert evaluation.nonfinite_rows == result.n_nonfinite_rows_excluded == 260
        assert (evaluation.window_rows, evaluation.duration_seconds) == (300, 0.25)


def test_an_evaluation_checks_its_arrays_against_its_names() -> None:
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        Evaluation(
            drifted=False,
            features_drifted=0,
            features_skipped=0,
            window_rows=10,
            nonfinite_rows=0,
            duration_seconds=0.0,
            timestamp=0.0,
            features=("x",),
            columns=("welch", "combined"),
            statistics=np.zeros((1, 1)),
            p_values=np.zeros((1, 2)),
        )
    empty = Evaluation(False, 0, 0, 10, 0, 0.0, 0.0)
    assert empty.values == ()
