"""One model version's drift monitor: the bounded tap queue, the windows, the evaluations.

The request path calls :meth:`ModelMonitor.offer` (through the tap listener):
a sampling draw, a bounds check and a list append under a lock, whatever the
request's size. Everything else happens on the drift worker thread
(:class:`DriftWorker`), which calls :meth:`ModelMonitor.process` every
``interval`` seconds:

1. take the queued requests (one list swap);
2. while capturing a reference, keep rows until ``capture_rows``, write the
   file, fit the reference;
3. turn the queued tensors into feature rows with a few vectorised calls
   (``features.FeatureMap``), add them to the fleet bin counters, and copy
   them into the preallocated window buffer;
4. when the buffer holds ``window_size`` rows (or ``flush_seconds`` passed
   since the window's first row), score it with the detectors, report the
   result to the exporter, and start an empty window. Windows never overlap.

A window below ``min_window`` rows (a flush of a quiet model) is not
evaluated: ``sidecar_drift_windows_skipped_total{reason="too_few_rows"}``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detectors.chi2 import MIN_EXPECTED, merge_sparse_bins
from detectors.drift import (
    DEFAULT_CONTINUOUS_TESTS,
    DEFAULT_DISCRETE_TESTS,
    DriftConfig,
    DriftDetector,
    DriftResult,
)
from detectors.reference import Reference
from exporters.drift import BinLayout, Evaluation, FeatureValue, ModelDrift
from sidecar.config import DriftFleetConfig, DriftMonitoringConfig
from sidecar.drift.features import FeatureMap
from sidecar.drift.reference import write_reference
from sidecar.types import Tensors

log = logging.getLogger(__name__)

Clock = Callable[[], float]


# --------------------------------------------------------------------------- fleet bins


@dataclass(frozen=True, eq=False)
class FleetBins:
    """Counts live values of some features over the reference's (merged) bins.

    Bins are the reference's bins (quantile bins, one per distinct value of a
    discrete feature, or categories), adjacent ones merged until each expects
    at least 5 rows out of ``min_rows``, so the fleet statistic computed from
    the summed counters is a valid chi-squared. Categorical features keep their
    frequent categories and pool the rare ones with unseen values in a last
    bin. Fixed at load: every replica with the same reference has the same bins.
    """

    layout: BinLayout
    columns: tuple[int, ...]  # the feature index of each layout feature
    edges: tuple[np.ndarray, ...]  # interior edges, or category values (categorical)
    mapping: tuple[np.ndarray, ...]  # reference bin (or category; last: unseen) → exported bin
    categorical: tuple[bool, ...]

    @classmethod
    def build(cls, reference: Reference, config: DriftFleetConfig) -> FleetBins | None:
        """Bins of the testable features, in order, while features × bins fits the cap."""
        names: list[str] = []
        ratios: list[tuple[float, ...]] = []
        columns: list[int] = []
        edges: list[np.ndarray] = []
        mappings: list[np.ndarray] = []
        categorical: list[bool] = []
        used = 0
        for f, name in enumerate(reference.feature_names):
            if reference.unusable[f] is not None:
                continue
            counts = reference.bin_counts[f]
            total = float(counts.sum())
            if reference.kinds[f] == "categorical":
                rare = counts * config.min_rows < MIN_EXPECTED * total
                kept = np.flatnonzero(~rare)
                mapping: np.ndarray = np.full(counts.size + 1, kept.size, dtype=np.int64)
                mapping[kept] = np.arange(kept.size)
                merged: np.ndarray = np.append(counts[kept], counts[rare].sum()).astype(np.float64)
                is_cat = True
            else:
                mapping = _coarsen(
                    merge_sparse_bins(counts, config.min_rows, MIN_EXPECTED),
                    counts,
                    config.max_bins,
                )
                merged = np.bincount(mapping, weights=counts).astype(np.float64)
                is_cat = False
            if merged.size > config.max_bins:  # categorical: the rarest kept ones join "other"
                order = np.argsort(merged[:-1], kind="stable")
                fold = order[: merged.size - config.max_bins]
                keep = np.setdiff1d(np.arange(merged.size - 1), fold)
                remap = np.full(merged.size, keep.size, dtype=np.int64)
                remap[keep] = np.arange(keep.size)
                mapping = remap[mapping]
                merged = np.bincount(remap, weights=merged, minlength=keep.size + 1)
            if np.count_nonzero(merged) < 2:
                continue
            if used + merged.size > config.max_series:
                break
            used += merged.size
            names.append(name)
            ratios.append(tuple(float(r) for r in merged / total))
            columns.append(f)
            edges.append(reference.bin_edges[f])
            mappings.append(mapping)
            categorical.append(is_cat)
        if not names:
            return None
        return cls(
            BinLayout(tuple(names), tuple(ratios)),
            tuple(columns),
            tuple(edges),
            tuple(mappings),
            tuple(categorical),
        )

    def count(self, rows: np.ndarray) -> np.ndarray:
        """Per layout feature and bin, the finite values of ``rows`` (n, F) in that bin."""
        layout = self.layout
        out = np.zeros((len(layout.features), layout.widest), dtype=np.int64)
        for i, f in enumerate(self.columns):
            col = rows[:, f]
            col = col[np.isfinite(col)]
            if not col.size:
                continue
            edges = self.edges[i]
            if self.categorical[i]:
                pos = np.searchsorted(edges, col)
                hit = pos < edges.size
                hit[hit] = edges[pos[hit]] == col[hit]
                raw = np.where(hit, pos, edges.size)
            else:
                raw = np.searchsorted(edges, col, side="right")
            k = len(layout.reference_ratios[i])
            out[i, :k] = np.bincount(self.mapping[i][raw], minlength=k)
        return out


def _coarsen(mapping: np.ndarray, counts: np.ndarray, max_bins: int) -> np.ndarray:
    """Merge adjacent bins of ``mapping`` (smallest with its smaller neighbour) to max_bins."""
    sizes = list(np.bincount(mapping, weights=counts))
    groups = [[k] for k in range(len(sizes))]
    while len(sizes) > max_bins:
        k = int(np.argmin(sizes))
        if k == 0:
            nb = 1
        elif k == len(sizes) - 1:
            nb = k - 1
        else:
            nb = k - 1 if sizes[k - 1] <= sizes[k + 1] else k + 1
        lo, hi = min(k, nb), max(k, nb)
        sizes[lo] += sizes[hi]
        groups[lo].extend(groups[hi])
        del sizes[hi], groups[hi]
    relabel = np.empty(sum(len(g) for g in groups), dtype=np.int64)
    for index, group in enumerate(groups):
        relabel[group] = index
    result: np.ndarray = relabel[mapping]
    return result


# --------------------------------------------------------------------------- scopes


@dataclass(frozen=True)
class ScopeReference:
    """A scope's features and its fitted reference: what a window is compared with."""

    features: FeatureMap
    reference: Reference


