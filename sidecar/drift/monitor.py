"""One model version's drift monitor: the bounded tap queue, the windows, the evaluations.

The request path calls :meth:`ModelMonitor.offer` (through the tap listener):
a sampling draw, a bounds check and a list append under a lock, whatever the
request's size. Everything else happens on the drift worker thread
(:class:`DriftWorker`), which calls :meth:`ModelMonitor.process` every
``interval`` seconds (one by default) while rows are queued, sooner when half
the queue is full, and not at all while nothing is pending:

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
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from detectors.chi2 import MIN_EXPECTED, merge_adjacent, merge_sparse_bins
from detectors.drift import DEFAULT_CONTINUOUS_TESTS, DEFAULT_DISCRETE_TESTS, DriftConfig
from detectors.reference import Reference
from exporters.drift import BinLayout, ModelDrift
from sidecar.config import DriftFleetConfig, DriftMonitoringConfig
from sidecar.drift.executor import (
    EvaluationError,
    Evaluator,
    EvaluatorFailed,
    ScopeSpec,
    evaluator,
)
from sidecar.drift.features import FeatureMap
from sidecar.drift.reference import write_reference
from sidecar.drift.worker import Priority
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

    @cached_property
    def _ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ordered (not categorical) layout features at once: their positions in the
        layout, their columns, and the lower bound of each of their exported bins after
        the first (``+inf`` padding), from the reference edges and the merge mapping."""
        layout = self.layout
        positions = [i for i, cat in enumerate(self.categorical) if not cat]
        lower = np.full((len(positions), max(layout.widest - 1, 0)), np.inf)
        for row, i in enumerate(positions):
            mapping, edges = self.mapping[i], self.edges[i]
            # exported bin j >= 1 starts at the edge before its first reference bin
            # (merged bins are runs of adjacent reference bins: mapping is non-decreasing)
            first = np.flatnonzero(np.diff(mapping)) + 1
            lower[row, : first.size] = edges[first - 1]
        columns = np.asarray([self.columns[i] for i in positions], dtype=np.intp)
        return np.asarray(positions, dtype=np.intp), columns, lower

    def count(self, rows: np.ndarray) -> np.ndarray:
        """Per layout feature and bin, the finite values of ``rows`` (n, F) in that bin.

        Ordered features are counted together, a few numpy calls per bin boundary
        for all of them and every row (a value's bin is the number of bin lower
        bounds it reaches); categorical ones one by one.
        """
        layout = self.layout
        width = layout.widest
        out = np.zeros((len(layout.features), width), dtype=np.int64)
        positions, columns, lower = self._ordered
        if positions.size:
            offsets = np.arange(positions.size, dtype=np.intp) * width
            counts = np.zeros(positions.size * width, dtype=np.int64)
            for start in range(0, rows.shape[0], COUNT_CHUNK_ROWS):
                x = rows[start : start + COUNT_CHUNK_ROWS, columns]
                index = np.broadcast_to(offsets, x.shape).copy()
                for j in range(lower.shape[1]):
                    index += x >= lower[:, j]
                finite = np.isfinite(x)
                counts += np.bincount(index[finite], minlength=counts.size)
            out[positions] = counts.reshape(positions.size, width)
        for i, f in enumerate(self.columns):
            if not self.categorical[i]:
                continue
            col = rows[:, f]
            col = col[np.isfinite(col)]
            if not col.size:
                continue
            edges = self.edges[i]
            pos = np.searchsorted(edges, col)
            hit = pos < edges.size
            hit[hit] = edges[pos[hit]] == col[hit]
            raw = np.where(hit, pos, edges.size)
            k = len(layout.reference_ratios[i])
            out[i, :k] = np.bincount(self.mapping[i][raw], minlength=k)
        return out


def _coarsen(mapping: np.ndarray, counts: np.ndarray, max_bins: int) -> np.ndarray:
    """Merge adjacent bins of ``mapping`` (smallest with its smaller neighbour) to max_bins."""
    sizes = list(np.bincount(mapping, weights=counts))
    relabel = merge_adjacent(sizes, lambda current: len(current) > max_bins)
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

    def __init__(self, name: str, ref: ScopeReference, config: DriftMonitoringConfig) -> None:
        self.name = name
        self.features = ref.features
        self.fleet = FleetBins.build(ref.reference, config.fleet) if config.fleet.enabled else None
        self.spec = ScopeSpec(
            name, ref.reference, frozenset(ref.features.names[: config.max_exported_features])
        )
        self.reference_rows = ref.reference.n_rows
        #: Rows not yet counted into the fleet bins (counted in batches: see ModelMonitor).
        self.uncounted: list[np.ndarray] = []


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


