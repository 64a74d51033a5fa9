"""Output-distribution metrics, computed off the request path.

The request path hands a request's outputs to ``OutputCollector.submit``: a
size check and a list append under a lock, well under a microsecond of work.
A background thread drains the queue every ``interval`` seconds (one by
default) while requests come, concatenates the outputs of each model version
and analyses them with a fixed handful of vectorised numpy calls however many
requests arrived: predicted classes, top-class confidence, regression values,
NaN/Inf counts. After an interval without requests it sleeps until one is
queued; it is woken early when a quarter of the queue's bound is used. A
scrape drains what is left before it reads, so ``/metrics`` reflects every
request answered before the scrape (tests rely on that; so may you).

Bounded: at most ``max_pending`` requests and ``max_pending_bytes`` of output
arrays wait at once (the arrays are kept alive until analysed); beyond that a
request's outputs are not analysed and ``sidecar_output_observations_dropped``
counts it. The serving counters still count every request.

Label values: configured class names (any other predicted index is
``other``), output names from the model's signature, model name and version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporters.histogram import ArrayHistogram, ArrayHistogramChild

log = logging.getLogger(__name__)

PREFIX = "sidecar_"
#: ``class`` label value of a predicted class index outside ``class_names``.
OTHER_CLASS = "other"

#: Top-class probability.
CONFIDENCE_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99,
)  # fmt: skip
#: Regression output values when the model's config gives no buckets: decades
#: either side of zero. Configure ``monitoring.regression.buckets`` for real use.
DEFAULT_OUTPUT_BUCKETS: tuple[float, ...] = (
    -1e4, -1e3, -100.0, -10.0, -1.0, -0.1, -0.01, 0.0, 0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4,
)  # fmt: skip

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class OutputMonitoring:
    """What to watch in a model's outputs (from its monitoring config and signature)."""

    float_outputs: tuple[str, ...] = ()  # checked for NaN/Inf
    classification_output: str | None = None
    class_names: tuple[str, ...] = ()
    logits: bool = False  # scores are logits: softmax before taking the top probability
    regression_outputs: tuple[str, ...] = ()
    regression_buckets: tuple[float, ...] | None = None

    @property
    def watched(self) -> tuple[str, ...]:
        """Outputs to look at: every float output and the monitored ones whatever their type
        (values that reach a histogram must be finite, or its _sum turns NaN for good)."""
        names = dict.fromkeys(self.float_outputs)
        if self.classification_output is not None:
            names.setdefault(self.classification_output)
        names.update(dict.fromkeys(self.regression_outputs))
        return tuple(names)


