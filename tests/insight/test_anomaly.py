"""The Mahalanobis anomaly score: flag rate on reference-like rows, shifted and corrupted rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sidecar.config import AnomalyConfig
from sidecar.examples import MODEL_REPOSITORY
from sidecar.insight.anomaly import AnomalyFitError, MahalanobisScorer


def _config(**kw: Any) -> AnomalyConfig:
    return AnomalyConfig.model_validate({"reference": "reference.npy", **kw})


def _correlated(rng: np.random.Generator, rows: int, features: int = 12) -> np.ndarray:
    mixing = np.random.default_rng(99).standard_normal((features, features))
    return rng.standard_normal((rows, features)) @ mixing + 5.0


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    ref = np.load(MODEL_REPOSITORY / "digits" / "reference.npy")
    holdout = np.load(MODEL_REPOSITORY / "digits" / "holdout_features.npy")
    return np.concatenate([ref, holdout])


@pytest.mark.statistical
@pytest.mark.parametrize("projection", ["none", "pca", "random"])
@pytest.mark.parametrize("quantile", [0.9, 0.99])
def test_rows_like_the_reference_are_flagged_at_the_configured_rate(
    projection: str, quantile: float
) -> None:
    rng = np.random.default_rng(2026)
    reference = _correlated(rng, 4000)
    fresh = _correlated(rng, 20000)
    scorer = MahalanobisScorer.fit(
        reference, _config(quantile=quantile, projection=projection, components=8)
    )
    rate = float(np.mean(scorer.score(fresh) > 1))
    expected = 1 - quantile
    # Threshold estimated from 1,200 calibration rows: allow its sampling error too.
    tolerance = 4 * np.sqrt(expected * (1 - expected) / 1200) + 4 * np.sqrt(expected / 20000)
    assert abs(rate - expected) < tolerance, (rate, expected)


@pytest.mark.statistical
def test_digits_reference_rows_flagged_at_about_the_rate(digits: np.ndarray) -> None:
    rates = []
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(digits))
        reference, unseen = digits[order[:1400]], digits[order[1400:]]
        scorer = MahalanobisScorer.fit(reference, _config(quantile=0.95, seed=seed))
        rates.append(float(np.mean(scorer.score(unseen) > 1)))
    assert 0.025 < np.mean(rates) < 0.085, rates


@pytest.mark.parametrize("projection", ["none", "random"])
def test_shifted_noisy_and_corrupted_rows_are_flagged(digits: np.ndarray, projection: str) -> None:
    reference, unseen = digits[:1400], digits[1400:]
    scorer = MahalanobisScorer.fit(reference, _config(quantile=0.99, projection=projection))
    rng = np.random.default_rng(5)
    shifted = unseen + 4.0
    noisy = np.clip(unseen + rng.normal(0, 4, unseen.shape), 0, 16)
    corrupted = unseen.copy()
    corrupted[:, :8] = 16.0  # a stuck top row of pixels
    with_nan = unseen.copy()
    with_nan[:, 10] = np.nan
    assert np.mean(scorer.score(unseen) > 1) < 0.05
    for name, rows in (("shifted", shifted), ("noisy", noisy), ("corrupted", corrupted)):
        assert np.mean(scorer.score(rows) > 1) > 0.95, name
    assert np.isinf(scorer.score(with_nan)).all()


def test_score_is_distance_over_threshold_and_batch_independent(digits: np.ndarray) -> None:
    scorer = MahalanobisScorer.fit(digits[:1000], _config(projection="pca", components=10))
    rows = digits[1000:1100]
    together = scorer.score(rows)
    one_by_one = np.concatenate([scorer.score(rows[i : i + 1]) for i in range(len(rows))])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-12)
    np.testing.assert_allclose(together * scorer.threshold, scorer.distance(rows), rtol=1e-12)
    assert scorer.components == 10 and scorer.features == 64


def test_image_shaped_rows_are_flattened(digits: np.ndarray) -> None:
    scorer = MahalanobisScorer.fit(digits[:1000].reshape(-1, 8, 8), _config())
    flat = MahalanobisScorer.fit(digits[:1000], _config())
    np.testing.assert_allclose(
        scorer.score(digits[1000:1010].reshape(-1, 8, 8)), flat.score(digits[1000:1010])
    )


def test_fit_refuses_unusable_reference() -> None:
    with pytest.raises(AnomalyFitError, match="at least 20"):
        MahalanobisScorer.fit(np.ones((10, 3)), _config())
    with pytest.raises(AnomalyFitError, match="row dimension"):
        MahalanobisScorer.fit(np.ones(50), _config())
    with pytest.raises(AnomalyFitError, match="constant"):
        MahalanobisScorer.fit(np.ones((100, 3)), _config())
    rows = np.random.default_rng(0).standard_normal((100, 3))
    rows[:90, 0] = np.nan  # rows with a non-finite value are dropped
    with pytest.raises(AnomalyFitError, match="10 rows"):
        MahalanobisScorer.fit(rows, _config())