#: Rows counted into the fleet bins per numpy pass (bounds the temporary arrays).
COUNT_CHUNK_ROWS = 4096

#: Fleet bin counters are updated once this many rows were taken, or ...
FLEET_BATCH_ROWS = 1024
#: ... once this many seconds passed since the last update (what a scrape may lag).
FLEET_MAX_DELAY = 1.0

#: Rounds of the worker per ``flush_seconds`` at least (so a window is flushed on time).
ROUNDS_PER_FLUSH = 4

#: Seconds before the first retry of writing a captured reference; doubled after each failure.
CAPTURE_RETRY_FIRST = 1.0
#: The longest wait between two attempts to write a captured reference.
CAPTURE_RETRY_MAX = 300.0


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
        priority: Priority = "idle",
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        if (inputs is None) == (capture is None):
            raise ValueError("a monitor needs either a reference or a capture plan")
        self.model = model
        self.version = version
        self.config = config
        self._detector_config = detector_config
        self._priority = priority
        self._clock = clock
        self._monotonic = monotonic
        self._capture = capture
        self._scopes: list[_Scope] = []
        self._evaluator: Evaluator | None = None
        self._pending: tuple[ScopeReference | None, ScopeReference | None] = (inputs, outputs)
        self._export: ModelDrift | None = None
        self._closed = False
        # request path state (guarded by _lock)
        self._lock = threading.Lock()
        # each queued request's inputs, outputs (dicts of arrays, which the garbage collector
        # does not track) and rows, in three lists: queuing creates no tracked object, so
        # rows waiting a second for the worker never reach (and trigger) full collections
        self._queue: list[Tensors] = []
        self._queue_outputs: list[Tensors | None] = []
        self._queue_rows: list[int] = []
        self._queued_rows = 0
        self._dropped_rows = 0
        self._rate = config.sample_rate
        self._random = random.Random(f"{model}/{version}").random  # noqa: S311 - sampling, not security
        self._wake_rows = max(1, config.queue_rows // 2)  # queued rows that wake the worker
        self._asleep = False  # the worker may sleep past its interval: the next offer wakes it
        self._took_rows = False  # the last round took rows: more are likely coming
        # window state (worker thread only)
        self._filled = 0
        self._window_started = 0.0
        self._uncounted_rows = 0  # rows waiting in the scopes' ``uncounted``
        self._counted_at = 0.0  # monotonic time of the last fleet count
        # a captured reference whose file could not be written yet (worker thread only)
        self._unsaved: dict[str, np.ndarray] | None = None
        self._unsaved_path: Path | None = None
        self._retry_at = 0.0
        self._retry_delay = CAPTURE_RETRY_FIRST
        self._write_failures = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def capturing(self) -> bool:
        """True while the reference is still being collected from live rows."""
        return self._capture is not None

    @property
    def reference_unsaved(self) -> bool:
        """True while a captured reference is in use but its file could not be written yet."""
        return self._unsaved is not None

    @property
    def dropped_rows(self) -> int:
        """Sampled rows refused because the queue was full."""
        return self._dropped_rows

    @property
    def evaluator(self) -> Evaluator | None:
        """What scores this monitor's windows (None until the reference is known)."""
        return self._evaluator

    def activate(self, export: ModelDrift) -> None:
        """Start exporting (called once the model serves)."""
        self._export = export
        inputs, outputs = self._pending
        if inputs is not None:
            export.reference_state("ready")
            self._start_scopes(inputs, outputs)
        else:
            export.reference_state("capturing")

    def _start_scopes(self, inputs: ScopeReference, outputs: ScopeReference | None) -> None:
        scopes = [_Scope("inputs", inputs, self.config)]
        if outputs is not None:
            scopes.append(_Scope("outputs", outputs, self.config))
        since = self._clock()
        assert self._export is not None
        for scope in scopes:
            layout = scope.fleet.layout if scope.fleet is not None else None
            self._export.start_scope(scope.name, scope.reference_rows, layout, since)
        self._evaluator = evaluator(
            self.config.executor,
            f"model {self.model!r} version {self.version}",
            [scope.spec for scope in scopes],
            self._detector_config,
            self.config.window_size,
            self._priority,
        )
        self._scopes = scopes
        self._pending = (None, None)

    def close(self) -> None:
        """Stop monitoring: release the evaluator (its child process and shared memory)."""
        self._closed = True
        evaluator, self._evaluator = self._evaluator, None
        if evaluator is not None:
            evaluator.close()

    # ------------------------------------------------------------------ request path

    def offer(self, inputs: Tensors, outputs: Tensors | None, rows: int) -> bool:
        """Queue one answered request's tensors (O(1): no numpy, no copy).

        True when this request filled half the queue: the worker should not
        wait for its next round.
        """
        if rows <= 0:
            return False
        if self._capture is None and self._rate < 1.0 and self._random() >= self._rate:
            return False
        with self._lock:
            queued = self._queued_rows
            if queued + rows > self.config.queue_rows:
                self._dropped_rows += rows
                return False
            self._queue.append(inputs)
            self._queue_outputs.append(outputs)
            self._queue_rows.append(rows)
            self._queued_rows = queued + rows
            asleep, self._asleep = self._asleep, False
        return asleep or queued < self._wake_rows <= queued + rows

    def wait_limit(self) -> float | None:
        """How long the worker may wait before this monitor needs a round (worker thread).

        ``math.inf``: rows are waiting (or the last round took some: more are
        likely coming), the worker's own interval applies (or a fraction of
        ``flush_seconds`` when that is shorter). Otherwise the time until a due
        flush or reference write, or None when nothing is pending at all; either
        way the next ``offer`` then wakes the worker.
        """
        flush = self.config.flush_seconds
        with self._lock:
            if self._queue or self._uncounted_rows or self._took_rows:
                return math.inf if flush is None else flush / ROUNDS_PER_FLUSH
            self._asleep = True
        now = self._monotonic()
        due: list[float] = []
        if self._unsaved is not None:
            due.append(self._retry_at - now)
        if flush is not None and self._filled:
            due.append(self._window_started + flush - now)
        return max(0.0, min(due)) if due else None

    @property
    def queued_rows(self) -> int:
        """Rows waiting for the worker."""
        with self._lock:
            return self._queued_rows

    # ------------------------------------------------------------------ worker

    def process(self) -> None:
        """Take what was queued, fill windows, evaluate the full (or due) ones."""
        with self._lock:
            inputs, self._queue = self._queue, []
            outputs, self._queue_outputs = self._queue_outputs, []
            rows, self._queue_rows = self._queue_rows, []
            self._queued_rows = 0
        self._took_rows = bool(rows)
        if self._closed:
            return
        if inputs and self._capture is not None:
            queued = zip(inputs, outputs, rows, strict=True)
            items = self._take_capture([_Item(*item) for item in queued])
            inputs, outputs = [i.inputs for i in items], [i.outputs for i in items]
        now = self._monotonic()
        if self._unsaved is not None and now >= self._retry_at:
            self._save_captured(now)
        if not self._scopes:
            return
        if inputs:
            self._add(inputs, outputs, now)
        if self._uncounted_rows and (
            self._uncounted_rows >= FLEET_BATCH_ROWS or now - self._counted_at >= FLEET_MAX_DELAY
        ):
            self._count_fleet(now)
        flush = self.config.flush_seconds
        if flush is not None and self._filled and now - self._window_started >= flush:
            self._close()

    def _add(self, inputs: list[Tensors], outputs: list[Tensors | None], now: float) -> None:
        if len(self._scopes) > 1 and None in outputs:  # outputs are watched: rows need both
            both = [(i, o) for i, o in zip(inputs, outputs, strict=True) if o is not None]
            inputs, outputs = [i for i, _ in both], [o for _, o in both]
            if not inputs:
                return
        blocks: list[np.ndarray] = []
        for scope in self._scopes:
            tensors = inputs if scope.name == "inputs" else [o for o in outputs if o is not None]
            rows = scope.features.rows(tensors)
            if scope.fleet is not None:
                scope.uncounted.append(rows)
            blocks.append(rows)
        buffers = self._buffers()
        n = blocks[0].shape[0]
        self._uncounted_rows += n
        size = self.config.window_size
        pos = 0
        while pos < n:
            if self._filled == 0:
                self._window_started = now
            take = min(size - self._filled, n - pos)
            for buffer, rows in zip(buffers, blocks, strict=True):
                buffer[self._filled : self._filled + take] = rows[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == size:
                self._close()

    def _count_fleet(self, now: float) -> None:
        """Add the rows taken since the last count to the fleet bin counters, in one pass.

        Counting is a numpy pass per feature: done per worker tick it would cost
        a few hundred numpy calls for a few dozen rows, so rows are counted in
        batches of ``FLEET_BATCH_ROWS``, or after ``FLEET_MAX_DELAY`` seconds.
        """
        self._uncounted_rows = 0
        self._counted_at = now
        for scope in self._scopes:
            pending, scope.uncounted = scope.uncounted, []
            if scope.fleet is None or not pending or self._export is None:
                continue
            rows = pending[0] if len(pending) == 1 else np.concatenate(pending)
            self._export.add_bin_rows(scope.name, scope.fleet.count(rows))

    def _buffers(self) -> Sequence[np.ndarray]:
        """The window buffers; the thread executor when the process executor cannot have them."""
        assert self._evaluator is not None
        try:
            return self._evaluator.buffers()
        except EvaluatorFailed as exc:
            log.warning(
                "model %s version %s: %s; evaluating drift on the worker thread instead "
                "(executor: thread)",
                self.model,
                self.version,
                exc.message,
            )
            self._evaluator.close()
            self._evaluator = evaluator(
                "thread",
                f"model {self.model!r} version {self.version}",
                [scope.spec for scope in self._scopes],
                self._detector_config,
                self.config.window_size,
                self._priority,
            )
            return self._evaluator.buffers()

    def _close(self) -> None:
        n, self._filled = self._filled, 0
        export = self._export
        assert export is not None and self._evaluator is not None
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
        try:
            outcomes = self._evaluator.evaluate(n)
        except EvaluatorFailed as exc:
            log.error(
                "model %s version %s: drift window of %d rows not evaluated: %s; "
                "the next window starts a new evaluation process",
                self.model,
                self.version,
                n,
                exc.message,
            )
            export.window_skipped("executor_failed", n)
            return
        except EvaluationError as exc:
            log.error(
                "model %s version %s: drift evaluation failed in the evaluation process:\n%s",
                self.model,
                self.version,
                exc.message,
            )
            export.window_skipped("error", n)
            return
        except Exception:
            log.exception("model %s version %s: drift evaluation failed", self.model, self.version)
            export.window_skipped("error", n)
            return
        if any(not o.evaluated for o in outcomes):
            export.window_skipped("too_few_rows", n)
            return
        at = self._clock()
        for outcome in outcomes:
            assert outcome.evaluation is not None
            if outcome.evaluation.drifted:
                log.info(
                    "model %s version %s: %s drift in %d of %d features (%s)",
                    self.model,
                    self.version,
                    outcome.scope,
                    outcome.n_drifted,
                    outcome.n_features,
                    ", ".join(outcome.drifted_features),
                )
            export.evaluated(outcome.scope, replace(outcome.evaluation, timestamp=at))

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
        self._unsaved, self._unsaved_path = arrays, capture.path
        self._save_captured(self._monotonic())
        in_ref = fit_scope(capture.input_features, capture.input_features.rows([arrays]))
        out_ref: ScopeReference | None = None
        outputs = [p[1] for p in capture.parts]
        if capture.output_features is not None and all(o is not None for o in outputs):
            rows = capture.output_features.rows([o for o in outputs if o is not None])
            out_ref = fit_scope(capture.output_features, rows)
        self._capture = None
        self._start_scopes(in_ref, out_ref)

    def _save_captured(self, now: float) -> None:
        """Write the captured reference; on failure keep it (bounded: capture_rows) and retry.

        Retries back off from CAPTURE_RETRY_FIRST to CAPTURE_RETRY_MAX seconds and go on
        for the life of the process (the rows stay in use meanwhile, held once).
        """
        arrays, path = self._unsaved, self._unsaved_path
        assert arrays is not None and path is not None and self._export is not None
        rows = int(next(iter(arrays.values())).shape[0])
        try:
            write_reference(path, arrays)
        except OSError as exc:
            self._write_failures += 1
            self._export.reference_write_failed()
            self._export.reference_state("unsaved")
            self._retry_at = now + self._retry_delay
            log.warning(
                "model %s version %s: cannot write the captured drift reference (%d rows) to %s "
                "(attempt %d): %s; using it from memory, retrying in %g s",
                self.model,
                self.version,
                rows,
                path,
                self._write_failures,
                exc,
                self._retry_delay,
            )
            self._retry_delay = min(self._retry_delay * 2, CAPTURE_RETRY_MAX)
            return
        self._unsaved = self._unsaved_path = None
        self._export.reference_state("ready")
        log.info(
            "model %s version %s: wrote %d captured reference rows to %s%s",
            self.model,
            self.version,
            rows,
            path,
            f" after {self._write_failures} failed attempts" if self._write_failures else "",
        )


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
