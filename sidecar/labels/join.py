"""The join: check each label, take its prediction from the store, count the pair.

Runs on the ``StoreWorker`` thread, never on the event loop. Every label gets
an outcome of its own (a bad label never fails the rest of its batch), and
metrics are updated only after the store answered, so a batch refused because
the store is down (UNAVAILABLE, retried by the client) is not counted twice.
Metric label values come from configuration: a label naming a model this
server does not know is counted under ``model=""`` (as the serving metrics do).

A prediction taken with a shadow version's prediction of the same row is
counted twice: under its own version and under the shadow version (the
label's outcome and delay once). A shadow prediction written after its row
was labelled comes back from the store's ``attach`` with the label and is
counted by ``score_shadow``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from exporters.labels import OTHER, UNKNOWN_MODEL, LabelMetrics
from sidecar.config import CONFUSION_MATRIX_MAX_CLASSES, MonitoringConfig
from sidecar.errors import quote
from sidecar.labels.store import PredictionStore
from sidecar.labels.types import Found, Lookup, ShadowRow, TakeResult

LabelKind = Literal["class_name", "class_index", "number"]
#: Longest version string exported as a metric label (model versions are numbers).
_MAX_VERSION = 20


@dataclass(frozen=True, slots=True)
class Label:
    """One ground-truth label as the client sent it."""

    request_id: str
    model: str
    row: int
    kind: LabelKind | None  # None: the client set no value
    value: str | int | float | None


@dataclass(frozen=True, slots=True)
class LabelOutcome:
    """What happened to one label: one of exporters.labels.OUTCOMES, and why."""

    outcome: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the join needs to know about one model that takes labels."""

    name: str
    task: Literal["classification", "regression"]
    output: str  # the output whose rows are the predictions
    ttl_seconds: float
    class_names: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    confusion_matrix: bool = True

    @classmethod
    def from_config(
        cls, name: str, monitoring: MonitoringConfig, default_ttl: float
    ) -> ModelSpec | None:
        """The spec of a model, or None when it takes no labels."""
        labels = monitoring.labels
        if not labels.enabled:
            return None
        ttl = labels.ttl_seconds or default_ttl
        if monitoring.task == "classification" and monitoring.classification is not None:
            return cls(
                name,
                "classification",
                monitoring.classification.output,
                ttl,
                class_names=monitoring.classification.class_names,
                confusion_matrix=(
                    labels.confusion_matrix
                    if labels.confusion_matrix is not None
                    else len(monitoring.classification.class_names) <= CONFUSION_MATRIX_MAX_CLASSES
                ),
            )
        if monitoring.task == "regression" and monitoring.regression is not None:
            return cls(
                name,
                "regression",
                labels.output or monitoring.regression.outputs[0],
                ttl,
                min_value=labels.min_value,
                max_value=labels.max_value,
            )
        return None


