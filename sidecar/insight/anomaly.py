"""A per-row out-of-distribution score: Mahalanobis distance from the reference data.

Fitting (once, at model load, off the request path):

1. Reference rows with a non-finite value are dropped; the rest are split,
   seeded, into a *fit* part and a held-out *calibration* part.
2. Features are standardised with the fit part's mean and standard deviation
   (a constant feature keeps scale 1, so any deviation from its constant still
   counts).
3. Optionally projected to ``k`` dimensions: principal components of the
   standardised fit rows (``pca``) or a seeded Gaussian random projection
   (``random``).
4. The covariance of the result is shrunk towards a multiple of the identity
   (``shrinkage``) so that it is invertible, and its inverse Cholesky factor is
   folded into one matrix ``W``: the squared distance of a row is then
   ``‖((x − μ) / σ) W‖²``.
5. The threshold is the configured quantile of the calibration rows'
   distances. Placing it on rows the fit did not see makes new rows from the
   reference's distribution cross it at about ``1 − quantile``.

Scoring is one matrix product per batch: O(features × k) per row, at most
O(features²). The score reported is ``distance / threshold``: above 1 means
anomalous, whatever the model. A row with a non-finite value scores +inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidecar.config import AnomalyConfig

#: Fewest usable reference rows a fit accepts.
MIN_REFERENCE_ROWS = 20


class AnomalyFitError(ValueError):
    """The reference data cannot be fitted (too few rows, wrong shape)."""


@dataclass(frozen=True, eq=False)
class MahalanobisScorer:
    """A fitted scorer; ``score`` is pure and vectorised over the batch."""

    center: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    transform: np.ndarray  # (F, k): projection then whitening
    threshold: float  # distance at the configured reference quantile
    quantile: float
    fit_rows: int
    calibration_rows: int

    @property
    def features(self) -> int:
        """Features per row (the input's non-batch elements)."""
        return int(self.center.shape[0])

    @property
    def components(self) -> int:
        """Dimensions the distance is measured in."""
        return int(self.transform.shape[1])

    def distance(self, rows: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row (rows, *feature_shape) → (rows,)."""
        flat = np.asarray(rows, dtype=np.float64).reshape(rows.shape[0], -1)
        if flat.shape[1] != self.features:
            raise ValueError(f"rows have {flat.shape[1]} features, the scorer {self.features}")
        whitened = ((flat - self.center) / self.scale) @ self.transform
        dist = np.sqrt(np.einsum("ij,ij->i", whitened, whitened))
        dist[~np.isfinite(dist)] = np.inf
        return dist

    def score(self, rows: np.ndarray) -> np.ndarray:
        """``distance / threshold`` of each row: above 1 is anomalous."""
        return self.distance(rows) / self.threshold

    @classmethod
    def fit(cls, reference: np.ndarray, config: AnomalyConfig) -> MahalanobisScorer:
        """Fit on reference rows (N, *feature_shape); AnomalyFitError when it cannot."""
        data = np.asarray(reference, dtype=np.float64)
        if data.ndim < 2:
            raise AnomalyFitError(
                f"reference data must have a row dimension and features, got shape {data.shape}"
            )
        data = data.reshape(data.shape[0], -1)
        data = data[np.isfinite(data).all(axis=1)]
        n_rows, n_feat = data.shape
        n_cal = int(np.ceil(n_rows * config.calibration_fraction))
        if n_rows < MIN_REFERENCE_ROWS or n_rows - n_cal < 2 or n_cal < 2:
            raise AnomalyFitError(
                f"reference data has {n_rows} rows with finite values; at least "
                f"{MIN_REFERENCE_ROWS} are needed"
            )
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(n_rows)
        calib, fit = data[order[:n_cal]], data[order[n_cal:]]

        center = fit.mean(axis=0)
        scale = fit.std(axis=0)
        scale[~(scale > 0)] = 1.0
        z = (fit - center) / scale
        k = min(config.components, n_feat)
        if config.projection == "pca":
            _, _, vt = np.linalg.svd(z, full_matrices=False)
            projection = vt[:k].T
            if projection.shape[1] < k:  # fewer fit rows than components
                k = projection.shape[1]
        elif config.projection == "random":
            projection = rng.standard_normal((n_feat, k)) / np.sqrt(k)
        else:
            projection = np.eye(n_feat)
            k = n_feat
        y = z @ projection
        cov = np.atleast_2d(np.cov(y, rowvar=False))
        ridge = float(np.trace(cov)) / k if np.trace(cov) > 0 else 1.0
        shrunk = (1.0 - config.shrinkage) * cov + config.shrinkage * ridge * np.eye(k)
        try:
            lower = np.linalg.cholesky(shrunk)
        except np.linalg.LinAlgError as exc:
            raise AnomalyFitError(
                "the reference covariance is singular; raise insight.anomaly.shrinkage "
                "or use a projection"
            ) from exc
        transform = projection @ np.linalg.inv(lower).T
        partial = cls(center, scale, transform, 1.0, config.quantile, len(fit), len(calib))
        threshold = float(np.quantile(partial.distance(calib), config.quantile, method="higher"))
        if not threshold > 0:
            raise AnomalyFitError("every calibration row has distance 0; the reference is constant")
        return cls(center, scale, transform, threshold, config.quantile, len(fit), len(calib))
