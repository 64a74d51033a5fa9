"""Metric families of the delayed-label join (docs/metrics.md, "Delayed labels").

``LabelMetrics`` declares every family once, against the registry it is given;
nothing is registered at import. Label values are whatever the caller passes,
and the caller (``sidecar.labels``) passes only configured names: model names
and class names from configuration, a fixed set of outcomes and reasons, and
``OTHER`` for a stored class or version this server does not know, and
``UNKNOWN_MODEL`` (empty: no model directory has an empty name, so it never
mixes with a real model) for a label naming a model that is not configured.

Children are cached per label tuple: the join calls these methods once per
label, from a background thread, so a dict lookup replaces prometheus_client's
own label parsing on the common path. The caches are bounded by the same
configured label values as the series themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: The value used for anything a client sent that is not a configured name.
OTHER: Final = "other"
#: The ``model`` value of labels that name a model this server does not have.
UNKNOWN_MODEL: Final = ""
#: Outcomes of one received label (the FeedbackService reply says the same).
OUTCOMES: Final = ("matched", "unknown_id", "expired", "duplicate", "invalid")
#: Why a prediction left the store without a label, other than its TTL. ``no_primary``:
#: a shadow version's prediction whose primary prediction was not in the store.
DROP_REASONS: Final = ("evicted", "queue_full", "store_error", "no_primary")
#: Per-class outcomes from which PromQL computes precision, recall and F1.
CLASS_OUTCOMES: Final = ("tp", "fp", "fn")
#: Store operations whose failures are counted.
STORE_OPERATIONS: Final = ("open", "write", "read", "sweep")
#: Why a FeedbackService call was refused before any of its labels was looked at.
REFUSE_REASONS: Final = ("too_many_labels", "request_too_large")
#: The ``store`` label of ``sidecar_pending_predictions`` for a store only this
#: process holds (memory, SQLite): its counts add up across replicas. A shared
#: store (Redis) is named instead, and every replica reports the same count for it.
LOCAL_STORE: Final = "local"

_Key = tuple[str, ...]


class LabelMetrics:
    """Every metric family the label join exports, bound to one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        delay_buckets: Sequence[float],
        error_buckets: Sequence[float],
        backend: str,
        store: str = LOCAL_STORE,
    ) -> None:
        self.backend = backend
        self.store = store
        self.received = Counter(
            "sidecar_labels_received",
            "Labels received on FeedbackService, by outcome (matched, unknown_id, expired, "
            "duplicate, invalid); model is 'other' when the label names no configured model.",
            ["model", "outcome"],
            registry=registry,
        )
        self.labeled = Counter(
            "sidecar_labeled_predictions",
            "Classification predictions that received a label, by the version that made them "
            "(a shadow version's predictions under its own version) and whether the prediction "
            "was correct ('true' or 'false').",
            ["model", "version", "correct"],
            registry=registry,
        )
        self.confusion = Counter(
            "sidecar_confusion_matrix",
            "Labelled classification predictions by actual (label) and predicted class.",
            ["model", "version", "actual", "predicted"],
            registry=registry,
        )
        self.class_outcomes = Counter(
            "sidecar_class_outcomes",
            "Per-class outcomes of labelled predictions: tp (predicted and actual), fp "
            "(predicted, actual another class), fn (actual, predicted another class).",
            ["model", "version", "class", "outcome"],
            registry=registry,
        )
        self.delay = Histogram(
            "sidecar_label_delay_seconds",
            "Time from a prediction to the label that matched it.",
            ["model"],
            buckets=tuple(delay_buckets),
            registry=registry,
        )
        self.pending = Gauge(
            "sidecar_pending_predictions",
            "Predictions waiting for a label in the store; store is 'local' for a store of "
            "this process (sum across replicas), else the shared store every replica reports "
            "the same count of (count it once: max by store).",
            ["model", "store"],
            registry=registry,
        )
        self.expired = Counter(
            "sidecar_predictions_expired",
            "Predictions that reached their TTL without a label.",
            ["model"],
            registry=registry,
        )
        self.recorded = Counter(
            "sidecar_predictions_recorded",
            "Predictions (rows) handed to the store to wait for a label.",
            ["model", "version"],
            registry=registry,
        )
        self.dropped = Counter(
            "sidecar_predictions_dropped",
            "Predictions lost before a label or their TTL: evicted (store full), queue_full "
            "(write queue full), store_error (the store failed the write), no_primary (a shadow "
            "version's prediction whose primary prediction was not in the store).",
            ["model", "reason"],
            registry=registry,
        )
        self.abs_error = Histogram(
            "sidecar_label_absolute_error",
            "Regression: absolute difference between prediction and label, in the model's unit.",
            ["model", "version"],
            buckets=tuple(error_buckets),
            registry=registry,
        )
        self.squared_error = Counter(
            "sidecar_label_squared_error",
            "Regression: sum of squared differences between prediction and label "
            "(RMSE = sqrt(increase(this) / increase(sidecar_label_absolute_error_count))).",
            ["model", "version"],
            registry=registry,
        )
        self.store_errors = Counter(
            "sidecar_label_store_errors",
            "Operations of the prediction store that failed (write, read, sweep, open).",
            ["backend", "operation"],
            registry=registry,
        )
        self.queue_rows = Gauge(
            "sidecar_label_store_queue_rows",
            "Predictions (rows) waiting to be written to the store.",
            registry=registry,
        )
        self.flush_duration = Histogram(
            "sidecar_label_store_flush_duration_seconds",
            "Time one write of queued predictions to the store took.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.refused = Counter(
            "sidecar_label_requests_refused",
            "FeedbackService calls refused before any of their labels was looked at, by reason "
            "(too_many_labels: more than labels.max_batch_labels in one SendLabels call; "
            "request_too_large: a message larger than grpc.max_message_bytes).",
            ["reason"],
            registry=registry,
        )
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(backend, operation)
        for reason in REFUSE_REASONS:
            self.refused.labels(reason)
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, _Key], Counter] = {}
        self._histograms: dict[tuple[str, _Key], Histogram] = {}

    # ----------------------------------------------------------------- children

    def _counter(self, family: Counter, name: str, key: _Key) -> Counter:
        child = self._counters.get((name, key))
        if child is None:
            with self._lock:
                child = family.labels(*key)
                self._counters[(name, key)] = child
        return child

    def _histogram(self, family: Histogram, name: str, key: _Key) -> Histogram:
        child = self._histograms.get((name, key))
        if child is None:
            with self._lock:
                child = family.labels(*key)
                self._histograms[(name, key)] = child
        return child

    # ------------------------------------------------------------------ updates

    def prepare_model(
        self, model: str, version: str, class_names: Sequence[str], confusion: bool = False
    ) -> None:
        """Create a model version's series at zero, so rates and ratios exist from the start.

        With ``confusion`` the whole classes × classes matrix is created too.
        """
        for outcome in OUTCOMES:
            self._counter(self.received, "received", (model, outcome))
        for reason in DROP_REASONS:
            self._counter(self.dropped, "dropped", (model, reason))
        self._counter(self.expired, "expired", (model,))
        self._counter(self.recorded, "recorded", (model, version))
        self.pending.labels(model, self.store)
        self._histogram(self.delay, "delay", (model,))
        if class_names:
            for correct in ("true", "false"):
                self._counter(self.labeled, "labeled", (model, version, correct))
            for name in class_names:
                for outcome in CLASS_OUTCOMES:
                    self._counter(self.class_outcomes, "class", (model, version, name, outcome))
                if confusion:
                    for predicted in class_names:
                        self._counter(
                            self.confusion, "confusion", (model, version, name, predicted)
                        )
        else:
            self._histogram(self.abs_error, "abs_error", (model, version))
            self._counter(self.squared_error, "squared_error", (model, version))

    def label_outcome(self, model: str, outcome: str) -> None:
        """One label answered with ``outcome`` (one of OUTCOMES)."""
        self._counter(self.received, "received", (model, outcome)).inc()

    def classified(
        self,
        model: str,
        version: str,
        actual: str,
        predicted: str,
        delay: float | None,
        confusion: bool,
        predicted_is_class: bool = True,
    ) -> None:
        """A classification label matched its prediction.

        ``predicted_is_class`` is False when the stored prediction is not one of
        this replica's configured classes (then it is ``OTHER`` and gets no fp).
        ``delay`` is None for a shadow version's prediction: the label's delay is
        observed once, with the primary's.
        """
        correct = actual == predicted and predicted_is_class
        self._counter(
            self.labeled, "labeled", (model, version, "true" if correct else "false")
        ).inc()
        if confusion:
            self._counter(self.confusion, "confusion", (model, version, actual, predicted)).inc()
        if correct:
            self._counter(self.class_outcomes, "class", (model, version, actual, "tp")).inc()
        else:
            self._counter(self.class_outcomes, "class", (model, version, actual, "fn")).inc()
            if predicted_is_class:
                self._counter(self.class_outcomes, "class", (model, version, predicted, "fp")).inc()
        if delay is not None:
            self._histogram(self.delay, "delay", (model,)).observe(max(delay, 0.0))

    def regressed(self, model: str, version: str, error: float, delay: float | None) -> None:
        """A regression label matched its prediction; ``error`` = prediction − label.

        ``delay`` is None for a shadow version's prediction (see ``classified``).
        """
        self._histogram(self.abs_error, "abs_error", (model, version)).observe(abs(error))
        self._counter(self.squared_error, "squared_error", (model, version)).inc(error * error)
        if delay is not None:
            self._histogram(self.delay, "delay", (model,)).observe(max(delay, 0.0))

    def recorded_rows(self, model: str, version: str, rows: int) -> None:
        """``rows`` predictions were handed to the store."""
        self._counter(self.recorded, "recorded", (model, version)).inc(rows)

    def dropped_rows(self, model: str, reason: str, rows: int) -> None:
        """``rows`` predictions were lost for ``reason`` (one of DROP_REASONS)."""
        if rows:
            self._counter(self.dropped, "dropped", (model, reason)).inc(rows)

    def expired_rows(self, model: str, rows: int) -> None:
        """``rows`` predictions reached their TTL unlabelled."""
        if rows:
            self._counter(self.expired, "expired", (model,)).inc(rows)

    def set_pending(self, model: str, count: int) -> None:
        """The store holds ``count`` predictions of ``model`` waiting for a label."""
        self.pending.labels(model, self.store).set(count)

    def store_error(self, operation: str) -> None:
        """A store operation (write, read, sweep, open) failed."""
        self._counter(self.store_errors, "store_errors", (self.backend, operation)).inc()

    def refused_request(self, reason: str) -> None:
        """A FeedbackService call was refused whole (``reason`` from REFUSE_REASONS)."""
        self.refused.labels(reason).inc()
