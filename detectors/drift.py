"""Dataset drift: several tests per feature, combined per feature, corrected across features.

:class:`DriftDetector` compares a window of live rows with a fitted
:class:`~detectors.reference.Reference`:

1. **Per feature**, the tests configured for the feature's kind run
   (vectorised across features). Non-finite window values are excluded for
   that feature only and counted.
2. **Per feature**, their p-values are combined into one p-value by a method
   valid under dependence between the tests (Cauchy combination, or
   Bonferroni across the tests).
3. **Across features**, the combined p-values are corrected (Bonferroni or
   Benjamini-Hochberg). A feature is drifted when its adjusted p-value is at
   most ``alpha``; the dataset is drifted when any feature is.

Because one p-value per feature enters the correction, the dataset-level
false-alarm rate is at most ``alpha`` whatever the number of tests per
feature. Distances (PSI, Wasserstein) are reported alongside, never tested.

Nothing here raises for bad *data*: a window that is too small is returned
as not evaluated with a reason, and an untestable feature (constant
reference, all-NaN window column, fewer than two bins) is skipped with a
reason and ``p_value=None``. Only a window whose shape does not match the
reference raises :class:`~detectors.errors.ShapeMismatchError`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from detectors._rows import FloatArray, IntArray, MergedRows, merge_sorted_rows
from detectors.chi2 import (
    MIN_EXPECTED,
    Chi2Result,
    binned_chi2_rows,
    chi2_homogeneity,
    merge_sparse_bins,
    merge_sparse_categories,
)
from detectors.correction import (
    benjamini_hochberg,
    bonferroni,
    bonferroni_min,
    cauchy_combination,
)
from detectors.cvm import cramervonmises_merged
from detectors.distance import PSI_EPSILON, PsiLevel, psi_from_counts, psi_level, wasserstein_merged
from detectors.errors import InvalidInputError, ShapeMismatchError
from detectors.ks import KSMethod, ks_pvalue, ks_statistic_rows
from detectors.location_scale import (
    SpreadSummary,
    brown_forsythe_from_summaries,
    median_of_sorted_rows,
    spread_summary_rows,
    welch_ttest_from_stats,
)
from detectors.reference import FeatureKind, Reference

__all__ = [
    "DEFAULT_CONTINUOUS_TESTS",
    "DEFAULT_DISCRETE_TESTS",
    "DEFAULT_TEST_WEIGHTS",
    "ClassDriftResult",
    "CombineMethod",
    "Correction",
    "DistanceName",
    "DriftConfig",
    "DriftDetector",
    "DriftResult",
    "FeatureResult",
    "TestName",
    "TestResult",
    "class_distribution_drift",
]

TestName = Literal["welch", "brown_forsythe", "chi2", "ks", "cvm"]
DistanceName = Literal["psi", "wasserstein"]
CombineMethod = Literal["cauchy", "bonferroni"]
Correction = Literal["bonferroni", "bh"]

#: Default tests for continuous features (chosen by measurement: docs/drift.md).
DEFAULT_CONTINUOUS_TESTS: tuple[TestName, ...] = ("welch", "brown_forsythe", "chi2")
#: Default tests for discrete features (few distinct values): tests that are valid with ties.
DEFAULT_DISCRETE_TESTS: tuple[TestName, ...] = ("welch", "brown_forsythe", "chi2")
#: Default relative Cauchy weights: most of the per-feature alpha goes to the mean test
#: (the most common drift, and the one at the edge of detectability), the rest buys
#: sensitivity to spread and shape changes (measured trade-off in docs/drift.md).
DEFAULT_TEST_WEIGHTS: tuple[tuple[TestName, float], ...] = (
    ("welch", 0.8),
    ("brown_forsythe", 0.1),
    ("chi2", 0.1),
)

# Tests that need the reference and window merged into one sorted sample.
_MERGE_TESTS = frozenset({"cvm"})

# put(test, statistics, p-values, reason used where a p-value is undefined)
_PutFn = Callable[[str, FloatArray, FloatArray, str], None]


@dataclass(frozen=True)
class DriftConfig:
    """How a :class:`DriftDetector` tests, combines and corrects.

    ``test_weights`` gives relative weights for the Cauchy combination; they are
    renormalised over the tests that produced a p-value for a feature, and a
    test not listed weighs 1 (so give a weight for every test you configure).
    ``min_window`` is the smallest number of finite values a feature needs in
    a window to be tested, and the smallest window evaluated at all.
    """

    alpha: float = 0.05
    correction: Correction = "bh"
    continuous_tests: tuple[TestName, ...] = DEFAULT_CONTINUOUS_TESTS
    discrete_tests: tuple[TestName, ...] = DEFAULT_DISCRETE_TESTS
    categorical_tests: tuple[Literal["chi2"], ...] = ("chi2",)
    combine: CombineMethod = "cauchy"
    test_weights: tuple[tuple[TestName, float], ...] = DEFAULT_TEST_WEIGHTS
    distances: tuple[DistanceName, ...] = ("psi",)
    psi_thresholds: tuple[float, float] = (0.1, 0.25)
    psi_epsilon: float = PSI_EPSILON
    min_window: int = 50
    ks_method: KSMethod = "asymp"
    min_expected: float = MIN_EXPECTED

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise InvalidInputError(f"DriftConfig.alpha must be in (0, 1), got {self.alpha}")
        if self.correction not in get_args(Correction):
            raise InvalidInputError(
                f"DriftConfig.correction must be one of {get_args(Correction)}, "
                f"got {self.correction!r}"
            )
        if self.combine not in get_args(CombineMethod):
            raise InvalidInputError(
                f"DriftConfig.combine must be one of {get_args(CombineMethod)}, "
                f"got {self.combine!r}"
            )
        for name in ("continuous_tests", "discrete_tests"):
            tests = getattr(self, name)
            if (
                not tests
                or any(t not in get_args(TestName) for t in tests)
                or len(set(tests)) != len(tests)
            ):
                raise InvalidInputError(
                    f"DriftConfig.{name} must be distinct names from {get_args(TestName)}, "
                    f"got {tests!r}"
                )
        if tuple(self.categorical_tests) != ("chi2",):
            raise InvalidInputError(
                "DriftConfig.categorical_tests supports only ('chi2',), "
                f"got {self.categorical_tests!r}"
            )
        for test, weight in self.test_weights:
            if test not in get_args(TestName) or not (weight > 0 and np.isfinite(weight)):
                raise InvalidInputError(
                    f"DriftConfig.test_weights entries must be (test name, weight > 0), "
                    f"got {(test, weight)!r}"
                )
        if any(d not in get_args(DistanceName) for d in self.distances):
            raise InvalidInputError(
                f"DriftConfig.distances must be names from {get_args(DistanceName)}, "
                f"got {self.distances!r}"
            )
        moderate, major = self.psi_thresholds
        if not 0 <= moderate <= major:
            raise InvalidInputError(
                f"DriftConfig.psi_thresholds must satisfy 0 <= moderate <= major, "
                f"got {self.psi_thresholds}"
            )
        if not 0 < self.psi_epsilon < 1:
            raise InvalidInputError(
                f"DriftConfig.psi_epsilon must be in (0, 1), got {self.psi_epsilon}"
            )
        if self.min_window < 2:
            raise InvalidInputError(f"DriftConfig.min_window must be >= 2, got {self.min_window}")
        if self.ks_method not in ("auto", "asymp", "exact"):
            raise InvalidInputError(
                f"DriftConfig.ks_method must be 'auto', 'asymp' or 'exact', got {self.ks_method!r}"
            )
        if not self.min_expected > 0:
            raise InvalidInputError(
                f"DriftConfig.min_expected must be > 0, got {self.min_expected}"
            )

    def tests_for(self, kind: FeatureKind) -> tuple[str, ...]:
        """The tests run on features of ``kind``."""
        if kind == "continuous":
            return self.continuous_tests
        if kind == "discrete":
            return self.discrete_tests
        return self.categorical_tests

    def weight_of(self, test: str) -> float:
        """Relative Cauchy weight of ``test`` (1 unless configured)."""
        for name, weight in self.test_weights:
            if name == test:
                return float(weight)
        return 1.0


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test (or distance) on one feature. ``p_value`` is None for distances and skips."""

    __test__ = False  # not a pytest test class

    test: str
    statistic: float | None
    p_value: float | None
    skipped_reason: str | None = None