class _Scope:
    """One scope (inputs or outputs) of a monitor with a known reference."""

    def __init__(
        self,
        name: str,
        ref: ScopeReference,
        config: DriftMonitoringConfig,
        detector_config: DriftConfig,
    ) -> None:
        self.name = name
        self.features = ref.features
        self.detector = DriftDetector(ref.reference, detector_config)
        self.buffer = np.empty((config.window_size, ref.features.width), dtype=np.float64)
        self.fleet = FleetBins.build(ref.reference, config.fleet) if config.fleet.enabled else None
        self.exported = frozenset(ref.features.names[: config.max_exported_features])
        self.reference_rows = ref.reference.n_rows


def evaluation_of(
    result: DriftResult, exported: frozenset[str], seconds: float, at: float
) -> Evaluation:
    """The exporter's view of a detector result: plain numbers, exported features only."""
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
    return Evaluation(
        drifted=result.drifted,
        features_drifted=result.n_drifted,
        features_skipped=result.n_skipped,
        window_rows=result.n_window,
        nonfinite_rows=result.n_nonfinite_rows_excluded,
        duration_seconds=seconds,
        timestamp=at,
        values=tuple(values),
    )


# --------------------------------------------------------------------------- capture


@dataclass
class Capture:
    """Collecting the first live rows as the reference (when its file does not exist)."""

    path: Path
    rows: int  # how many to collect
    inputs: tuple[str, ...]  # the model inputs written to the file
    input_features: FeatureMap
    output_features: FeatureMap | None
    parts: list[tuple[Tensors, Tensors | None]] = field(default_factory=list)
    have: int = 0  # rows collected so far