class OutputStats:
    """One model version's output state; mutated only by ``OutputCollector`` under its lock."""

    def __init__(
        self,
        name: str,
        version: str,
        monitoring: OutputMonitoring,
        confidence: ArrayHistogramChild | None,
        values: Mapping[str, ArrayHistogramChild],
    ) -> None:
        self.name = name
        self.version = version
        self.monitoring = monitoring
        self.watched = monitoring.watched
        self.nonfinite = dict.fromkeys(self.watched, 0)
        self.class_counts = np.zeros(len(monitoring.class_names) + 1, dtype=np.int64)  # + other
        self._confidence = confidence
        self._values = dict(values)

    def analyse(self, batch: Sequence[Outputs]) -> None:
        """Observe the outputs of several requests at once."""
        mon = self.monitoring
        for name in self.watched:
            parts = [a for outputs in batch if (a := outputs.get(name)) is not None and a.size]
            if not parts:
                continue
            # every part flattened (C order) and joined: one copy, whatever the count
            flat = parts[0].reshape(-1) if len(parts) == 1 else np.concatenate(parts, axis=None)
            finite: np.ndarray | None = None
            if flat.dtype.kind in "fc":
                finite = np.isfinite(flat)
                bad = int(flat.size - np.count_nonzero(finite))
                if bad:
                    self.nonfinite[name] += bad
                else:
                    finite = None
            if name == mon.classification_output:
                self._scores(parts, flat)
            hist = self._values.get(name)
            if hist is not None:
                hist.observe_array(flat if finite is None else flat[finite])

    def _scores(self, parts: list[np.ndarray], flat: np.ndarray | None = None) -> None:
        """Classes and confidence of the rows of ``parts`` (``flat``: them joined, flattened)."""
        width = parts[0].shape[-1] if parts[0].ndim else 1
        if len(parts) > 1 and any((p.shape[-1] if p.ndim else 1) != width for p in parts):
            for part in parts:  # a dynamic class dimension that differs between requests
                self._scores([part])
            return
        # each part's rows of ``width`` scores, in order: the joined flat array cut in rows
        scores = (flat if flat is not None else parts[0]).reshape(-1, width)
        if scores.dtype.kind not in "fc":
            scores = scores.astype(np.float64)
        index = scores.argmax(axis=1)
        top = scores.max(axis=1)
        confidence = top
        if self.monitoring.logits:  # top softmax probability = 1 / sum(exp(x - max))
            confidence = 1.0 / np.exp(scores - top[:, None]).sum(axis=1)
        keep = np.isfinite(confidence)
        if not keep.all():  # rows with NaN/Inf scores say nothing about classes
            index, confidence = index[keep], confidence[keep]
        other = len(self.monitoring.class_names)
        self.class_counts += np.bincount(np.minimum(index, other), minlength=other + 1)
        if self._confidence is not None:
            self._confidence.observe_array(confidence)