class _Invalid(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class LabelJoiner:
    """Validates labels, takes their predictions from the store, updates the metrics."""

    def __init__(
        self,
        store: PredictionStore,
        metrics: LabelMetrics,
        max_row: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_row = max_row
        self._clock = clock
        self._specs: dict[str, ModelSpec] = {}
        self._known: set[str] = set()
        self._class_index: dict[str, dict[str, int]] = {}

    @property
    def models(self) -> list[str]:
        """Names of the models that take labels."""
        return list(self._specs)

    def known(self, model: str) -> None:
        """A configured model (labels for it are counted under its name)."""
        self._known.add(model)

    def register(self, spec: ModelSpec) -> None:
        """A model that takes labels."""
        self._known.add(spec.name)
        self._class_index[spec.name] = {c: i for i, c in enumerate(spec.class_names)}
        self._specs[spec.name] = spec

    def join(self, labels: Sequence[Label]) -> list[LabelOutcome]:
        """One outcome per label, in order; StoreError when the store cannot answer."""
        now = self._clock()
        outcomes: list[LabelOutcome | None] = [None] * len(labels)
        pending: list[tuple[int, ModelSpec, float]] = []
        lookups: list[Lookup] = []
        for i, label in enumerate(labels):
            try:
                spec, actual = self._check(label)
            except _Invalid as bad:
                outcomes[i] = LabelOutcome("invalid", bad.detail)
                continue
            pending.append((i, spec, actual))
            lookups.append(Lookup(label.request_id, label.row, spec.name, actual))
        results = self._store.take(lookups, now) if lookups else []
        for (i, spec, actual), result in zip(pending, results, strict=True):
            outcomes[i] = self._count(labels[i], spec, actual, result, now)
        final: list[LabelOutcome] = []
        for label, outcome in zip(labels, outcomes, strict=True):
            assert outcome is not None
            model = label.model if label.model in self._known else UNKNOWN_MODEL
            self._metrics.label_outcome(model, outcome.outcome)
            final.append(outcome)
        return final

    def _check(self, label: Label) -> tuple[ModelSpec, float]:
        if not label.request_id:
            raise _Invalid("request_id is empty")
        spec = self._specs.get(label.model)
        if spec is None:
            takes = ", ".join(sorted(self._specs)) or "(none)"
            raise _Invalid(
                f"model {quote(label.model)} takes no labels here; models that do: {takes}"
            )
        if label.row > self._max_row:
            raise _Invalid(
                f"row {label.row} is beyond the largest batch this server accepts "
                f"(limits.max_batch_rows = {self._max_row + 1})"
            )
        if spec.task == "classification":
            return spec, float(self._class_of(spec, label))
        if label.kind != "number" or not isinstance(label.value, float | int):
            raise _Invalid(
                f"model {quote(spec.name)} is a regressor: the label must be a number, "
                f"got {label.kind or 'no value'}"
            )
        value = float(label.value)
        if not math.isfinite(value):
            raise _Invalid(f"regression label must be a finite number, got {value}")
        if spec.min_value is not None and value < spec.min_value:
            raise _Invalid(f"label {value} is below min_value {spec.min_value}")
        if spec.max_value is not None and value > spec.max_value:
            raise _Invalid(f"label {value} is above max_value {spec.max_value}")
        return spec, value

    def _class_of(self, spec: ModelSpec, label: Label) -> int:
        if label.kind == "class_name" and isinstance(label.value, str):
            index = self._class_index[spec.name].get(label.value)
            if index is None:
                raise _Invalid(
                    f"class {quote(label.value)} is not a class of model {quote(spec.name)}; "
                    f"classes: {', '.join(spec.class_names)}"
                )
            return index
        if label.kind == "class_index" and isinstance(label.value, int):
            if not 0 <= label.value < len(spec.class_names):
                raise _Invalid(
                    f"class_index {label.value} is out of range: model {quote(spec.name)} "
                    f"has {len(spec.class_names)} classes (0 to {len(spec.class_names) - 1})"
                )
            return label.value
        raise _Invalid(
            f"model {quote(spec.name)} is a classifier: the label must be a class_name or "
            f"class_index, got {label.kind or 'no value'}"
        )

    def _count(
        self, label: Label, spec: ModelSpec, actual: float, result: TakeResult, now: float
    ) -> LabelOutcome:
        what = f"request {quote(label.request_id)} row {label.row}"
        if result.found is Found.UNKNOWN:
            return LabelOutcome(
                "unknown_id", f"no prediction for {what} (never made, evicted, or forgotten)"
            )
        if result.found is Found.EXPIRED:
            return LabelOutcome(
                "expired", f"the prediction for {what} expired (ttl {spec.ttl_seconds:g}s)"
            )
        if result.found is Found.DUPLICATE:
            return LabelOutcome("duplicate", f"the prediction for {what} is already labelled")
        if result.found is Found.WRONG_MODEL:
            return LabelOutcome(
                "invalid",
                f"{what} was predicted by model {quote(result.other_model)}, "
                f"not {quote(spec.name)}",
            )
        if result.found is Found.BAD_ROW:
            return LabelOutcome(
                "invalid", f"request {quote(label.request_id)} has no row {label.row}"
            )
        prediction = result.prediction
        assert prediction is not None
        self._score(spec, prediction.version, prediction.value, actual, now - prediction.time)
        if prediction.shadow_version:
            self._score(spec, prediction.shadow_version, prediction.shadow_value, actual, None)
        return LabelOutcome("matched")

    def score_shadow(self, row: ShadowRow, actual: float) -> None:
        """Count a shadow prediction whose row was labelled before it was written."""
        spec = self._specs.get(row.model)
        if spec is not None:
            self._score(spec, row.shadow_version, row.value, actual, None)

    def _score(
        self, spec: ModelSpec, version: str, value: float, actual: float, delay: float | None
    ) -> None:
        """Count one (prediction, label) pair under ``version``; ``delay`` None: not again."""
        if not (version.isdigit() and len(version) <= _MAX_VERSION):
            version = OTHER
        if spec.task == "classification":
            predicted = int(value) if math.isfinite(value) else -1
            is_class = 0 <= predicted < len(spec.class_names)
            self._metrics.classified(
                spec.name,
                version,
                spec.class_names[int(actual)],
                spec.class_names[predicted] if is_class else OTHER,
                delay,
                spec.confusion_matrix,
                predicted_is_class=is_class,
            )
        else:
            self._metrics.regressed(spec.name, version, value - actual, delay)