@dataclass(frozen=True, slots=True)
class FeatureResult:
    """Everything about one feature in one evaluation.

    ``combined_p`` is the per-feature p-value after combining its tests and
    ``adjusted_p`` the same after the correction across features; both are
    None when the feature was skipped (then ``skipped_reason`` says why).
    """

    name: str
    kind: FeatureKind
    n_window: int
    tests: tuple[TestResult, ...]
    combined_p: float | None
    adjusted_p: float | None
    drifted: bool
    skipped_reason: str | None = None
    psi_level: PsiLevel | None = None


@dataclass(frozen=True, slots=True)
class DriftResult:
    """The verdict on one window.

    ``evaluated`` is False when the window was too small (``not_evaluated_reason``
    says so); then nothing is drifted. ``n_nonfinite_rows_excluded`` counts
    window rows with at least one non-finite value (excluded only for the
    features where the value is non-finite).
    """

    evaluated: bool
    drifted: bool
    n_drifted: int
    n_features: int
    n_skipped: int
    n_window: int
    n_reference: int
    n_nonfinite_rows_excluded: int
    alpha: float
    correction: Correction
    features: tuple[FeatureResult, ...]
    not_evaluated_reason: str | None = None

    @property
    def drifted_features(self) -> tuple[str, ...]:
        """Names of the features flagged after correction."""
        return tuple(f.name for f in self.features if f.drifted)