class OutputCollector(Collector):
    """Queues outputs on the request path; analyses them in the background and at scrape."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval: float = 1.0,
        max_pending: int = 65536,
        max_pending_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._interval = interval
        self._max_pending = max_pending
        self._max_bytes = max_pending_bytes
        # a queue this long (or this heavy) wakes the thread before its interval is up
        self._wake_pending = max(1, max_pending // 4)
        self._wake_bytes = max_pending_bytes // 4
        # queued outputs per model version: appending a request's outputs (a dict of
        # arrays, which the garbage collector does not track) creates no tracked object, so
        # a second's worth of queued requests never reaches (and triggers) full collections
        self._queue: dict[OutputStats, list[Outputs]] = {}
        self._queued = 0
        self._pending_bytes = 0
        self._dropped = 0
        self._idle = False  # the thread sleeps until a request comes (guarded by _queue_lock)
        self._queue_lock = threading.Lock()
        self._analyse_lock = threading.Lock()  # held while state changes or is read
        self._stats: dict[tuple[str, str], OutputStats] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # histogram families whose children this collector creates and collects
        self.confidence = ArrayHistogram(
            f"{PREFIX}prediction_confidence",
            "Top-class probability of each classified row (softmax of logits when so configured).",
            ["model", "version"],
            CONFIDENCE_BUCKETS,
        )
        self.values = ArrayHistogram(
            f"{PREFIX}output_value",
            "Values of regression outputs (buckets: monitoring.regression.buckets).",
            ["model", "version", "output"],
            DEFAULT_OUTPUT_BUCKETS,
        )
        registry.register(self)

    # ------------------------------------------------------------------ model versions

    def stats(self, name: str, version: str, monitoring: OutputMonitoring) -> OutputStats | None:
        """The state of one model version (kept across reloads with the same config);
        None when it has nothing to watch."""
        if not monitoring.watched:
            return None
        with self._analyse_lock:
            current = self._stats.get((name, version))
            if current is not None and current.monitoring == monitoring:
                return current
            confidence = (
                self.confidence.labels(name, version)
                if monitoring.classification_output is not None
                else None
            )
            values = {
                out: self.values.labels(name, version, out, buckets=monitoring.regression_buckets)
                for out in monitoring.regression_outputs
            }
            created = OutputStats(name, version, monitoring, confidence, values)
            self._stats[(name, version)] = created
            return created

    # ------------------------------------------------------------------ request path

    def submit(self, stats: OutputStats, outputs: Outputs) -> None:
        """Queue one request's outputs for analysis (O(number of outputs), no numpy)."""
        size = 0
        for name in stats.watched:
            array = outputs.get(name)
            if array is not None:
                size += array.nbytes
        with self._queue_lock:
            held, queued = self._pending_bytes, self._queued
            if queued >= self._max_pending or held + size > self._max_bytes:
                self._dropped += 1
                return
            batch = self._queue.get(stats)
            if batch is None:
                batch = self._queue[stats] = []
            batch.append(outputs)
            self._queued = queued + 1
            self._pending_bytes = held + size
            wake = (
                self._idle
                or queued + 1 == self._wake_pending
                or held < self._wake_bytes <= held + size
            )
            self._idle = False
        if wake:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Requests queued and not yet analysed."""
        with self._queue_lock:
            return self._queued

    # ------------------------------------------------------------------ analysis

    def drain(self) -> None:
        """Analyse everything queued so far (the worker's loop and every scrape call it)."""
        with self._analyse_lock:
            with self._queue_lock:
                groups, self._queue = self._queue, {}
                self._queued = self._pending_bytes = 0
            for stats, batch in groups.items():
                try:
                    stats.analyse(batch)
                except Exception:  # a surprising output must not stop the analysis of others
                    log.exception("output analysis of %s v%s failed", stats.name, stats.version)

    def start(self) -> None:
        """Run the background analysis thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="output-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after a last drain."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(10)
        self.drain()

    def _run(self) -> None:
        """Drain every ``interval`` while requests come; after an empty interval, sleep until
        a request is queued (then give others ``interval`` to join it)."""
        while not self._stop.is_set():
            if not self._full():
                self._wake.wait(self._interval)  # early: a quarter full, or stop
                self._wake.clear()
            with self._queue_lock:
                self._idle = not self._queue
                idle = self._idle
            if idle:
                self._wake.wait()  # submit wakes it; so does stop
                self._wake.clear()
                continue
            self.drain()

    def _full(self) -> bool:
        """A quarter of the queue's bound is used: time to drain, not to wait."""
        with self._queue_lock:
            return self._queued >= self._wake_pending or self._pending_bytes >= self._wake_bytes

    # ------------------------------------------------------------------ scrape

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return [
            *self._counter_families(),
            *self.confidence.describe(),
            *self.values.describe(),
        ]

    def _counter_families(self) -> tuple[CounterMetricFamily, ...]:
        return (
            CounterMetricFamily(
                f"{PREFIX}predictions",
                "Predicted classes (argmax of the scores) of classification models, per row.",
                labels=["model", "version", "class"],
            ),
            CounterMetricFamily(
                f"{PREFIX}nonfinite_outputs",
                "NaN or infinite elements in model outputs.",
                labels=["model", "version", "output"],
            ),
            CounterMetricFamily(
                f"{PREFIX}output_observations_dropped",
                "Requests whose outputs were not analysed because the analysis queue was full.",
            ),
        )

    def collect(self) -> Iterator[Metric]:
        """Drain, then export the state of every model version."""
        self.drain()
        predictions, nonfinite, dropped = self._counter_families()
        with self._analyse_lock:
            for stats in self._stats.values():
                labels = [stats.name, stats.version]
                counts = stats.class_counts
                for i, class_name in enumerate(stats.monitoring.class_names):
                    predictions.add_metric([*labels, class_name], float(counts[i]))
                if counts[-1]:
                    predictions.add_metric([*labels, OTHER_CLASS], float(counts[-1]))
                for output, count in stats.nonfinite.items():
                    nonfinite.add_metric([*labels, output], float(count))
            confidence = list(self.confidence.collect())
            values = list(self.values.collect())
        with self._queue_lock:
            dropped.add_metric([], float(self._dropped))
        yield predictions
        yield from confidence
        yield from values
        yield nonfinite
        yield dropped
