"""Metric families of model insight: layer activations, anomaly scores, shadow comparison.

``InsightMetrics(registry)`` declares every family once against the registry it
is given; nothing registers at import and nothing touches prometheus_client's
global registry. Label values come from configuration and the model file only:
model name and version, configured layer names (bounded by
``insight.activations.max_layers``), the shadow's configured version, and the
fixed ``outcome`` set of shadow runs.

Activation statistics change per sampled batch and are read at scrape time by
a custom collector from the sources the server registers (anything with a
``snapshot()`` returning ``layers``, ``batches`` and a ``stats`` array), so the
request path never touches a gauge. Histograms that take one value per row
(anomaly score, shadow difference) take a whole numpy array per call.

Every family is exposed only once it has a series: a server whose models use
no insight feature exports none of them (docs/metrics.md lists them as
conditional).

Layer-mean drift verdicts come from ``detectors`` (tested lazily by the
source at scrape time). This package never imports ``sidecar``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from detectors.drift import DriftResult

PREFIX = "sidecar_"

#: Shadow latency buckets (seconds).
SHADOW_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
#: Outcomes of a shadow run, the only values of the ``outcome`` label.
SHADOW_OUTCOMES: tuple[str, ...] = ("compared", "dropped", "failed")
#: Activation statistics: (family suffix, help), in the order of a snapshot's stats columns.
ACTIVATION_STATS: tuple[tuple[str, str], ...] = (
    ("mean", "mean of the layer's output over the last sampled batch (finite values)"),
    ("std", "standard deviation of the layer's output over the last sampled batch"),
    ("zero_ratio", "fraction of the layer's output that is exactly 0 (dead ReLUs)"),
    ("nonfinite_ratio", "fraction of the layer's output that is NaN or infinite"),
    ("max_abs", "largest absolute finite value of the layer's output"),
)

_MODEL = ("model", "version")


class ActivationSnapshotLike(Protocol):
    """What an activation source's ``snapshot()`` returns."""

    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names, one per row of ``stats``."""
        ...

    @property
    def batches(self) -> int:
        """Sampled batches summarised so far."""
        ...

    @property
    def stats(self) -> np.ndarray:
        """(layers, 5) statistics in ACTIVATION_STATS order; NaN before the first batch."""
        ...


class ActivationSource(Protocol):
    """Something the collector can read activation statistics from at scrape time."""

    def snapshot(self) -> ActivationSnapshotLike:
        """The latest statistics."""
        ...


class _ArrayHistogramChild:
    """Bucket counts of one label set; ``observe_array`` adds a batch in O(1) Python work."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum", "le")

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds
        self.le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_array(self, values: np.ndarray) -> None:
        """Add every element; NaN is skipped, +inf lands in +Inf and adds nothing to the sum."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        flat = flat[~np.isnan(flat)]
        if flat.size == 0:
            return
        index = np.searchsorted(self._bounds, flat, side="left")
        counts = np.bincount(index, minlength=len(self._bounds) + 1)
        finite = flat[np.isfinite(flat)]
        with self._lock:
            self._counts += counts
            self._sum += float(finite.sum())

    def sample(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs and the sum."""
        with self._lock:
            counts = np.cumsum(self._counts)
            total = self._sum
        return [(le, float(c)) for le, c in zip(self.le, counts, strict=True)], total


class ArrayHistogram:
    """A histogram family whose label sets may each have their own buckets."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _ArrayHistogramChild] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str, buckets: Sequence[float]) -> _ArrayHistogramChild:
        """The child for ``values``, created with ``buckets`` the first time."""
        with self._lock:
            child = self._children.get(values)
            if child is None:
                bounds = [float(b) for b in buckets if b != float("inf")]
                if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
                    raise ValueError(f"{self.name}: buckets must increase, got {list(buckets)}")
                child = self._children[values] = _ArrayHistogramChild(np.asarray(bounds))
            return child

    def remove(self, *values: str) -> None:
        """Drop one label set."""
        with self._lock:
            self._children.pop(values, None)

    def describe(self) -> list[Metric]:
        """The family without samples (for registry name checks)."""
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        """One histogram family with every label set."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        for values, child in children:
            buckets, total = child.sample()
            family.add_metric(list(values), buckets, total)
        yield family


class _Collector(Protocol):
    def describe(self) -> Iterable[Metric]: ...

    def collect(self) -> Iterable[Metric]: ...


