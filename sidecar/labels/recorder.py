"""The listener that keeps each answered prediction for its label."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from exporters.labels import LabelMetrics
from sidecar.events import BaseListener, RequestRecord
from sidecar.labels.join import LabelJoiner, ModelSpec
from sidecar.labels.worker import StoreWorker
from sidecar.models import ServedModel

log = logging.getLogger(__name__)


class PredictionRecorder(BaseListener):
    """On every OK request of a classifier or regressor, queue its rows for the store.

    ``on_request`` does O(1) work: one dict lookup, one clock read, one append
    to the worker's bounded queue. The argmax and the per-row entries are made
    on the worker thread.
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
        self._metrics.prepare_model(
            model.name, model.version, spec.class_names, confusion=spec.confusion_matrix
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
        self._specs.pop(model, None)

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
