"""The reference a detector compares windows against, precomputed once.

:meth:`Reference.fit` does every per-reference computation up front — sorted
columns, moments, medians, bin edges and bin counts — so that scoring a window
touches only the window. It also decides how each feature is tested:

* **categorical** — declared by the caller. Values are category codes; the
  test is chi-squared over the categories seen in the reference, plus one
  "unseen" category for window values the reference never had.
* **discrete** — auto-detected: at most ``max_discrete_values`` (default 20)
  distinct finite values in the reference. Every distinct value gets its own
  bin (so the binned chi-squared test is the exact-for-ties test), and
  rank tests that assume continuity (KS, Cramér-von Mises) are not used by
  default.
* **continuous** — everything else, including rounded data with many ties:
  bins are the reference's quantile bins (``max_bins`` equiprobable bins,
  edges made unique).

Features that cannot be tested get a reason in ``unusable`` (no finite
values, fewer than two, a single distinct value) and are skipped, never
crashed on. Non-finite reference values are excluded per feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from detectors._rows import FloatArray, IntArray
from detectors.chi2 import bin_counts_sorted, quantile_levels, unique_edges
from detectors.errors import InvalidReferenceError
from detectors.location_scale import SpreadSummary, median_of_sorted_rows, spread_summary_rows

__all__ = ["DEFAULT_MAX_BINS", "DEFAULT_MAX_DISCRETE_VALUES", "FeatureKind", "Reference"]

FeatureKind = Literal["continuous", "discrete", "categorical"]

#: Default number of reference-quantile bins for continuous features.
DEFAULT_MAX_BINS = 10
#: A non-categorical feature with at most this many distinct reference values is "discrete".
DEFAULT_MAX_DISCRETE_VALUES = 20


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Reference:
    """Precomputed reference statistics for ``F`` features (arrays are read-only).

    ``sorted_rows[f, :n_finite[f]]`` holds feature ``f``'s finite reference
    values sorted ascending (the rest is NaN padding). For binned tests,
    ``bin_edges[f]`` are the interior edges (bin ``k`` is ``[e_{k-1}, e_k)``;
    for categorical features they are the category values) and
    ``bin_counts[f]`` the reference counts per bin.
    """

    feature_names: tuple[str, ...]
    kinds: tuple[FeatureKind, ...]
    n_rows: int
    n_finite: IntArray
    sorted_rows: FloatArray
    mean: FloatArray
    var: FloatArray
    std: FloatArray
    median: FloatArray
    spread: SpreadSummary
    n_distinct: IntArray
    bin_edges: tuple[FloatArray, ...]
    bin_counts: tuple[IntArray, ...]
    n_bins: IntArray
    padded_edges: FloatArray
    padded_counts: IntArray
    unusable: tuple[str | None, ...]
    max_bins: int
    max_discrete_values: int

    @property
    def n_features(self) -> int:
        """Number of features (columns)."""
        return len(self.feature_names)

    @classmethod
    def fit(
        cls,
        data: npt.ArrayLike,
        feature_names: Sequence[str],
        categorical: Sequence[bool] | None = None,
        max_bins: int = DEFAULT_MAX_BINS,
        max_discrete_values: int = DEFAULT_MAX_DISCRETE_VALUES,
    ) -> Reference:
        """Fit on ``data`` of shape ``(N, F)``; ``feature_names`` names the F columns.

        Raises :class:`InvalidReferenceError` for a wrong rank, no rows, or
        names/flags that do not match the columns. Individual unusable columns
        are not errors; they are recorded in ``unusable``.
        """
        arr = np.asarray(data)
        if arr.ndim != 2:
            raise InvalidReferenceError(f"reference data must be 2-D (N, F), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InvalidReferenceError(
                f"reference data must be real numbers, got dtype {arr.dtype}"
            )
        n_rows, n_feat = arr.shape
        if n_rows == 0 or n_feat == 0:
            raise InvalidReferenceError(
                f"reference data has no rows or no columns: shape {arr.shape}"
            )
        names = tuple(str(n) for n in feature_names)
        if len(names) != n_feat:
            raise InvalidReferenceError(
                f"{len(names)} feature names given for {n_feat} columns (shape {arr.shape})"
            )
        if len(set(names)) != len(names):
            raise InvalidReferenceError("feature names must be unique")
        cat = tuple(bool(c) for c in categorical) if categorical is not None else (False,) * n_feat
        if len(cat) != n_feat:
            raise InvalidReferenceError(
                f"{len(cat)} categorical flags given for {n_feat} columns (shape {arr.shape})"
            )
        if max_bins < 2:
            raise InvalidReferenceError(f"max_bins must be >= 2, got {max_bins}")
        if max_discrete_values < 1:
            raise InvalidReferenceError(
                f"max_discrete_values must be >= 1, got {max_discrete_values}"
            )

        rows = np.array(arr.T, dtype=np.float64)  # (F, N), a copy we own
        finite = np.isfinite(rows)
        rows[~finite] = np.nan
        rows.sort(axis=1)  # NaN last
        n_finite = finite.sum(axis=1).astype(np.int64)

        mean = np.zeros(n_feat)
        var = np.zeros(n_feat)
        median = np.zeros(n_feat)
        zbar = np.zeros(n_feat)
        ss = np.zeros(n_feat)
        quantiles = np.zeros((n_feat, max_bins - 1))
        n_distinct = np.zeros(n_feat, dtype=np.int64)
        # Moments, medians and quantiles for all features with the same finite count at once.
        for n in np.unique(n_finite).tolist():
            if n == 0:
                continue
            group = np.flatnonzero(n_finite == n)
            block = rows[group, :n]
            mean[group] = block.mean(axis=1)
            if n >= 2:
                var[group] = block.var(axis=1, ddof=1)
            median[group] = median_of_sorted_rows(block, n)
            spread_g = spread_summary_rows(block, median[group])
            zbar[group], ss[group] = spread_g.zbar, spread_g.ss
            quantiles[group] = np.quantile(block, quantile_levels(max_bins), axis=1).T
            n_distinct[group] = 1 + (block[:, 1:] != block[:, :-1]).sum(axis=1)

        kinds: list[FeatureKind] = []
        edges: list[FloatArray] = []
        counts: list[IntArray] = []
        unusable: list[str | None] = []
        for f in range(n_feat):
            n = int(n_finite[f])
            col = rows[f, :n]
            reason: str | None = None
            if n == 0:
                reason = "the reference has no finite values"
            elif n < 2:
                reason = "the reference has fewer than 2 finite values"
            elif n_distinct[f] == 1:
                reason = f"the reference column is constant (single distinct value {col[0]:g})"
            if cat[f]:
                kind: FeatureKind = "categorical"
            elif 0 < n_distinct[f] <= max_discrete_values:
                kind = "discrete"
            else:
                kind = "continuous"
            kinds.append(kind)
            unusable.append(reason)
            if kind == "continuous":
                e = unique_edges(quantiles[f], col[0]) if n else np.empty(0)
            else:
                distinct = col[np.concatenate([[True], col[1:] != col[:-1]])] if n else col
                # categorical: the categories; discrete: one bin per value.
                e = distinct if kind == "categorical" else distinct[1:]
            if kind == "categorical":
                c = np.searchsorted(col, e, side="right") - np.searchsorted(col, e, side="left")
            else:
                c = bin_counts_sorted(col, e) if n > 0 else np.zeros(e.size + 1, dtype=np.int64)
            edges.append(_readonly(np.ascontiguousarray(e, dtype=np.float64)))
            counts.append(_readonly(np.asarray(c, dtype=np.int64)))

        n_bins = np.array([c.size for c in counts], dtype=np.int64)
        k_max = int(n_bins.max())
        padded_edges = np.full((n_feat, max(k_max - 1, 0)), np.inf)
        padded_counts = np.zeros((n_feat, k_max), dtype=np.int64)
        for f, (e, c) in enumerate(zip(edges, counts, strict=True)):
            if kinds[f] != "categorical":
                padded_edges[f, : e.size] = e
            padded_counts[f, : c.size] = c
        std = np.sqrt(np.where(n_finite > 1, var * (n_finite - 1) / np.maximum(n_finite, 1), 0.0))
        spread = SpreadSummary(
            n=_readonly(n_finite.astype(np.float64)), zbar=_readonly(zbar), ss=_readonly(ss)
        )
        return cls(
            feature_names=names,
            kinds=tuple(kinds),
            n_rows=n_rows,
            n_finite=_readonly(n_finite),
            sorted_rows=_readonly(rows),
            mean=_readonly(mean),
            var=_readonly(var),
            std=_readonly(std),
            median=_readonly(median),
            spread=spread,
            n_distinct=_readonly(n_distinct),
            bin_edges=tuple(edges),
            bin_counts=tuple(counts),
            n_bins=_readonly(n_bins),
            padded_edges=_readonly(padded_edges),
            padded_counts=_readonly(padded_counts),
            unusable=tuple(unusable),
            max_bins=max_bins,
            max_discrete_values=max_discrete_values,
        )