@dataclass(frozen=True, slots=True)
class ClassDriftResult:
    """Chi-squared verdict on a classifier's predicted-class counts."""

    statistic: float | None
    dof: int
    p_value: float | None
    drifted: bool
    alpha: float
    n_reference: int
    n_window: int
    groups: tuple[tuple[int, ...], ...]
    skipped_reason: str | None = None


def class_distribution_drift(
    reference_counts: npt.ArrayLike,
    window_counts: npt.ArrayLike,
    alpha: float = 0.05,
    min_expected: float = MIN_EXPECTED,
) -> ClassDriftResult:
    """Has the distribution of predicted classes changed? Chi-squared test of homogeneity.

    ``reference_counts[k]`` and ``window_counts[k]`` count predictions of class
    ``k``. Sparse classes are merged (see :mod:`detectors.chi2`); with fewer
    than two groups left the test is skipped with a reason.
    """
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha}")
    res: Chi2Result = chi2_homogeneity(reference_counts, window_counts, min_expected)
    return ClassDriftResult(
        statistic=res.statistic,
        dof=res.dof,
        p_value=res.p_value,
        drifted=res.p_value is not None and res.p_value <= alpha,
        alpha=alpha,
        n_reference=int(np.sum(reference_counts)),
        n_window=int(np.sum(window_counts)),
        groups=res.groups,
        skipped_reason=res.skipped_reason,
    )


@dataclass(slots=True)
class _Outcome:
    """Per-feature scratch space filled while scoring (private, mutable)."""

    stats: dict[str, float | None] = field(default_factory=dict)
    pvals: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str | None] = field(default_factory=dict)
    distances: dict[str, float | None] = field(default_factory=dict)
    psi: float | None = None


