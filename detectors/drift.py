"""Dataset drift: several tests per feature, combined per feature, corrected across features.

:class:`DriftDetector` compares a window of live rows with a fitted
:class:`~detectors.reference.Reference`:

1. **Per feature**, the tests configured for the feature's kind run
   (vectorised across features). Non-finite window values are excluded for
   that feature only and counted.
2. **Per feature**, their p-values are combined into one p-value by a method
   valid under dependence between the tests: weighted Bonferroni across the
   tests (default; exact under any dependence) or the Cauchy combination
   (valid in the small-threshold limit; measured slightly liberal at 0.01-0.05,
   docs/drift.md).
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from detectors._rows import BoolArray, FloatArray, IntArray, MergedRows, merge_sorted_rows
from detectors.chi2 import (
    MIN_EXPECTED,
    Chi2Result,
    binned_chi2_rows,
    chi2_homogeneity,
    merge_sparse_bins,
    merge_sparse_categories,
)
from detectors.correction import (
    bh_adjusted,
    bonferroni,
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
    "WindowScores",
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
#: Default relative weights: most of the per-feature alpha goes to the mean test
#: (the most common drift, and the one at the edge of detectability), the rest buys
#: sensitivity to spread and shape changes (measured trade-off in docs/drift.md).
DEFAULT_TEST_WEIGHTS: tuple[tuple[TestName, float], ...] = (
    ("welch", 0.8),
    ("brown_forsythe", 0.1),
    ("chi2", 0.1),
)


@dataclass(frozen=True)
class DriftConfig:
    """How a :class:`DriftDetector` tests, combines and corrects.

    ``test_weights`` gives relative weights for the per-feature combination
    (weighted Bonferroni by default, or Cauchy); they are renormalised over
    the tests that produced a p-value for a feature, and a test not listed
    weighs 1 (so give a weight for every test you configure).
    ``min_window`` is the smallest number of finite values a feature needs in
    a window to be tested, and the smallest window evaluated at all.
    """

    alpha: float = 0.05
    correction: Correction = "bh"
    continuous_tests: tuple[TestName, ...] = DEFAULT_CONTINUOUS_TESTS
    discrete_tests: tuple[TestName, ...] = DEFAULT_DISCRETE_TESTS
    categorical_tests: tuple[Literal["chi2"], ...] = ("chi2",)
    combine: CombineMethod = "bonferroni"
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
        """Relative combination weight of ``test`` (1 unless configured)."""
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


# Order in which tests appear in results (and are combined).
_TEST_ORDER: tuple[TestName, ...] = ("welch", "brown_forsythe", "ks", "cvm", "chi2")


@dataclass(frozen=True, slots=True, eq=False)
class WindowScores:
    """Everything :meth:`DriftDetector.score` finds on one window, as arrays over the features.

    What :class:`DriftResult` is built from, without its per-feature objects:
    a caller that needs a few numbers per window (the server's drift worker
    exports them as metrics) reads them here at a fraction of the cost.
    :meth:`DriftDetector.result` turns it into the :class:`DriftResult`.

    ``statistics[f, t]`` and ``p_values[f, t]`` are test ``tests[t]`` on feature
    ``f``: both finite, or both NaN where the test did not run or gave no
    p-value (``ran`` tells the two apart, ``test_reasons[t][f]`` says why).
    ``distance_values[f, d]`` is distance ``distances[d]`` (NaN: undefined or
    not computed). ``combined`` and ``adjusted`` are NaN where the feature was
    not evaluated (``skipped_reasons[f]`` then says why). The arrays are
    read-only.
    """

    evaluated: bool
    n_window: int
    n_reference: int
    n_nonfinite_rows_excluded: int
    alpha: float
    correction: Correction
    feature_names: tuple[str, ...]
    kinds: tuple[FeatureKind, ...]
    tests: tuple[str, ...]
    distances: tuple[str, ...]
    statistics: FloatArray
    p_values: FloatArray
    ran: BoolArray
    test_reasons: tuple[Mapping[int, str], ...]
    distance_values: FloatArray
    combined: FloatArray
    adjusted: FloatArray
    drifted_mask: BoolArray
    evaluated_mask: BoolArray
    n_valid: IntArray
    skipped_reasons: tuple[str | None, ...]
    not_evaluated_reason: str | None = None

    @property
    def n_features(self) -> int:
        """Number of features."""
        return len(self.feature_names)

    @property
    def n_drifted(self) -> int:
        """Features flagged after correction."""
        return int(np.count_nonzero(self.drifted_mask))

    @property
    def n_skipped(self) -> int:
        """Features not evaluated."""
        return self.n_features - int(np.count_nonzero(self.evaluated_mask))

    @property
    def drifted(self) -> bool:
        """Whether any feature drifted."""
        return bool(self.drifted_mask.any())

    @property
    def drifted_features(self) -> tuple[str, ...]:
        """Names of the features flagged after correction."""
        return tuple(self.feature_names[f] for f in np.flatnonzero(self.drifted_mask).tolist())


@dataclass(slots=True)
class _Scratch:
    """Per-evaluation working arrays over all F features (private, mutable).

    ``pvals[:, t]`` is NaN where test ``t`` did not run on a feature or had
    no p-value; ``ran`` tells the two apart and ``reasons`` says why a test
    that ran has none.
    """

    column: dict[str, int]  # test → column of stats / pvals / ran
    stats: FloatArray
    pvals: FloatArray
    ran: BoolArray
    reasons: tuple[dict[int, str], ...]
    distances: dict[str, FloatArray]

    @classmethod
    def empty(cls, tests: Sequence[str], distances: Sequence[str], n_feat: int) -> _Scratch:
        return cls(
            column={t: k for k, t in enumerate(tests)},
            stats=np.full((n_feat, len(tests)), np.nan),
            pvals=np.full((n_feat, len(tests)), np.nan),
            ran=np.zeros((n_feat, len(tests)), dtype=np.bool_),
            reasons=tuple({} for _ in tests),
            distances={d: np.full(n_feat, np.nan) for d in distances},
        )

    def put(
        self, test: str, idx: IntArray, stat: FloatArray, p: FloatArray, undefined: str
    ) -> None:
        """Record a test's results for features ``idx``; NaN p-values get ``undefined``."""
        k = self.column[test]
        ok = np.isfinite(p) & np.isfinite(stat)
        self.stats[idx, k] = np.where(ok, stat, np.nan)
        self.pvals[idx, k] = np.where(ok, p, np.nan)
        self.ran[idx, k] = True
        if not ok.all():
            for f in idx[~ok].tolist():
                self.reasons[k][f] = undefined


