"""The background thread that owns the prediction store.

The request path only appends to a bounded in-memory queue (``submit``: a
lock, a length check, an append). Every ``flush_interval_ms`` the worker turns
the queued requests into one row per prediction (argmax for classifiers, one
numpy call for all the queued requests of a model that fit together) and
writes them in one store call. When a flush found nothing queued, the worker
sleeps until the next sweep or the next prediction, which is then written
``flush_interval_ms`` after it came: an idle server does not wake it ten
times a second, a busy one once per flush. Label batches (``join``) wake the
worker at once; it first flushes what is queued, so a label never misses a
prediction that was answered before it was sent, then runs the join. Every
``sweep_interval_seconds`` it expires predictions and refreshes the pending
gauge.

A shadow version's predictions (``submit_shadow``, from the shadow's
background task) go through the same queue, after their primary's (the
primary is queued when the client is answered, the shadow runs later). A
flush writes the primaries first, then attaches the shadows to them
(``PredictionStore.attach``); a shadow whose row was labelled in between is
counted at once with the label the store kept.

Store failures never reach the request path: a failed write drops its rows
(counted as ``store_error``), a failed label batch is answered UNAVAILABLE,
and both are counted in ``sidecar_label_store_errors_total`` and logged (at
most once per ``LOG_EVERY`` seconds while the failure lasts, and once when
the store works again).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from exporters.labels import LabelMetrics
from sidecar.config import LabelStoreConfig
from sidecar.labels.errors import StoreError, StoreUnavailableError
from sidecar.labels.join import Label, LabelJoiner, LabelOutcome, ModelSpec
from sidecar.labels.store import PredictionStore
from sidecar.labels.types import ShadowRow, StoredPrediction

log = logging.getLogger(__name__)

#: Seconds between repeated log lines about a store that keeps failing.
LOG_EVERY = 10.0


@dataclass(slots=True)
class _Queued:
    request_id: str
    spec: ModelSpec
    version: str
    output: np.ndarray
    rows: int
    time: float
    shadow_version: str = ""  # set: the shadow version's prediction of a request


#: A queued request as the request path leaves it: ``_Queued``'s fields, the spec as its
#: index in the worker's list of specs. Strings, numbers and an array only, so the garbage
#: collector stops tracking it at once: predictions waiting for the flush never reach (and
#: trigger) full collections. The flush reads them as they are (``_Queued``: odd shapes).
_Entry = tuple[str, int, str, np.ndarray, int, float, str]


_Take = tuple[Sequence[Label], "concurrent.futures.Future[list[LabelOutcome]]"]


class StoreWorker:
    """Owns a PredictionStore on one thread; the event loop never waits on it."""

    def __init__(
        self,
        store: PredictionStore,
        joiner: LabelJoiner,
        metrics: LabelMetrics,
        config: LabelStoreConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._joiner = joiner
        self._metrics = metrics
        self._clock = clock
        self._flush_interval = config.flush_interval_ms / 1000.0
        self._sweep_interval = config.sweep_interval_seconds
        self._max_rows = config.queue_rows
        self._lock = threading.Lock()
        self._queue: list[_Entry] = []
        # the specs of the queued entries (held: their ids stay unique), by id(spec)
        self._specs: list[ModelSpec] = []
        self._spec_index: dict[int, int] = {}
        self._queued_rows = 0
        self._takes: list[_Take] = []
        self._wake = threading.Event()
        self._idle = False  # asleep with nothing queued: the next prediction wakes it
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failing: dict[str, float] = {}  # operation → when it was last logged
        self._skipped: set[str] = set()  # models whose output is not one value per row
        metrics.queue_rows.set_function(lambda: self._queued_rows)

    @property
    def queued_rows(self) -> int:
        """Predictions waiting to be written."""
        return self._queued_rows

    # ---------------------------------------------------------- any thread

    def submit(
        self,
        request_id: str,
        spec: ModelSpec,
        version: str,
        output: np.ndarray,
        rows: int,
        t: float,
    ) -> None:
        """Queue one answered request's predictions (O(1); drops when the queue is full)."""
        self._enqueue(request_id, spec, version, output, rows, t, "")

    def submit_shadow(
        self,
        request_id: str,
        spec: ModelSpec,
        version: str,
        shadow_version: str,
        output: np.ndarray,
        rows: int,
        t: float,
    ) -> None:
        """Queue a shadow version's predictions of a request answered by ``version`` (O(1))."""
        self._enqueue(request_id, spec, version, output, rows, t, shadow_version)

    def _enqueue(
        self,
        request_id: str,
        spec: ModelSpec,
        version: str,
        output: np.ndarray,
        rows: int,
        t: float,
        shadow_version: str,
    ) -> None:
        """One queue entry ("" shadow_version: the primary's); wakes an idle writer."""
        with self._lock:
            if self._queued_rows + rows <= self._max_rows and not self._closed:
                index = self._spec_index.get(id(spec))
                if index is None:
                    index = self._index(spec)
                self._queue.append((request_id, index, version, output, rows, t, shadow_version))
                self._queued_rows += rows
                idle, self._idle = self._idle, False
            else:
                idle = None
        if idle is None:
            self._metrics.dropped_rows(spec.name, "queue_full", rows)
        elif idle:
            self._wake.set()

    def _index(self, spec: ModelSpec) -> int:
        """Register a spec seen for the first time (under ``_lock``)."""
        self._specs.append(spec)
        index = self._spec_index[id(spec)] = len(self._specs) - 1
        return index

    async def join(self, labels: Sequence[Label]) -> list[LabelOutcome]:
        """Join a batch of labels on the worker thread; StoreUnavailableError if it cannot."""
        future: concurrent.futures.Future[list[LabelOutcome]] = concurrent.futures.Future()
        with self._lock:
            if self._closed or self._thread is None:
                raise StoreUnavailableError("the label store is not running (shutting down?)")
            self._takes.append((labels, future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store (off the loop), then start the thread."""
        try:
            await asyncio.to_thread(self._store.open)
        except StoreError:
            self._metrics.store_error("open")
            raise
        self._thread = threading.Thread(target=self._run, name="label-store", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Write what is queued, answer pending label batches, close the store."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join)
        self._thread = None

    # --------------------------------------------------------- worker thread

    def _run(self) -> None:
        monotonic = time.monotonic
        next_flush: float | None = None  # None: nothing queued, no flush due
        next_sweep = monotonic() + self._sweep_interval
        try:
            while True:
                with self._lock:
                    if next_flush is None and self._queue:  # came since the last flush
                        next_flush = monotonic() + self._flush_interval
                    self._idle = next_flush is None and not self._takes and not self._stopping
                deadline = next_sweep if next_flush is None else min(next_flush, next_sweep)
                wait = deadline - monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                self._wake.clear()
                with self._lock:
                    takes, self._takes = self._takes, []
                    stopping = self._stopping
                    if stopping:
                        self._closed = True
                    self._idle = False
                    queued = bool(self._queue)
                now = monotonic()
                if takes or stopping or (next_flush is not None and now >= next_flush):
                    self._guarded(self.flush)
                    # while predictions keep coming the next flush is an interval away; after
                    # a flush that found none, the worker sleeps until one comes
                    next_flush = now + self._flush_interval if queued else None
                for labels, future in takes:
                    self._answer(labels, future)
                if stopping:
                    break
                if now >= next_sweep:
                    self._guarded(self.sweep)
                    next_sweep = now + self._sweep_interval
        finally:
            try:
                self._store.close()
            except Exception:
                log.exception("closing the label store failed")

    @staticmethod
    def _guarded(step: Callable[[], None]) -> None:
        """Run a step; a bug in it is logged and the worker goes on (labels must not hang)."""
        try:
            step()
        except Exception:
            log.exception("label store worker: %s failed", step.__name__)

    def flush(self) -> None:
        """Write every queued prediction in one store call (worker thread only)."""
        with self._lock:
            entries, self._queue = self._queue, []
            self._queued_rows = 0
            specs = self._specs
            if entries:  # the indexes start again with the next queue (bounded by models)
                self._specs, self._spec_index = [], {}
        if not entries:
            return
        rows: list[StoredPrediction] = []
        shadows: list[ShadowRow] = []
        recorded: Counter[tuple[str, str]] = Counter()
        add = rows.append
        all_values = self._all_values(entries, specs)
        for (request_id, index, version, _, _, t, shadow), values in zip(
            entries, all_values, strict=True
        ):
            spec = specs[index]
            if shadow:
                shadows.extend(
                    ShadowRow(request_id, row, spec.name, version, shadow, v)
                    for row, v in enumerate(values)
                )
                continue
            expires = t + spec.ttl_seconds
            if len(values) == 1:  # the common case: one row per request
                add(StoredPrediction(request_id, 0, spec.name, version, values[0], t, expires))
            else:
                rows.extend(
                    StoredPrediction(request_id, row, spec.name, version, v, t, expires)
                    for row, v in enumerate(values)
                )
            recorded[(spec.name, version)] += len(values)
        started = time.perf_counter()
        if rows:
            self._put(rows, recorded)
        if shadows:
            self._attach(shadows)
        self._metrics.flush_duration.observe(time.perf_counter() - started)

    def _put(self, rows: list[StoredPrediction], recorded: Counter[tuple[str, str]]) -> None:
        try:
            result = self._store.put(rows, self._clock())
        except Exception as exc:  # StoreError, or a bug: either way the rows are lost
            self._failed("write", exc)
            for (model, _), n in recorded.items():
                self._metrics.dropped_rows(model, "store_error", n)
            return
        self._recovered("write")
        for (model, version), n in recorded.items():
            self._metrics.recorded_rows(model, version, n)
        for model, n in result.evicted.items():
            self._metrics.dropped_rows(model, "evicted", n)

    def _attach(self, shadows: list[ShadowRow]) -> None:
        try:
            result = self._store.attach(shadows, self._clock())
        except Exception as exc:  # StoreError, or a bug: either way the rows are lost
            self._failed("write", exc)
            for model, n in Counter(row.model for row in shadows).items():
                self._metrics.dropped_rows(model, "store_error", n)
            return
        self._recovered("write")
        kept = Counter((row.model, row.shadow_version) for row in result.attached)
        kept.update((row.model, row.shadow_version) for row, _ in result.labelled)
        for (model, version), n in kept.items():
            self._metrics.recorded_rows(model, version, n)
        for model, n in result.orphaned.items():
            self._metrics.dropped_rows(model, "no_primary", n)
        for row, actual in result.labelled:
            self._joiner.score_shadow(row, actual)

    def _all_values(
        self, entries: Sequence[_Entry], specs: Sequence[ModelSpec]
    ) -> list[list[float]]:
        """``_values`` of every entry, one numpy call per output layout.

        The entries whose output is a plain ``(rows, width)`` table are joined by
        (task, width, dtype) and reduced at once (argmax, or the value); any
        other shape goes through ``_values`` alone. Same values either way.
        """
        out: list[list[float] | None] = [None] * len(entries)
        groups: dict[tuple[object, ...], list[int]] = {}
        key: tuple[object, ...] = ()
        members: list[int] = []
        for i, (request_id, index, version, output, rows, t, shadow) in enumerate(entries):
            shape = output.shape
            task = specs[index].task
            if (
                len(shape) != 2
                or shape[0] != rows
                or shape[1] == 0
                or (task == "regression" and shape[1] != 1)
            ):  # reshaped, or logged and skipped
                item = _Queued(request_id, specs[index], version, output, rows, t, shadow)
                out[i] = self._values(item)
                continue
            if key != (task, shape[1], output.dtype):  # usually the same as the entry before
                key = (task, shape[1], output.dtype)
                members = groups.setdefault(key, [])
            members.append(i)
        for (kind, _, _), members in groups.items():
            tables = [entries[i][3] for i in members]
            table = tables[0] if len(tables) == 1 else np.concatenate(tables)
            if kind == "classification":
                flat: list[float] = np.argmax(table, axis=1).astype(np.float64).tolist()
            else:
                flat = table[:, 0].astype(np.float64).tolist()
            start = 0
            for i in members:
                end = start + entries[i][4]
                out[i] = flat[start:end]
                start = end
        return [values if values is not None else [] for values in out]

    def _values(self, item: _Queued) -> list[float]:
        """One prediction per row (argmax for classifiers); [] when the output does not fit."""
        spec = item.spec
        try:
            table = item.output.reshape(item.rows, -1)
        except ValueError:
            table = None
        if (
            table is None
            or table.shape[1] == 0
            or (spec.task == "regression" and table.shape[1] != 1)
        ):
            if spec.name not in self._skipped:
                self._skipped.add(spec.name)
                log.error(
                    "model %s: output %r has shape %s for %d rows; labels need %s per row, "
                    "so its predictions are not kept",
                    spec.name,
                    spec.output,
                    item.output.shape,
                    item.rows,
                    "class scores" if spec.task == "classification" else "one value",
                )
            return []
        if spec.task == "classification":
            return [float(v) for v in np.argmax(table, axis=1).tolist()]
        return [float(v) for v in table[:, 0].astype(np.float64).tolist()]

    def _answer(
        self, labels: Sequence[Label], future: concurrent.futures.Future[list[LabelOutcome]]
    ) -> None:
        try:
            outcomes = self._joiner.join(labels)
        except StoreError as exc:
            self._failed("read", exc)
            future.set_exception(
                StoreUnavailableError(f"label store unavailable, retry later: {exc.message}")
            )
        except Exception as exc:  # a bug: the caller answers INTERNAL, the worker goes on
            log.exception("joining %d labels failed", len(labels))
            future.set_exception(exc)
        else:
            self._recovered("read")
            future.set_result(outcomes)

    def sweep(self) -> None:
        """Expire predictions past their TTL and refresh the pending gauge."""
        try:
            result = self._store.sweep(self._clock(), self._joiner.models)
        except Exception as exc:
            self._failed("sweep", exc)
            return
        self._recovered("sweep")
        for model, n in result.expired.items():
            self._metrics.expired_rows(model, n)
        for model, n in result.evicted.items():
            self._metrics.dropped_rows(model, "evicted", n)
        for model, n in result.pending.items():
            self._metrics.set_pending(model, n)

    def _failed(self, operation: str, exc: Exception) -> None:
        self._metrics.store_error(operation)
        if not isinstance(exc, StoreError):  # not the backend: a bug, always with its traceback
            log.error("label store %s failed unexpectedly", operation, exc_info=exc)
            return
        now = time.monotonic()
        last = self._failing.get(operation)
        if last is None or now - last >= LOG_EVERY:
            self._failing[operation] = now
            log.error("label store %s failed: %s", operation, exc.message)

    def _recovered(self, operation: str) -> None:
        if self._failing.pop(operation, None) is not None:
            log.warning("label store %s works again", operation)