@dataclass(slots=True)
class _Item:
    inputs: Tensors
    outputs: Tensors | None
    rows: int


def _split(item: _Item, k: int) -> tuple[_Item, _Item]:
    head = _Item({n: a[:k] for n, a in item.inputs.items()}, None, k)
    tail = _Item({n: a[k:] for n, a in item.inputs.items()}, None, item.rows - k)
    if item.outputs is not None:
        head.outputs = {n: a[:k] for n, a in item.outputs.items()}
        tail.outputs = {n: a[k:] for n, a in item.outputs.items()}
    return head, tail


# --------------------------------------------------------------------------- the monitor


class ModelMonitor:
    """Drift monitoring of one model version (see the module docstring)."""

    def __init__(
        self,
        model: str,
        version: str,
        config: DriftMonitoringConfig,
        detector_config: DriftConfig,
        inputs: ScopeReference | None,
        outputs: ScopeReference | None,
        capture: Capture | None = None,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        if (inputs is None) == (capture is None):
            raise ValueError("a monitor needs either a reference or a capture plan")
        self.model = model
        self.version = version
        self.config = config
        self._detector_config = detector_config
        self._clock = clock
        self._monotonic = monotonic
        self._capture = capture
        self._scopes: list[_Scope] = []
        self._pending: tuple[ScopeReference | None, ScopeReference | None] = (inputs, outputs)
        self._export: ModelDrift | None = None
        # request path state (guarded by _lock)
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._queued_rows = 0
        self._dropped_rows = 0
        self._rate = config.sample_rate
        self._random = random.Random(f"{model}/{version}").random  # noqa: S311 - sampling, not security
        # window state (worker thread only)
        self._filled = 0
        self._window_started = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def capturing(self) -> bool:
        """True while the reference is still being collected from live rows."""
        return self._capture is not None

    @property
    def dropped_rows(self) -> int:
        """Sampled rows refused because the queue was full."""
        return self._dropped_rows

    def activate(self, export: ModelDrift) -> None:
        """Start exporting (called once the model serves)."""
        self._export = export
        inputs, outputs = self._pending
        if inputs is not None:
            self._start_scopes(inputs, outputs)

    def _start_scopes(self, inputs: ScopeReference, outputs: ScopeReference | None) -> None:
        scopes = [_Scope("inputs", inputs, self.config, self._detector_config)]
        if outputs is not None:
            scopes.append(_Scope("outputs", outputs, self.config, self._detector_config))
        since = self._clock()
        assert self._export is not None
        for scope in scopes:
            layout = scope.fleet.layout if scope.fleet is not None else None
            self._export.start_scope(scope.name, scope.reference_rows, layout, since)
        self._scopes = scopes
        self._pending = (None, None)

    # ------------------------------------------------------------------ request path

    def offer(self, inputs: Tensors, outputs: Tensors | None, rows: int) -> None:
        """Queue one answered request's tensors (O(1): no numpy, no copy)."""
        if rows <= 0:
            return
        if self._capture is None and self._rate < 1.0 and self._random() >= self._rate:
            return
        with self._lock:
            if self._queued_rows + rows > self.config.queue_rows:
                self._dropped_rows += rows
                return
            self._queue.append(_Item(inputs, outputs, rows))
            self._queued_rows += rows

    @property
    def queued_rows(self) -> int:
        """Rows waiting for the worker."""
        with self._lock:
            return self._queued_rows

    # ------------------------------------------------------------------ worker

    def process(self) -> None:
        """Take what was queued, fill windows, evaluate the full (or due) ones."""
        with self._lock:
            items, self._queue = self._queue, []
            self._queued_rows = 0
        if items and self._capture is not None:
            items = self._take_capture(items)
        if not self._scopes:
            return
        now = self._monotonic()
        if items:
            self._add(items, now)
        flush = self.config.flush_seconds
        if flush is not None and self._filled and now - self._window_started >= flush:
            self._close()

    def _add(self, items: list[_Item], now: float) -> None:
        if len(self._scopes) > 1:  # outputs are watched: rows need both (OK requests have them)
            items = [i for i in items if i.outputs is not None]
            if not items:
                return
        blocks: list[np.ndarray] = []
        for scope in self._scopes:
            tensors = [i.inputs if scope.name == "inputs" else i.outputs for i in items]
            rows = scope.features.rows([t for t in tensors if t is not None])
            if scope.fleet is not None and self._export is not None:
                self._export.add_bin_rows(scope.name, scope.fleet.count(rows))
            blocks.append(rows)
        n = blocks[0].shape[0]
        size = self.config.window_size
        pos = 0
        while pos < n:
            if self._filled == 0:
                self._window_started = now
            take = min(size - self._filled, n - pos)
            for scope, rows in zip(self._scopes, blocks, strict=True):
                scope.buffer[self._filled : self._filled + take] = rows[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == size:
                self._close()

    def _close(self) -> None:
        n, self._filled = self._filled, 0
        export = self._export
        assert export is not None
        if n < self.config.min_window:
            export.window_skipped("too_few_rows", n)
            log.info(
                "model %s version %s: drift window of %d rows not evaluated (min_window %d)",
                self.model,
                self.version,
                n,
                self.config.min_window,
            )
            return
        results: list[tuple[_Scope, Evaluation]] = []
        try:
            for scope in self._scopes:
                started = time.perf_counter()
                result = scope.detector.score(scope.buffer[:n])
                seconds = time.perf_counter() - started
                if not result.evaluated:
                    export.window_skipped("too_few_rows", n)
                    return
                results.append(
                    (scope, evaluation_of(result, scope.exported, seconds, self._clock()))
                )
                if result.drifted:
                    log.info(
                        "model %s version %s: %s drift in %d of %d features (%s)",
                        self.model,
                        self.version,
                        scope.name,
                        result.n_drifted,
                        result.n_features,
                        ", ".join(result.drifted_features[:10]),
                    )
        except Exception:
            log.exception("model %s version %s: drift evaluation failed", self.model, self.version)
            export.window_skipped("error", n)
            return
        for scope, evaluation in results:
            export.evaluated(scope.name, evaluation)

    # ------------------------------------------------------------------ capture

    def _take_capture(self, items: list[_Item]) -> list[_Item]:
        capture = self._capture
        assert capture is not None
        rest: list[_Item] = []
        for item in items:
            need = capture.rows - capture.have
            if need <= 0:
                rest.append(item)
                continue
            if item.rows > need:
                item, tail = _split(item, need)
                rest.append(tail)
            capture.parts.append((item.inputs, item.outputs))
            capture.have += item.rows
        if capture.have >= capture.rows:
            self._finish_capture(capture)
        return rest

    def _finish_capture(self, capture: Capture) -> None:
        inputs = [p[0] for p in capture.parts]
        arrays = {n: np.concatenate([t[n] for t in inputs]) for n in capture.inputs}
        try:
            write_reference(capture.path, arrays)
        except OSError:
            log.exception(
                "model %s version %s: cannot write the captured drift reference to %s; "
                "using it for this process only",
                self.model,
                self.version,
                capture.path,
            )
        else:
            log.info(
                "model %s version %s: wrote %d captured reference rows to %s",
                self.model,
                self.version,
                capture.have,
                capture.path,
            )
        in_ref = fit_scope(capture.input_features, capture.input_features.rows([arrays]))
        out_ref: ScopeReference | None = None
        outputs = [p[1] for p in capture.parts]
        if capture.output_features is not None and all(o is not None for o in outputs):
            rows = capture.output_features.rows([o for o in outputs if o is not None])
            out_ref = fit_scope(capture.output_features, rows)
        self._capture = None
        self._start_scopes(in_ref, out_ref)


def fit_scope(features: FeatureMap, rows: np.ndarray) -> ScopeReference:
    """Fit the detectors' reference on feature rows (seconds for large references)."""
    reference = Reference.fit(rows, features.names, categorical=features.categorical)
    return ScopeReference(features, reference)


def detector_config(config: DriftMonitoringConfig) -> DriftConfig:
    """The detectors' configuration for a model's drift section."""
    return DriftConfig(
        alpha=config.alpha,
        correction=config.correction,
        continuous_tests=config.tests or DEFAULT_CONTINUOUS_TESTS,
        discrete_tests=config.discrete_tests or DEFAULT_DISCRETE_TESTS,
        psi_thresholds=config.psi_thresholds,
        min_window=config.min_window,
    )