class DriftDetector:
    """Scores windows against a fixed reference. ``score()`` reads only; nothing is mutated."""

    def __init__(self, reference: Reference, config: DriftConfig | None = None) -> None:
        self._reference = reference
        self._config = config if config is not None else DriftConfig()

    @property
    def reference(self) -> Reference:
        """The reference windows are compared with."""
        return self._reference

    @property
    def config(self) -> DriftConfig:
        """The detector's configuration."""
        return self._config

    def score(self, window: npt.ArrayLike) -> DriftResult:
        """Test a window of shape ``(n, F)`` against the reference."""
        ref, cfg = self._reference, self._config
        x = np.asarray(window)
        n_feat = ref.n_features
        if x.ndim != 2 or x.shape[1] != n_feat:
            raise ShapeMismatchError(
                f"window has shape {x.shape} but the reference has shape "
                f"{(ref.n_rows, n_feat)}: expected (n, {n_feat})",
                expected=(ref.n_rows, n_feat),
                got=tuple(x.shape),
            )
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise InvalidInputError(f"window must hold real numbers, got dtype {x.dtype}")
        n_rows = int(x.shape[0])
        rows = np.array(x.T, dtype=np.float64)
        finite = np.isfinite(rows)
        all_finite = bool(finite.all())
        n_bad_rows = 0 if all_finite else int((~finite).any(axis=0).sum())
        if n_rows < cfg.min_window:
            return self._not_evaluated(
                n_rows,
                n_bad_rows,
                f"window has {n_rows} rows, fewer than min_window={cfg.min_window}",
            )
        if not all_finite:
            rows[~finite] = np.nan
        rows.sort(axis=1)
        n_valid = finite.sum(axis=1) if not all_finite else np.full(n_feat, n_rows)

        outcomes: list[_Outcome | None] = [None] * n_feat
        skip: list[str | None] = list(ref.unusable)
        groups: dict[tuple[FeatureKind, int, int], list[int]] = defaultdict(list)
        for f in range(n_feat):
            if skip[f] is not None:
                continue
            nv = int(n_valid[f])
            if nv == 0:
                skip[f] = "the window has no finite values for this feature"
            elif nv < cfg.min_window:
                skip[f] = (
                    f"the window has {nv} finite values for this feature, "
                    f"fewer than min_window={cfg.min_window}"
                )
            else:
                groups[(ref.kinds[f], int(ref.n_finite[f]), nv)].append(f)

        for (kind, n_ref, n_win), members in groups.items():
            idx = np.asarray(members, dtype=np.int64)
            results = self._run_group(kind, idx, n_ref, rows[idx, :n_win])
            for f, outcome in zip(members, results, strict=True):
                outcomes[f] = outcome

        return self._assemble(outcomes, skip, n_valid, n_rows, n_bad_rows)

    # ------------------------------------------------------------------ internals

    def _run_group(
        self, kind: FeatureKind, idx: IntArray, n_ref: int, win: FloatArray
    ) -> list[_Outcome]:
        """Run every configured test and distance on features ``idx`` sharing sizes."""
        ref, cfg = self._reference, self._config
        n_win = win.shape[1]
        n_f = idx.shape[0]
        tests = cfg.tests_for(kind)
        out = [_Outcome() for _ in range(n_f)]

        def put(test: str, stat: FloatArray, p: FloatArray, undefined: str) -> None:
            for k in range(n_f):
                if np.isfinite(p[k]):
                    out[k].stats[test] = float(stat[k])
                    out[k].pvals[test] = float(p[k])
                    out[k].reasons[test] = None
                else:
                    out[k].stats[test] = None
                    out[k].pvals[test] = None
                    out[k].reasons[test] = undefined

        merged: MergedRows | None = None
        if kind != "categorical" and (
            _MERGE_TESTS.intersection(tests) or "wasserstein" in cfg.distances
        ):
            merged = merge_sorted_rows(ref.sorted_rows[idx, :n_ref], win)

        if "welch" in tests:
            t, p = welch_ttest_from_stats(
                ref.mean[idx], ref.var[idx], n_ref, win.mean(axis=1), win.var(axis=1, ddof=1), n_win
            )
            put("welch", t, p, "both samples have zero variance")
        if "brown_forsythe" in tests:
            med = median_of_sorted_rows(win, n_win)
            ref_spread = SpreadSummary(
                n=ref.spread.n[idx], zbar=ref.spread.zbar[idx], ss=ref.spread.ss[idx]
            )
            w, p = brown_forsythe_from_summaries(ref_spread, spread_summary_rows(win, med))
            put("brown_forsythe", w, p, "both samples have zero spread about their medians")
        if "ks" in tests and kind != "categorical":
            d = ks_statistic_rows(ref.sorted_rows[idx, :n_ref], win)
            d, p = ks_pvalue(d, n_ref, n_win, cfg.ks_method)
            put("ks", d, p, "the KS p-value is undefined for these sample sizes")
        if "cvm" in tests and merged is not None:
            t, p = cramervonmises_merged(merged)
            # scipy's mid-rank formula is not valid with ties (it rejects identical tied
            # samples), so tied features get no CvM p-value rather than a wrong one.
            tied = ~merged.last_of_tie.all(axis=1)
            put(
                "cvm",
                t,
                np.where(tied, np.nan, p),
                "tied values: Cramér-von Mises needs continuous data",
            )

        need_counts = "chi2" in tests or "psi" in cfg.distances
        if need_counts:
            ref_counts, win_counts = self._bin_counts(kind, idx, win)
            if "chi2" in tests:
                self._chi2(kind, ref_counts, win_counts, n_win, put)
            if "psi" in cfg.distances:
                psi = self._psi(kind, ref_counts, win_counts)
                for k in range(n_f):
                    out[k].psi = float(psi[k]) if np.isfinite(psi[k]) else None
                    out[k].distances["psi"] = out[k].psi
        if "wasserstein" in cfg.distances and merged is not None:
            std = ref.std[idx]
            dist = wasserstein_merged(merged)
            for k in range(n_f):
                out[k].distances["wasserstein"] = float(dist[k] / std[k]) if std[k] > 0 else None
        return out

    def _bin_counts(
        self, kind: FeatureKind, idx: IntArray, win: FloatArray
    ) -> tuple[list[IntArray], list[IntArray]]:
        """Reference and window counts per bin (categorical: plus an 'unseen' bin)."""
        ref = self._reference
        ref_counts: list[IntArray] = []
        win_counts: list[IntArray] = []
        for k, f in enumerate(idx.tolist()):
            edges = ref.bin_edges[f]
            row = win[k]
            if kind == "categorical":
                lo = np.searchsorted(row, edges, side="left")
                hi = np.searchsorted(row, edges, side="right")
                seen = hi - lo
                unseen = row.shape[0] - int(seen.sum())
                ref_counts.append(np.append(ref.bin_counts[f], 0))
                win_counts.append(np.append(seen, unseen).astype(np.int64))
            else:
                cum = np.searchsorted(row, edges, side="left")
                bounds = np.concatenate([[0], cum, [row.shape[0]]])
                ref_counts.append(ref.bin_counts[f])
                win_counts.append(np.diff(bounds).astype(np.int64))
        return ref_counts, win_counts

    def _chi2(
        self,
        kind: FeatureKind,
        ref_counts: list[IntArray],
        win_counts: list[IntArray],
        n_win: int,
        put: _PutFn,
    ) -> None:
        """Chi-squared over bins after merging sparse ones; vectorised over features."""
        cfg = self._config
        merged_r: list[IntArray] = []
        merged_w: list[IntArray] = []
        for r, w in zip(ref_counts, win_counts, strict=True):
            if kind == "categorical":
                groups = merge_sparse_categories(r, w, cfg.min_expected)
                merged_r.append(np.array([r[list(g)].sum() for g in groups], dtype=np.int64))
                merged_w.append(np.array([w[list(g)].sum() for g in groups], dtype=np.int64))
                continue
            n_ref = int(r.sum())
            if r.size < 2 or int(r.min()) * min(n_ref, n_win) >= cfg.min_expected * n_ref:
                merged_r.append(r)
                merged_w.append(w)
                continue
            mapping = merge_sparse_bins(r, n_win, cfg.min_expected)
            n_new = int(mapping[-1]) + 1
            merged_r.append(np.bincount(mapping, weights=r, minlength=n_new).astype(np.int64))
            merged_w.append(np.bincount(mapping, weights=w, minlength=n_new).astype(np.int64))
        n_bins = np.array([r.size for r in merged_r], dtype=np.int64)
        k_max = int(n_bins.max())
        pad_r = np.zeros((len(merged_r), k_max))
        pad_w = np.zeros((len(merged_r), k_max))
        for k, (r, w) in enumerate(zip(merged_r, merged_w, strict=True)):
            pad_r[k, : r.size] = r
            pad_w[k, : w.size] = w
        stat, p = binned_chi2_rows(pad_r, pad_w, n_bins)
        put(
            "chi2",
            stat,
            p,
            f"fewer than 2 bins with expected count >= {cfg.min_expected:g} "
            f"for a window of {n_win}",
        )

    def _psi(
        self, kind: FeatureKind, ref_counts: list[IntArray], win_counts: list[IntArray]
    ) -> FloatArray:
        k_max = max(r.size for r in ref_counts)
        pad_r = np.zeros((len(ref_counts), k_max))
        pad_w = np.zeros((len(ref_counts), k_max))
        for k, (r, w) in enumerate(zip(ref_counts, win_counts, strict=True)):
            pad_r[k, : r.size] = r
            pad_w[k, : w.size] = w
        return psi_from_counts(pad_r, pad_w, self._config.psi_epsilon)

    def _assemble(
        self,
        outcomes: Sequence[_Outcome | None],
        skip: list[str | None],
        n_valid: IntArray,
        n_rows: int,
        n_bad_rows: int,
    ) -> DriftResult:
        """Combine per feature, correct across features, and build the frozen result."""
        ref, cfg = self._reference, self._config
        n_feat = ref.n_features
        combined: list[float | None] = [None] * n_feat
        # Features are combined in groups that share the set of tests that produced a p-value.
        patterns: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for f, outcome in enumerate(outcomes):
            if outcome is None or skip[f] is not None:
                continue
            avail = tuple(t for t, p in outcome.pvals.items() if p is not None)
            if avail:
                patterns[avail].append(f)
            else:
                reasons = "; ".join(f"{t}: {r}" for t, r in outcome.reasons.items() if r)
                skip[f] = f"no test could be computed ({reasons})"
        for names, feats in patterns.items():
            pmat = np.array(
                [[_pval(outcomes[f], t) for t in names] for f in feats], dtype=np.float64
            )
            w = np.array([cfg.weight_of(t) for t in names])
            if len(names) == 1:
                comb = pmat[:, 0]
            elif cfg.combine == "bonferroni":
                comb = bonferroni_min(pmat, w / w.sum())
            else:
                comb = cauchy_combination(pmat, w / w.sum())
            for f, value in zip(feats, comb.tolist(), strict=True):
                combined[f] = value

        tested = [f for f in range(n_feat) if combined[f] is not None]
        adjusted: list[float | None] = [None] * n_feat
        if tested:
            p = np.array([combined[f] for f in tested], dtype=np.float64)
            corr = (
                bonferroni(p, cfg.alpha)
                if cfg.correction == "bonferroni"
                else (benjamini_hochberg(p, cfg.alpha))
            )
            for f, adj in zip(tested, corr.p_adjusted.tolist(), strict=True):
                adjusted[f] = adj

        features: list[FeatureResult] = []
        for f in range(n_feat):
            outcome = outcomes[f]
            tests: list[TestResult] = []
            level: PsiLevel | None = None
            if outcome is not None:
                for t in outcome.pvals:
                    tests.append(
                        TestResult(t, outcome.stats[t], outcome.pvals[t], outcome.reasons[t])
                    )
                for d, value in outcome.distances.items():
                    tests.append(
                        TestResult(
                            d,
                            value,
                            None,
                            None if value is not None else "undefined for this feature",
                        )
                    )
                if outcome.psi is not None:
                    level = psi_level(outcome.psi, cfg.psi_thresholds)
            adj = adjusted[f]
            features.append(
                FeatureResult(
                    name=ref.feature_names[f],
                    kind=ref.kinds[f],
                    n_window=int(n_valid[f]),
                    tests=tuple(tests),
                    combined_p=combined[f],
                    adjusted_p=adj,
                    drifted=adj is not None and adj <= cfg.alpha,
                    skipped_reason=skip[f] if combined[f] is None else None,
                    psi_level=level,
                )
            )
        n_drifted = sum(fr.drifted for fr in features)
        return DriftResult(
            evaluated=True,
            drifted=n_drifted > 0,
            n_drifted=n_drifted,
            n_features=n_feat,
            n_skipped=n_feat - len(tested),
            n_window=n_rows,
            n_reference=ref.n_rows,
            n_nonfinite_rows_excluded=n_bad_rows,
            alpha=cfg.alpha,
            correction=cfg.correction,
            features=tuple(features),
        )

    def _not_evaluated(self, n_rows: int, n_bad_rows: int, reason: str) -> DriftResult:
        ref, cfg = self._reference, self._config
        features = tuple(
            FeatureResult(
                name=name,
                kind=kind,
                n_window=0,
                tests=(),
                combined_p=None,
                adjusted_p=None,
                drifted=False,
                skipped_reason="window not evaluated: " + reason,
            )
            for name, kind in zip(ref.feature_names, ref.kinds, strict=True)
        )
        return DriftResult(
            evaluated=False,
            drifted=False,
            n_drifted=0,
            n_features=ref.n_features,
            n_skipped=ref.n_features,
            n_window=n_rows,
            n_reference=ref.n_rows,
            n_nonfinite_rows_excluded=n_bad_rows,
            alpha=cfg.alpha,
            correction=cfg.correction,
            features=features,
            not_evaluated_reason=reason,
        )


def _pval(outcome: _Outcome | None, test: str) -> float:
    """The p-value a test produced (only called for tests known to have one)."""
    assert outcome is not None
    p = outcome.pvals[test]
    assert p is not None
    return p