class _WithSeries:
    """Registers a group of families; a scrape shows only those that have a series."""

    def __init__(self, members: Sequence[_Collector]) -> None:
        self._members = tuple(members)

    def describe(self) -> list[Metric]:
        """Every member's families (the registry checks names against them)."""
        return [family for member in self._members for family in member.describe()]

    def collect(self) -> Iterator[Metric]:
        """The members' families that have at least one sample."""
        for member in self._members:
            for family in member.collect():
                if family.samples:
                    yield family


class DriftSource(Protocol):
    """Something that tests recent layer means for drift when asked (at scrape time)."""

    def result(self) -> DriftResult | None:
        """The verdict on the current window, or None before any sampled row."""
        ...


@dataclass(frozen=True, slots=True)
class _ActivationFamilies:
    stats: list[GaugeMetricFamily]
    batches: CounterMetricFamily
    p_values: GaugeMetricFamily
    detected: GaugeMetricFamily
    window: GaugeMetricFamily

    def all(self) -> list[Metric]:
        return [*self.stats, self.batches, self.p_values, self.detected, self.window]


class _ActivationCollector:
    """Reads registered activation (and layer-drift) sources at scrape time."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str, str], tuple[ActivationSource, DriftSource | None]] = {}
        self._lock = threading.Lock()

    def add(
        self, model: str, version: str, source: ActivationSource, drift: DriftSource | None
    ) -> None:
        with self._lock:
            self._sources[(model, version)] = (source, drift)

    def remove(self, model: str, version: str) -> None:
        with self._lock:
            self._sources.pop((model, version), None)

    @staticmethod
    def _families() -> _ActivationFamilies:
        layer = [*_MODEL, "layer"]
        return _ActivationFamilies(
            stats=[
                GaugeMetricFamily(f"{PREFIX}layer_activation_{suffix}", doc, labels=layer)
                for suffix, doc in ACTIVATION_STATS
            ],
            batches=CounterMetricFamily(
                f"{PREFIX}layer_activation_sampled_batches",
                "batches whose layer activations were summarised",
                labels=list(_MODEL),
            ),
            p_values=GaugeMetricFamily(
                f"{PREFIX}layer_mean_drift_p_value",
                "p-value (Benjamini-Hochberg adjusted) of the layer's per-row means in the "
                "recent sampled rows against the reference inputs' means",
                labels=layer,
            ),
            detected=GaugeMetricFamily(
                f"{PREFIX}layer_mean_drift_detected",
                "1 when any layer's means drifted in the last test of the recent sampled rows",
                labels=list(_MODEL),
            ),
            window=GaugeMetricFamily(
                f"{PREFIX}layer_mean_drift_window_rows",
                "sampled rows in the last layer-mean drift test",
                labels=list(_MODEL),
            ),
        )

    def describe(self) -> list[Metric]:
        return self._families().all()

    def collect(self) -> Iterator[Metric]:
        out = self._families()
        with self._lock:
            sources = list(self._sources.items())
        for (model, version), (source, drift) in sources:
            snap = source.snapshot()
            out.batches.add_metric([model, version], float(snap.batches))
            if snap.batches:
                for column, family in enumerate(out.stats):
                    for row, layer in enumerate(snap.layers):
                        family.add_metric([model, version, layer], float(snap.stats[row, column]))
            result = drift.result() if drift is not None else None
            if result is None or not result.evaluated:
                continue
            out.detected.add_metric([model, version], 1.0 if result.drifted else 0.0)
            out.window.add_metric([model, version], float(result.n_window))
            for feature in result.features:
                if feature.adjusted_p is not None:
                    out.p_values.add_metric([model, version, feature.name], feature.adjusted_p)
        yield from out.all()


@dataclass(frozen=True, slots=True)
class AnomalyMetrics:
    """The children of one model version's anomaly families."""

    score: _ArrayHistogramChild
    anomalous: Counter
    rows: Counter

    def observe(self, scores: np.ndarray) -> None:
        """One batch of row scores (score / threshold)."""
        self.score.observe_array(scores)
        self.rows.inc(int(scores.size))
        flagged = int(np.count_nonzero(scores > 1.0))
        if flagged:
            self.anomalous.inc(flagged)


@dataclass(frozen=True, slots=True)
class ShadowMetrics:
    """The children of one (model, version, shadow version)'s shadow families."""

    compared: Counter
    dropped: Counter
    failed: Counter
    rows: Counter
    agreements: Counter
    difference: _ArrayHistogramChild
    duration: Histogram


