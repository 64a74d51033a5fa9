"""Drift metrics: read at scrape time from plain snapshots the server hands in.

The server's drift worker (``sidecar.drift``) evaluates windows in the
background and reports each result here as an :class:`Evaluation` of plain
numbers; it adds live rows to the fleet bin counters as :class:`numpy.ndarray`
counts. :class:`DriftCollector` keeps the latest state per model version and
scope (``inputs`` or ``outputs``) and turns it into metric families when
Prometheus scrapes. Nothing here imports ``sidecar`` or ``detectors``.

Bounded by construction: per-feature series exist only for the features the
server chose to export (``max_exported_features``), and bin series only for
the fleet layout it passed in (``fleet.max_series`` features × bins). A test
without a p-value (a distance, or a skipped test) exports no p-value: NaN is
never exported as if it were a result.

Families and their meaning: docs/metrics.md, "Drift".
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporters.histogram import ArrayHistogram, ArrayHistogramChild

PREFIX = "sidecar_drift_"
#: Scopes a model version is evaluated in.
SCOPES = ("inputs", "outputs")
#: Why a window was not evaluated (``sidecar_drift_windows_skipped_total{reason}``).
SKIP_REASONS = ("too_few_rows", "error", "executor_failed")
#: Where a model version's reference stands (``sidecar_drift_reference_state{state}``).
REFERENCE_STATES = ("capturing", "unsaved", "ready")
#: Evaluation time (seconds): 1 ms to 2 minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

_MODEL = ["model", "version"]
_SCOPE = ["model", "version", "scope"]
_FEATURE = ["model", "version", "scope", "feature", "test"]
_BIN = ["model", "version", "scope", "feature", "bin"]


@dataclass(frozen=True, slots=True)
class FeatureValue:
    """One test (or distance) on one feature in the last evaluation."""

    feature: str
    test: str
    statistic: float | None
    p_value: float | None


def _no_values() -> np.ndarray:
    return np.zeros((0, 0))


@dataclass(frozen=True, slots=True, eq=False)
class Evaluation:
    """What one evaluation of one scope found, as plain numbers.

    The exported features' tests (already capped) come as two arrays, turned
    into samples only when Prometheus scrapes (a window is evaluated far more
    often than a scrape reads it): ``statistics[i, j]`` and ``p_values[i, j]``
    are column ``columns[j]`` (a test, a distance, ``combined`` or
    ``adjusted``) of feature ``features[i]``, NaN where there is none.
    ``values`` lists the same as :class:`FeatureValue` objects.
    """

    drifted: bool
    features_drifted: int
    features_skipped: int
    window_rows: int
    nonfinite_rows: int
    duration_seconds: float
    timestamp: float  # seconds since the epoch
    features: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    statistics: np.ndarray = field(default_factory=_no_values)
    p_values: np.ndarray = field(default_factory=_no_values)

    def __post_init__(self) -> None:
        shape = (len(self.features), len(self.columns))
        if self.statistics.shape != shape or self.p_values.shape != shape:
            raise ValueError(
                f"statistics and p_values must have shape {shape} (features × columns), "
                f"got {self.statistics.shape} and {self.p_values.shape}"
            )

    @property
    def values(self) -> tuple[FeatureValue, ...]:
        """Every value there is, feature by feature, in column order."""
        out: list[FeatureValue] = []
        stats, p_values = self.statistics.tolist(), self.p_values.tolist()
        for i, feature in enumerate(self.features):
            for j, column in enumerate(self.columns):
                stat, p = stats[i][j], p_values[i][j]
                if stat == stat or p == p:  # not both NaN
                    out.append(
                        FeatureValue(
                            feature, column, stat if stat == stat else None, p if p == p else None
                        )
                    )
        return tuple(out)


@dataclass(frozen=True, slots=True)
class BinLayout:
    """The fleet bins of one scope: which features export bins, the reference share of each.

    ``reference_ratios[i][b]`` is the share of the reference's (finite) values of
    ``features[i]`` that fall in bin ``b``; live rows are added per bin in the
    same order.
    """

    features: tuple[str, ...]
    reference_ratios: tuple[tuple[float, ...], ...]

    @property
    def widest(self) -> int:
        """Bins of the feature with the most bins (0 without features)."""
        return max((len(r) for r in self.reference_ratios), default=0)

    @property
    def series(self) -> int:
        """Bin series per family (features × their bins)."""
        return sum(len(r) for r in self.reference_ratios)


class _Scope:
    """The exported state of one model version and scope (guarded by the collector's lock)."""

    def __init__(self, reference_rows: int, bins: BinLayout | None, since: float) -> None:
        self.reference_rows = reference_rows
        self.bins = bins
        self.bin_counts = np.zeros((len(bins.features), bins.widest), np.int64) if bins else None
        self.last: Evaluation | None = None
        self.last_time = since
        self.window_rows: int | None = None
        self.evaluations = 0
        self.features_skipped = 0
        self.nonfinite_rows = 0


class ModelDrift:
    """One model version's drift export; the server's worker reports through it.

    Every method takes the collector's lock briefly; none does numeric work
    beyond adding a small count array.
    """

    def __init__(
        self,
        collector: DriftCollector,
        model: str,
        version: str,
        dropped_rows: Callable[[], int],
    ) -> None:
        self._collector = collector
        self.model = model
        self.version = version
        self._dropped_rows = dropped_rows
        self._scopes: dict[str, _Scope] = {}
        self._skipped = dict.fromkeys(SKIP_REASONS, 0)
        self._reference_state: str | None = None
        self._write_failures = 0
        self._durations: dict[str, ArrayHistogramChild] = {}

    @property
    def dropped_rows(self) -> int:
        """Sampled rows the tap dropped because the worker was behind."""
        return self._dropped_rows()

    def start_scope(
        self, scope: str, reference_rows: int, bins: BinLayout | None, since: float
    ) -> None:
        """Begin exporting ``scope`` (once its reference is known), counters at zero.

        ``since`` stands in for the last evaluation time until the first evaluation,
        so a staleness alert also covers a window that never fills.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self._durations[scope] = self._collector.duration.labels(self.model, self.version, scope)
        with self._collector.lock:
            self._scopes[scope] = _Scope(reference_rows, bins, since)

    def evaluated(self, scope: str, evaluation: Evaluation) -> None:
        """Record one evaluation of ``scope``."""
        self._durations[scope].observe(evaluation.duration_seconds)
        with self._collector.lock:
            state = self._scopes[scope]
            state.last = evaluation
            state.last_time = evaluation.timestamp
            state.window_rows = evaluation.window_rows
            state.evaluations += 1
            state.features_skipped += evaluation.features_skipped
            state.nonfinite_rows += evaluation.nonfinite_rows

    def reference_state(self, state: str) -> None:
        """The reference is being captured, captured but not yet written, or ready."""
        if state not in REFERENCE_STATES:
            raise ValueError(f"state must be one of {REFERENCE_STATES}, got {state!r}")
        with self._collector.lock:
            self._reference_state = state

    def reference_write_failed(self) -> None:
        """An attempt to write a captured reference to its file failed."""
        with self._collector.lock:
            self._write_failures += 1

    def window_skipped(self, reason: str, rows: int) -> None:
        """A window (all scopes) was not evaluated (one of ``SKIP_REASONS``)."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"reason must be one of {SKIP_REASONS}, got {reason!r}")
        with self._collector.lock:
            self._skipped[reason] += 1
            for state in self._scopes.values():
                state.window_rows = rows

    def add_bin_rows(self, scope: str, counts: np.ndarray) -> None:
        """Add live rows per fleet bin: ``counts`` is (features in the layout, widest)."""
        with self._collector.lock:
            state = self._scopes[scope]
            if state.bin_counts is not None:
                state.bin_counts += counts

    # ------------------------------------------------------------------ scrape

    def _collect(self, f: _Families) -> None:
        """Add this model version's samples (called under the collector's lock)."""
        base = [self.model, self.version]
        f.dropped.add_metric(base, float(self.dropped_rows))
        for reason, count in self._skipped.items():
            f.windows_skipped.add_metric([*base, reason], float(count))
        if self._reference_state is not None:
            for name in REFERENCE_STATES:
                current = 1.0 if name == self._reference_state else 0.0
                f.reference_state.add_metric([*base, name], current)
            f.write_failures.add_metric(base, float(self._write_failures))
        for scope, state in self._scopes.items():
            labels = [*base, scope]
            f.reference.add_metric(labels, float(state.reference_rows))
            f.evaluations.add_metric(labels, float(state.evaluations))
            f.features_skipped.add_metric(labels, float(state.features_skipped))
            f.nonfinite.add_metric(labels, float(state.nonfinite_rows))
            f.timestamp.add_metric(labels, state.last_time)
            if state.window_rows is not None:
                f.window.add_metric(labels, float(state.window_rows))
            last = state.last
            if last is not None:
                f.detected.add_metric(labels, 1.0 if last.drifted else 0.0)
                f.drifted.add_metric(labels, float(last.features_drifted))
                stats, p_values = last.statistics.tolist(), last.p_values.tolist()
                for feature, stats_f, p_f in zip(last.features, stats, p_values, strict=True):
                    for test, stat, p in zip(last.columns, stats_f, p_f, strict=True):
                        if math.isfinite(stat):
                            f.statistic.add_metric([*labels, feature, test], stat)
                        if math.isfinite(p):
                            f.p_value.add_metric([*labels, feature, test], p)
            if state.bins is not None and state.bin_counts is not None:
                layout = state.bins
                for i, (feature, ratios) in enumerate(
                    zip(layout.features, layout.reference_ratios, strict=True)
                ):
                    counts = state.bin_counts[i].tolist()
                    for b, ratio in enumerate(ratios):
                        key = [*labels, feature, str(b)]
                        f.bin_rows.add_metric(key, float(counts[b]))
                        f.bin_ratio.add_metric(key, ratio)


@dataclass
class _Families:
    """One scrape's families, filled by every model version."""

    statistic: GaugeMetricFamily
    p_value: GaugeMetricFamily
    detected: GaugeMetricFamily
    drifted: GaugeMetricFamily
    evaluations: CounterMetricFamily
    window: GaugeMetricFamily
    reference: GaugeMetricFamily
    timestamp: GaugeMetricFamily
    features_skipped: CounterMetricFamily
    nonfinite: CounterMetricFamily
    windows_skipped: CounterMetricFamily
    dropped: CounterMetricFamily
    reference_state: GaugeMetricFamily
    write_failures: CounterMetricFamily
    bin_rows: CounterMetricFamily
    bin_ratio: GaugeMetricFamily

    @classmethod
    def empty(cls) -> _Families:
        p = PREFIX
        return cls(
            statistic=GaugeMetricFamily(
                f"{p}statistic",
                "Statistic of each test (or distance: psi, wasserstein) on each exported feature "
                "in the last evaluation.",
                labels=_FEATURE,
            ),
            p_value=GaugeMetricFamily(
                f"{p}p_value",
                "p-value of each test on each exported feature in the last evaluation; "
                "test=combined (the feature's tests combined) and adjusted (after the "
                "correction across features: <= alpha means drifted). Absent when undefined.",
                labels=_FEATURE,
            ),
            detected=GaugeMetricFamily(
                f"{p}detected",
                "1 when the last evaluation found drift after multiple-testing correction.",
                labels=_SCOPE,
            ),
            drifted=GaugeMetricFamily(
                f"{p}features_drifted",
                "Features flagged after correction in the last evaluation.",
                labels=_SCOPE,
            ),
            evaluations=CounterMetricFamily(f"{p}evaluations", "Windows evaluated.", labels=_SCOPE),
            window=GaugeMetricFamily(
                f"{p}window_samples",
                "Rows in the last window, evaluated or skipped.",
                labels=_SCOPE,
            ),
            reference=GaugeMetricFamily(
                f"{p}reference_samples", "Rows of the reference.", labels=_SCOPE
            ),
            timestamp=GaugeMetricFamily(
                f"{p}last_evaluation_timestamp_seconds",
                "When the last evaluation finished (before the first: when monitoring started), "
                "seconds since the epoch.",
                labels=_SCOPE,
                unit="seconds",
            ),
            features_skipped=CounterMetricFamily(
                f"{p}features_skipped",
                "Features left untested in an evaluation (constant reference, too few finite "
                "values, ...), summed over evaluations.",
                labels=_SCOPE,
            ),
            nonfinite=CounterMetricFamily(
                f"{p}nonfinite_rows",
                "Window rows with a NaN or infinite value (excluded from the features where it "
                "occurs), summed over evaluations.",
                labels=_SCOPE,
            ),
            windows_skipped=CounterMetricFamily(
                f"{p}windows_skipped",
                "Windows not evaluated: too_few_rows (flushed below min_window), error (the "
                "evaluation raised) or executor_failed (the evaluation process died).",
                labels=[*_MODEL, "reason"],
            ),
            dropped=CounterMetricFamily(
                f"{p}rows_dropped",
                "Sampled rows not monitored because the drift worker was behind (queue full).",
                labels=_MODEL,
            ),
            reference_state=GaugeMetricFamily(
                f"{p}reference_state",
                "1 for the state the reference is in: capturing (taking the first live rows), "
                "unsaved (captured and in use, its file not written yet: retrying), ready.",
                labels=[*_MODEL, "state"],
            ),
            write_failures=CounterMetricFamily(
                f"{p}reference_write_failures",
                "Failed attempts to write a captured reference to its file (each is retried).",
                labels=_MODEL,
            ),
            bin_rows=CounterMetricFamily(
                f"{p}bin_rows",
                "Live rows per feature over the reference's bins (fixed at load: they add up "
                "across replicas).",
                labels=_BIN,
            ),
            bin_ratio=GaugeMetricFamily(
                f"{p}reference_bin_ratio",
                "Share of the reference's values of a feature in each bin.",
                labels=_BIN,
                unit="ratio",
            ),
        )

    def all(self) -> Sequence[Metric]:
        return (
            self.statistic,
            self.p_value,
            self.detected,
            self.drifted,
            self.evaluations,
            self.window,
            self.reference,
            self.timestamp,
            self.features_skipped,
            self.nonfinite,
            self.windows_skipped,
            self.dropped,
            self.reference_state,
            self.write_failures,
            self.bin_rows,
            self.bin_ratio,
        )


class DriftCollector(Collector):
    """Every model version's drift state, exported at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lock = threading.Lock()
        self._models: dict[tuple[str, str], ModelDrift] = {}
        self.duration = ArrayHistogram(
            f"{PREFIX}evaluation_duration_seconds",
            "Time one evaluation of a window took (per scope), in the drift worker thread or "
            "evaluation process.",
            _SCOPE,
            DURATION_BUCKETS,
            unit="seconds",
        )
        registry.register(self)

    def model(self, model: str, version: str, dropped_rows: Callable[[], int]) -> ModelDrift:
        """Start exporting a model version (replacing an earlier export of it)."""
        handle = ModelDrift(self, model, version, dropped_rows)
        with self.lock:
            self._models[(model, version)] = handle
        return handle

    def remove(self, model: str, version: str) -> None:
        """Stop exporting a model version (it was unloaded)."""
        with self.lock:
            self._models.pop((model, version), None)
        for scope in SCOPES:
            self.duration.remove(model, version, scope)

    def describe(self) -> Iterable[Metric]:
        """The families without samples."""
        return [*_Families.empty().all(), *self.duration.describe()]

    def collect(self) -> Iterator[Metric]:
        """Every model version's current state."""
        families = _Families.empty()
        with self.lock:
            for handle in self._models.values():
                handle._collect(families)
            durations = list(self.duration.collect())
        yield from families.all()
        yield from durations
