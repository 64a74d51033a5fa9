"""The listener that keeps each answered prediction for its label."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from exporters.labels import LabelMetrics
from sidecar.events import BaseListener, RequestRecord
from sidecar.labels.join import LabelJoiner, ModelSpec
from sidecar.labels.worker import StoreWorker
from sidecar.models import ServedModel

if TYPE_CHECKING:
    from sidecar.insight.shadow import ShadowPrediction

log = logging.getLogger(__name__)


class PredictionRecorder(BaseListener):
    """On every OK request of a classifier or regressor, queue its rows for the store.

    ``on_request`` does O(1) work: one dict lookup, one clock read, one append
    to the worker's bounded queue. The argmax and the per-row entries are made
    on the worker thread.

    It is also a ``ShadowListener``: a shadow version's prediction of a request
    of a recorded model version is queued the same way, to be kept beside the
    primary's prediction and scored under the shadow version when the label
    comes (``on_shadow_prediction``, called by the shadow's background task,
    never on the request path).
    """

    def __init__(
        self,
        worker: StoreWorker,
        joiner: LabelJoiner,
        metrics: LabelMetrics,
        default_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._worker = worker
        self._joiner = joiner
        self._metrics = metrics
        self._default_ttl = default_ttl
        self._clock = clock
        self._specs: dict[ServedModel, ModelSpec] = {}
        self._versions: dict[tuple[str, str], ModelSpec] = {}  # (model, version) recorded

    def on_model_loaded(self, model: ServedModel) -> None:
        """Take labels for this model version when its monitoring config says so."""
        self._joiner.known(model.name)
        spec = ModelSpec.from_config(model.name, model.config.monitoring, self._default_ttl)
        if spec is None:
            return
        if model.signature.output(spec.output) is None:
            log.error(
                "model %s version %s: labels need output %r, which the model does not have; "
                "its predictions are not kept",
                model.name,
                model.version,
                spec.output,
            )
            return
        self._joiner.register(spec)
        self._specs[model] = spec
        self._versions[(model.name, model.version)] = spec
        self._metrics.prepare_model(
            model.name, model.version, spec.class_names, confusion=spec.confusion_matrix
        )
        shadow = model.config.insight.shadow
        if shadow is not None and str(shadow.version) != model.version:
            # the shadow version's label series start at 0 too (one version per model config)
            self._metrics.prepare_model(
                model.name, str(shadow.version), spec.class_names, confusion=spec.confusion_matrix
            )
        log.info(
            "model %s version %s: keeping %s predictions %gs for labels",
            model.name,
            model.version,
            spec.task,
            spec.ttl_seconds,
        )

    def on_model_unloaded(self, model: ServedModel) -> None:
        """Stop recording (labels for its stored predictions are still joined)."""
        if self._specs.pop(model, None) is not None:
            self._versions.pop((model.name, model.version), None)

    def on_request(self, record: RequestRecord) -> None:
        """Queue the predictions of an answered request."""
        if record.code != "OK" or record.model is None or record.outputs is None:
            return
        spec = self._specs.get(record.model)
        if spec is None:
            return
        output = record.outputs.get(spec.output)
        if output is None:
            return
        self._worker.submit(
            record.request_id, spec, record.model.version, output, record.rows, self._clock()
        )

    def on_shadow_prediction(self, prediction: ShadowPrediction) -> None:
        """Queue a shadow version's predictions, to be kept beside the primary's (O(1))."""
        spec = self._versions.get((prediction.model, prediction.version))
        if spec is None:
            return
        output = prediction.outputs.get(spec.output)
        if output is None:
            return
        self._worker.submit_shadow(
            prediction.request_id,
            spec,
            prediction.version,
            prediction.shadow_version,
            output,
            prediction.rows,
            self._clock(),
        )