class InsightMetrics:
    """Every insight family, declared once against ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._activations = _ActivationCollector()
        self.anomaly_score = ArrayHistogram(
            f"{PREFIX}anomaly_score",
            "per-row anomaly score: Mahalanobis distance from the reference divided by its "
            "threshold (above 1 is anomalous)",
            _MODEL,
        )
        self.anomaly_rows = Counter(
            f"{PREFIX}anomaly_scored_rows",
            "request rows given an anomaly score",
            _MODEL,
            registry=None,
        )
        self.anomalous_rows = Counter(
            f"{PREFIX}anomalous_rows",
            "request rows whose anomaly score exceeded the threshold",
            _MODEL,
            registry=None,
        )
        self.anomaly_threshold = Gauge(
            f"{PREFIX}anomaly_threshold",
            "Mahalanobis distance at the configured reference quantile (score 1)",
            _MODEL,
            registry=None,
        )
        shadow = (*_MODEL, "shadow_version")
        self.shadow_requests = Counter(
            f"{PREFIX}shadow_requests",
            "sampled requests for the shadow version by outcome (compared, dropped: queue "
            "full, failed: the shadow raised or did not load)",
            (*shadow, "outcome"),
            registry=None,
        )
        self.shadow_rows = Counter(
            f"{PREFIX}shadow_compared_rows",
            "rows answered by both the primary and the shadow version",
            shadow,
            registry=None,
        )
        self.shadow_agreements = Counter(
            f"{PREFIX}shadow_agreements",
            "compared rows where primary and shadow predict the same class (classifiers)",
            shadow,
            registry=None,
        )
        self.shadow_difference = ArrayHistogram(
            f"{PREFIX}shadow_output_difference",
            "per compared row, the largest |primary - shadow| over the compared output",
            shadow,
        )
        self.shadow_duration = Histogram(
            f"{PREFIX}shadow_duration_seconds",
            "time the shadow version took to run one sampled request",
            shadow,
            buckets=SHADOW_LATENCY_BUCKETS,
            registry=None,
        )
        registry.register(
            _WithSeries(
                [
                    self._activations,
                    self.anomaly_score,
                    self.anomaly_rows,
                    self.anomalous_rows,
                    self.anomaly_threshold,
                    self.shadow_requests,
                    self.shadow_rows,
                    self.shadow_agreements,
                    self.shadow_difference,
                    self.shadow_duration,
                ]
            )
        )

    # ------------------------------------------------------------ activations

    def watch_activations(
        self,
        model: str,
        version: str,
        source: ActivationSource,
        drift: DriftSource | None = None,
    ) -> None:
        """Export ``source``'s statistics (and ``drift``'s verdict) under (model, version).

        Both are read at scrape time, on the scraping thread.
        """
        self._activations.add(model, version, source, drift)

    def forget_activations(self, model: str, version: str) -> None:
        """Stop exporting a model version's activations (it was unloaded)."""
        self._activations.remove(model, version)

    # ------------------------------------------------------------ anomaly

    def anomaly(
        self, model: str, version: str, threshold: float, buckets: Sequence[float]
    ) -> AnomalyMetrics:
        """Resolve a model version's anomaly children (once, at load)."""
        self.anomaly_threshold.labels(model, version).set(threshold)
        return AnomalyMetrics(
            self.anomaly_score.labels(model, version, buckets=buckets),
            self.anomalous_rows.labels(model, version),
            self.anomaly_rows.labels(model, version),
        )

    def forget_anomaly(self, model: str, version: str) -> None:
        """Drop a model version's anomaly series."""
        self.anomaly_score.remove(model, version)
        for family in (self.anomaly_rows, self.anomalous_rows, self.anomaly_threshold):
            _remove(family, model, version)

    # ------------------------------------------------------------ shadow

    def shadow(
        self, model: str, version: str, shadow_version: str, buckets: Sequence[float]
    ) -> ShadowMetrics:
        """Resolve one primary/shadow pair's children (once, at load)."""
        labels = (model, version, shadow_version)
        requests = {o: self.shadow_requests.labels(*labels, o) for o in SHADOW_OUTCOMES}
        return ShadowMetrics(
            compared=requests["compared"],
            dropped=requests["dropped"],
            failed=requests["failed"],
            rows=self.shadow_rows.labels(*labels),
            agreements=self.shadow_agreements.labels(*labels),
            difference=self.shadow_difference.labels(*labels, buckets=buckets),
            duration=self.shadow_duration.labels(*labels),
        )

    def forget_shadow(self, model: str, version: str, shadow_version: str) -> None:
        """Drop one primary/shadow pair's series."""
        labels = (model, version, shadow_version)
        for outcome in SHADOW_OUTCOMES:
            _remove(self.shadow_requests, *labels, outcome)
        for family in (self.shadow_rows, self.shadow_agreements, self.shadow_duration):
            _remove(family, *labels)
        self.shadow_difference.remove(*labels)


def _remove(family: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        family.remove(*labels)