#: Features tested together: kind, reference and window sample sizes, feature indexes.
_Group = tuple[FeatureKind, int, int, IntArray]


@dataclass(frozen=True, slots=True)
class _GroupRef:
    """The reference's numbers for a group of features tested together (looked up once)."""

    mean: FloatArray
    var: FloatArray
    spread: SpreadSummary
    std: FloatArray
    n_bins: IntArray
    edges: FloatArray  # ordered bins: padded interior edges, (features, widest - 1)
    counts: FloatArray  # ordered bins: padded reference counts, (features, widest)


@dataclass(frozen=True, slots=True)
class _MergePlan:
    """How the sparse reference bins of a group of ordered-bin features merge for a window size.

    A pure function of the reference's counts and the window size, so it is
    worked out once: ``rows`` are the positions (in the group) of the features
    that merge, ``target`` the flat index ``position * width + merged bin`` of
    every padded bin of those rows (padding bins, empty in both samples, go
    to the last merged bin), ``ref_counts`` the merged reference counts and
    ``n_bins`` the merged bin counts.
    """

    rows: IntArray
    target: IntArray
    width: int
    ref_counts: FloatArray
    n_bins: IntArray


class DriftDetector:
    """Scores windows against a fixed reference.

    ``score()`` changes nothing but bounded caches of how sparse reference bins
    merge for a window size (pure functions of the reference's counts and the
    window size, worked out in a Python loop: worth computing once).
    """

    #: Most (feature, window size) bin merges kept.
    MAX_CACHED_MERGES = 65_536
    #: Most (group of features, window size) merge plans kept.
    MAX_CACHED_PLANS = 512

    def __init__(self, reference: Reference, config: DriftConfig | None = None) -> None:
        self._reference = reference
        self._config = config if config is not None else DriftConfig()
        cfg = self._config
        configured = set(cfg.continuous_tests) | set(cfg.discrete_tests) | {"chi2"}
        self._tests = tuple(t for t in _TEST_ORDER if t in configured)
        self._merges: dict[tuple[int, int], IntArray] = {}
        self._plans: dict[tuple[bytes, int], _MergePlan] = {}
        self._groups: dict[bytes, _GroupRef] = {}
        self._layouts: dict[int, tuple[tuple[str | None, ...], list[_Group]]] = {}
        self._weights = np.array([cfg.weight_of(t) for t in self._tests])
        self._powers = 1 << np.arange(len(self._tests), dtype=np.int64)

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
        return self.result(self.scores(window))

    def scores(self, window: npt.ArrayLike) -> WindowScores:
        """Test a window of shape ``(n, F)``: the numbers of :meth:`score`, as arrays."""
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
        scratch = _Scratch.empty(self._tests, cfg.distances, n_feat)
        if n_rows < cfg.min_window:
            reason = f"window has {n_rows} rows, fewer than min_window={cfg.min_window}"
            return self._scores(
                scratch,
                ["window not evaluated: " + reason] * n_feat,
                np.zeros(n_feat, dtype=np.int64),
                n_rows,
                n_bad_rows,
                reason,
            )
        if not all_finite:
            rows[~finite] = np.nan
        rows.sort(axis=1)  # NaN (excluded values) last
        n_valid = finite.sum(axis=1) if not all_finite else np.full(n_feat, n_rows)

        if all_finite:  # the usual window: the same groups as the last one of its size
            cached = self._layouts.get(n_rows)
            if cached is None:
                cached = self._layout(n_valid.tolist())
                if len(self._layouts) < self.MAX_CACHED_PLANS:
                    self._layouts[n_rows] = cached
            skipped, groups = cached
        else:
            skipped, groups = self._layout(n_valid.tolist())
        for kind, n_ref, n_win, idx in groups:
            self._run_group(kind, idx, n_ref, rows[idx, :n_win], scratch)
        return self._combine(scratch, list(skipped), n_valid, n_rows, n_bad_rows)

    def _layout(self, n_valid: list[int]) -> tuple[tuple[str | None, ...], list[_Group]]:
        """Why each feature is skipped (None: tested), and the groups tested together:
        features of one kind with the same reference and window sample sizes."""
        ref, cfg = self._reference, self._config
        skip: list[str | None] = list(ref.unusable)
        groups: dict[tuple[FeatureKind, int, int], list[int]] = defaultdict(list)
        n_finite, kinds = ref.n_finite.tolist(), ref.kinds
        for f in range(ref.n_features):
            if skip[f] is not None:
                continue
            nv = n_valid[f]
            if nv == 0:
                skip[f] = "the window has no finite values for this feature"
            elif nv < cfg.min_window:
                skip[f] = (
                    f"the window has {nv} finite values for this feature, "
                    f"fewer than min_window={cfg.min_window}"
                )
            else:
                groups[(kinds[f], n_finite[f], nv)].append(f)
        return tuple(skip), [
            (kind, n_ref, n_win, np.asarray(members, dtype=np.int64))
            for (kind, n_ref, n_win), members in groups.items()
        ]

    # ------------------------------------------------------------------ internals

    def _run_group(
        self, kind: FeatureKind, idx: IntArray, n_ref: int, win: FloatArray, out: _Scratch
    ) -> None:
        """Run the configured tests and distances on features ``idx`` sharing sample sizes.

        ``win`` holds those features' finite window values, each row sorted.
        """
        ref, cfg = self._reference, self._config
        n_win = win.shape[1]
        tests = cfg.tests_for(kind)
        group = self._group(kind, idx)

        if "welch" in tests:
            t, p = welch_ttest_from_stats(
                group.mean, group.var, n_ref, win.mean(axis=1), win.var(axis=1, ddof=1), n_win
            )
            out.put("welch", idx, t, p, "both samples have zero variance")
        if "brown_forsythe" in tests:
            win_spread = spread_summary_rows(win, median_of_sorted_rows(win, n_win))
            w, p = brown_forsythe_from_summaries(group.spread, win_spread)
            out.put(
                "brown_forsythe", idx, w, p, "both samples have zero spread about their medians"
            )
        wasserstein = "wasserstein" in cfg.distances and kind != "categorical"
        if "ks" in tests or "cvm" in tests or wasserstein:
            ref_rows = ref.sorted_rows[idx, :n_ref]
        if "ks" in tests:
            d, p = ks_pvalue(ks_statistic_rows(ref_rows, win), n_ref, n_win, cfg.ks_method)
            out.put("ks", idx, d, p, "the KS p-value is undefined for these sample sizes")
        merged: MergedRows | None = None
        if "cvm" in tests or wasserstein:
            merged = merge_sorted_rows(ref_rows, win)
        if "cvm" in tests and merged is not None:
            t, p = cramervonmises_merged(merged)
            # scipy's mid-rank formula is not valid with ties (it rejects identical tied
            # samples), so tied features get no CvM p-value rather than a wrong one.
            tied = ~merged.last_of_tie.all(axis=1)
            out.put(
                "cvm",
                idx,
                t,
                np.where(tied, np.nan, p),
                "tied values: Cramér-von Mises needs continuous data",
            )

        if "chi2" in tests or "psi" in cfg.distances:
            ref_counts, win_counts, n_bins = self._bin_counts(kind, idx, win, group)
            if "chi2" in tests:
                stat, p = self._chi2(kind, idx, ref_counts, win_counts, n_bins, n_win)
                out.put(
                    "chi2",
                    idx,
                    stat,
                    p,
                    f"fewer than 2 bins with expected count >= {cfg.min_expected:g} "
                    f"for a window of {n_win}",
                )
            if "psi" in cfg.distances:
                out.distances["psi"][idx] = psi_from_counts(ref_counts, win_counts, cfg.psi_epsilon)
        if "wasserstein" in cfg.distances and merged is not None:
            std = group.std
            dist = wasserstein_merged(merged)
            with np.errstate(divide="ignore", invalid="ignore"):
                out.distances["wasserstein"][idx] = np.where(std > 0, dist / std, np.nan)

    def _group(self, kind: FeatureKind, idx: IntArray) -> _GroupRef:
        """The reference's numbers for features ``idx`` (cached: groups repeat every window)."""
        key = idx.tobytes()
        group = self._groups.get(key)
        if group is not None:
            return group
        ref = self._reference
        n_bins = ref.n_bins[idx]
        k_max = int(n_bins.max()) if idx.size else 0
        ordered = kind != "categorical"
        group = _GroupRef(
            mean=ref.mean[idx],
            var=ref.var[idx],
            spread=SpreadSummary(
                n=ref.spread.n[idx], zbar=ref.spread.zbar[idx], ss=ref.spread.ss[idx]
            ),
            std=ref.std[idx],
            n_bins=n_bins,
            edges=ref.padded_edges[idx, : k_max - 1] if ordered else np.zeros((idx.size, 0)),
            counts=ref.padded_counts[idx, :k_max].astype(np.float64)
            if ordered
            else np.zeros((idx.size, 0)),
        )
        for array in (group.mean, group.var, group.std, group.n_bins, group.edges, group.counts):
            array.setflags(write=False)  # shared by every window: never written
        if len(self._groups) < self.MAX_CACHED_PLANS:
            self._groups[key] = group
        return group

    def _bin_counts(
        self, kind: FeatureKind, idx: IntArray, win: FloatArray, group: _GroupRef
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        """Padded reference and window counts per bin, and the number of bins per feature.

        Categorical features get one extra bin for window values that are not
        reference categories.
        """
        ref = self._reference
        n_f, n_win = win.shape
        if kind == "categorical":
            n_bins = ref.n_bins[idx] + 1
            ref_counts = np.zeros((n_f, int(n_bins.max())))
            win_counts = np.zeros_like(ref_counts)
            for k, f in enumerate(idx.tolist()):
                cats = ref.bin_edges[f]
                seen = np.searchsorted(win[k], cats, side="right") - np.searchsorted(
                    win[k], cats, side="left"
                )
                ref_counts[k, : cats.size] = ref.bin_counts[f]
                win_counts[k, : cats.size] = seen
                win_counts[k, cats.size] = n_win - seen.sum()
            return ref_counts, win_counts, n_bins
        edges = group.edges
        cum = np.empty((n_f, edges.shape[1] + 2), dtype=np.int64)
        cum[:, 0] = 0
        cum[:, -1] = n_win
        for k in range(n_f):
            cum[k, 1:-1] = win[k].searchsorted(edges[k], side="left")
        win_counts = np.diff(cum, axis=1).astype(np.float64)
        return group.counts, win_counts, group.n_bins

    def _chi2(
        self,
        kind: FeatureKind,
        idx: IntArray,
        ref_counts: FloatArray,
        win_counts: FloatArray,
        n_bins: IntArray,
        n_win: int,
    ) -> tuple[FloatArray, FloatArray]:
        """Chi-squared over the bins after merging sparse ones; vectorised over features."""
        cfg = self._config
        if kind != "categorical":
            plan = self._plan(idx, ref_counts, n_bins, n_win)
            if plan.rows.size:
                merged_win = np.bincount(
                    plan.target,
                    weights=win_counts[plan.rows].ravel(),
                    minlength=plan.rows.size * plan.width,
                ).reshape(plan.rows.size, plan.width)
                ref_counts = ref_counts.copy()
                win_counts = win_counts.copy()
                n_bins = n_bins.copy()
                ref_counts[plan.rows] = plan.ref_counts
                win_counts[plan.rows] = merged_win
                n_bins[plan.rows] = plan.n_bins
            return binned_chi2_rows(ref_counts, win_counts, n_bins)
        ref_counts = ref_counts.copy()
        win_counts = win_counts.copy()
        n_bins = n_bins.copy()
        for k in range(ref_counts.shape[0]):
            r = ref_counts[k, : n_bins[k]].astype(np.int64)
            w = win_counts[k, : n_bins[k]].astype(np.int64)
            groups = merge_sparse_categories(r, w, cfg.min_expected)
            mapping = np.full(r.size, -1, dtype=np.int64)
            for g, members in enumerate(groups):
                mapping[list(members)] = g
            keep = mapping >= 0  # categories empty in both samples are dropped
            new_r = np.bincount(mapping[keep], weights=r[keep], minlength=len(groups))
            new_w = np.bincount(mapping[keep], weights=w[keep], minlength=len(groups))
            ref_counts[k] = 0.0
            win_counts[k] = 0.0
            ref_counts[k, : new_r.size] = new_r
            win_counts[k, : new_w.size] = new_w
            n_bins[k] = new_r.size
        return binned_chi2_rows(ref_counts, win_counts, n_bins)

    def _plan(
        self, idx: IntArray, ref_counts: FloatArray, n_bins: IntArray, n_win: int
    ) -> _MergePlan:
        """The merge plan of ordered-bin features ``idx`` for windows of ``n_win`` values."""
        key = (idx.tobytes(), n_win)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        cfg = self._config
        n_ref = ref_counts.sum(axis=1)
        width = ref_counts.shape[1]
        used = np.arange(width)[None, :] < n_bins[:, None]
        smallest = np.where(used, ref_counts, np.inf).min(axis=1)
        todo = np.flatnonzero(
            (n_bins >= 2) & (smallest * np.minimum(n_ref, n_win) < cfg.min_expected * n_ref)
        )
        target = np.empty((todo.size, width), dtype=np.int64)
        merged_ref = np.zeros((todo.size, width))
        merged_bins = np.empty(todo.size, dtype=np.int64)
        for position, k in enumerate(todo.tolist()):
            size = int(n_bins[k])
            r = ref_counts[k, :size].astype(np.int64)
            key_f = (int(idx[k]), n_win)
            mapping = self._merges.get(key_f)
            if mapping is None:
                mapping = merge_sparse_bins(r, n_win, cfg.min_expected)
                if len(self._merges) < self.MAX_CACHED_MERGES:
                    self._merges[key_f] = mapping
            new_r = np.bincount(mapping, weights=r)
            merged_ref[position, : new_r.size] = new_r
            merged_bins[position] = new_r.size
            target[position, :size] = mapping
            target[position, size:] = new_r.size - 1  # padding: zero in both samples
            target[position] += position * width
        plan = _MergePlan(todo, target.ravel(), width, merged_ref, merged_bins)
        if len(self._plans) < self.MAX_CACHED_PLANS:
            self._plans[key] = plan
        return plan

    def _combine(
        self,
        scratch: _Scratch,
        skip: list[str | None],
        n_valid: IntArray,
        n_rows: int,
        n_bad_rows: int,
    ) -> WindowScores:
        """Combine per feature and correct across features (arrays only)."""
        cfg = self._config
        n_feat = len(skip)
        pmat = scratch.pvals
        avail = np.isfinite(pmat)
        evaluated = np.array([s is None for s in skip]) & scratch.ran.any(axis=1)
        has_p = avail.any(axis=1)
        for f in np.flatnonzero(evaluated & ~has_p).tolist():
            reasons = "; ".join(
                f"{t}: {scratch.reasons[k][f]}"
                for k, t in enumerate(self._tests)
                if f in scratch.reasons[k]
            )
            skip[f] = f"no test could be computed ({reasons})"
            evaluated[f] = False

        # Combine per feature, in groups sharing the set of tests that gave a p-value.
        combined = np.full(n_feat, np.nan)
        ev_idx = np.flatnonzero(evaluated)
        if ev_idx.size and cfg.combine == "bonferroni":
            # Every pattern at once: each row's weights renormalised over its available
            # tests (the sum skips the others as exact zeros), min of p / w, capped at 1:
            # bonferroni_min_rows's numbers (a lone test: p / 1.0).
            have = avail[ev_idx]
            weights = np.where(have, self._weights, 0.0)
            normalised = self._weights / weights.sum(axis=1)[:, None]
            with np.errstate(invalid="ignore"):
                scaled = np.where(have, pmat[ev_idx] / normalised, np.inf)
            combined[ev_idx] = np.minimum(scaled.min(axis=1), 1.0)
        elif ev_idx.size:
            codes = avail[ev_idx].astype(np.int64) @ self._powers
            for code in np.unique(codes).tolist():
                rows = ev_idx[codes == code]
                pattern = (code & self._powers) != 0
                p = pmat[np.ix_(rows, np.flatnonzero(pattern))]
                w = self._weights[pattern] / self._weights[pattern].sum()
                combined[rows] = p[:, 0] if p.shape[1] == 1 else cauchy_combination(p, w)

        adjusted = np.full(n_feat, np.nan)
        if ev_idx.size:
            adjusted[ev_idx] = (
                bonferroni(combined[ev_idx], cfg.alpha).p_adjusted
                if cfg.correction == "bonferroni"
                else bh_adjusted(combined[ev_idx])
            )
        drifted = evaluated & (adjusted <= cfg.alpha)
        return self._scores(scratch, skip, n_valid, n_rows, n_bad_rows, None, combined, adjusted,
                            drifted, evaluated)  # fmt: skip

    def _scores(
        self,
        scratch: _Scratch,
        skip: Sequence[str | None],
        n_valid: IntArray,
        n_rows: int,
        n_bad_rows: int,
        not_evaluated: str | None,
        combined: FloatArray | None = None,
        adjusted: FloatArray | None = None,
        drifted: BoolArray | None = None,
        evaluated: BoolArray | None = None,
    ) -> WindowScores:
        ref, cfg = self._reference, self._config
        n_feat = ref.n_features
        dist = (
            np.column_stack([scratch.distances[d] for d in cfg.distances])
            if cfg.distances
            else np.zeros((n_feat, 0))
        )
        comb = combined if combined is not None else np.full(n_feat, np.nan)
        adj = adjusted if adjusted is not None else np.full(n_feat, np.nan)
        drift = drifted if drifted is not None else np.zeros(n_feat, dtype=np.bool_)
        ev = evaluated if evaluated is not None else np.zeros(n_feat, dtype=np.bool_)
        valid = np.asarray(n_valid, dtype=np.int64)
        for array in (scratch.stats, scratch.pvals, scratch.ran, dist, comb, adj, drift, ev, valid):
            array.setflags(write=False)
        return WindowScores(
            evaluated=not_evaluated is None,
            n_window=n_rows,
            n_reference=ref.n_rows,
            n_nonfinite_rows_excluded=n_bad_rows,
            alpha=cfg.alpha,
            correction=cfg.correction,
            feature_names=ref.feature_names,
            kinds=ref.kinds,
            tests=self._tests,
            distances=tuple(cfg.distances),
            statistics=scratch.stats,
            p_values=scratch.pvals,
            ran=scratch.ran,
            test_reasons=scratch.reasons,
            distance_values=dist,
            combined=comb,
            adjusted=adj,
            drifted_mask=drift,
            evaluated_mask=ev,
            n_valid=valid,
            skipped_reasons=tuple(skip),
            not_evaluated_reason=not_evaluated,
        )

    def result(self, scores: WindowScores) -> DriftResult:
        """The :class:`DriftResult` of :meth:`scores`' arrays (one object per feature and test)."""
        cfg = self._config
        n_feat = scores.n_features
        tests = scores.tests
        if not scores.evaluated:
            skipped = tuple(
                FeatureResult(
                    name=name,
                    kind=kind,
                    n_window=0,
                    tests=(),
                    combined_p=None,
                    adjusted_p=None,
                    drifted=False,
                    skipped_reason=reason,
                )
                for name, kind, reason in zip(
                    scores.feature_names, scores.kinds, scores.skipped_reasons, strict=True
                )
            )
            return DriftResult(
                evaluated=False,
                drifted=False,
                n_drifted=0,
                n_features=n_feat,
                n_skipped=n_feat,
                n_window=scores.n_window,
                n_reference=scores.n_reference,
                n_nonfinite_rows_excluded=scores.n_nonfinite_rows_excluded,
                alpha=scores.alpha,
                correction=scores.correction,
                features=skipped,
                not_evaluated_reason=scores.not_evaluated_reason,
            )
        stats_l = scores.statistics.tolist()
        pvals_l = scores.p_values.tolist()
        ran_l = scores.ran.tolist()
        dist_l = scores.distance_values.tolist()
        combined_l, adjusted_l = scores.combined.tolist(), scores.adjusted.tolist()
        drifted_l = scores.drifted_mask.tolist()
        evaluated_l = scores.evaluated_mask.tolist()
        n_valid_l = scores.n_valid.tolist()
        psi_column = scores.distances.index("psi") if "psi" in scores.distances else None
        features: list[FeatureResult] = []
        for f in range(n_feat):
            results: list[TestResult] = []
            ran_f, stats_f, pvals_f = ran_l[f], stats_l[f], pvals_l[f]
            for k, t in enumerate(tests):
                if not ran_f[k]:
                    continue
                p = pvals_f[k]
                if p == p:  # not NaN
                    results.append(TestResult(t, stats_f[k], p))
                else:
                    results.append(TestResult(t, None, None, scores.test_reasons[k].get(f)))
            level: PsiLevel | None = None
            if any(ran_f):
                for d, v in zip(scores.distances, dist_l[f], strict=True):
                    if v == v:
                        results.append(TestResult(d, v, None))
                    else:
                        results.append(TestResult(d, None, None, "undefined for this feature"))
                if psi_column is not None:
                    psi = dist_l[f][psi_column]
                    if psi == psi:
                        level = psi_level(psi, cfg.psi_thresholds)
            ok = evaluated_l[f]
            features.append(
                FeatureResult(
                    name=scores.feature_names[f],
                    kind=scores.kinds[f],
                    n_window=int(n_valid_l[f]),
                    tests=tuple(results),
                    combined_p=combined_l[f] if ok else None,
                    adjusted_p=adjusted_l[f] if ok else None,
                    drifted=bool(drifted_l[f]),
                    skipped_reason=None if ok else scores.skipped_reasons[f],
                    psi_level=level,
                )
            )
        n_drifted = scores.n_drifted
        return DriftResult(
            evaluated=True,
            drifted=n_drifted > 0,
            n_drifted=n_drifted,
            n_features=n_feat,
            n_skipped=scores.n_skipped,
            n_window=scores.n_window,
            n_reference=scores.n_reference,
            n_nonfinite_rows_excluded=scores.n_nonfinite_rows_excluded,
            alpha=scores.alpha,
            correction=scores.correction,
            features=tuple(features),
        )
