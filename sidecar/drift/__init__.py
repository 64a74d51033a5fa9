"""Drift monitoring: is what a model sees and says still like its reference?

    ModelManager.add ── prepare(model) ──▶ read + check the reference, run the model on it,
                                          fit the detectors' references (all off the loop)
    DataPlane ── on_request: O(1) offer ──▶ ModelMonitor queue (bounded, sampled)
    DriftWorker (one thread) ── process ─▶ windows ─▶ detectors.DriftDetector.score
                                        └▶ exporters.drift.DriftCollector (read at scrape)

``DriftMonitoring`` assembles the pieces; ``sidecar.app.build_server`` plugs it
in as a model hook (a reference that does not fit the model fails the
model's load, naming both), a listener (the tap) and a service (the worker).
Configuration: ``monitoring.drift`` in a model's config.yaml; docs/drift.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry

from exporters.drift import DriftCollector
from sidecar.config import DriftMonitoringConfig
from sidecar.drift.features import input_features, output_features
from sidecar.drift.reference import bind_reference, read_reference
from sidecar.drift.worker import DEFAULT_INTERVAL, DriftWorker, Priority
from sidecar.errors import ModelLoadError
from sidecar.events import BaseListener, RequestRecord
from sidecar.models import ServedModel
from sidecar.types import Tensors, TensorSpec

if TYPE_CHECKING:  # the statistics (scipy) load with the first model that monitors drift
    from detectors.drift import DriftConfig
    from sidecar.drift.monitor import Capture, ModelMonitor, ScopeReference

__all__ = ["DriftMonitoring"]

Clock = Callable[[], float]

log = logging.getLogger(__name__)

#: Reference rows per model call when computing the reference's outputs at load.
REFERENCE_BATCH = 1024


def _concrete(where: str, spec: TensorSpec) -> tuple[int, ...]:
    row = spec.shape[1:] if spec.shape else ()
    if -1 in row:
        raise ModelLoadError(
            f"{where}: capturing a reference needs fixed row shapes, but {spec.name!r} is "
            f"{spec.describe()}; give a reference file instead"
        )
    return tuple(row)


class DriftMonitoring(BaseListener):
    """The server's drift monitoring: model hook, tap listener and worker service."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval: float = DEFAULT_INTERVAL,
        priority: Priority = "idle",
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.collector = DriftCollector(registry)
        self.worker = DriftWorker(interval, priority)
        self._clock = clock
        self._monotonic = monotonic
        self._prepared: dict[ServedModel, ModelMonitor] = {}
        self._active: dict[ServedModel, ModelMonitor] = {}

    def monitor(self, model: ServedModel) -> ModelMonitor | None:
        """The active monitor of a model version, if it has one."""
        return self._active.get(model)

    # ------------------------------------------------------------------ service

    async def start(self) -> None:
        """Start the worker thread."""
        self.worker.start()

    async def stop(self) -> None:
        """Stop the worker thread (off the event loop: it may be mid-evaluation)."""
        await asyncio.to_thread(self.worker.stop)

    # ------------------------------------------------------------------ load time

    async def prepare(self, model: ServedModel) -> None:
        """Check and fit the reference of a model that just loaded; ModelLoadError fails it."""
        config = model.config.monitoring.drift
        if config is None or not config.enabled:
            return
        from detectors.errors import DetectorError

        where = f"model {model.name!r} version {model.version}: monitoring.drift"
        try:
            monitor = await self._build(model, config, where)
        except DetectorError as exc:
            raise ModelLoadError(f"{where}: {exc.message}") from exc
        self._prepared[model] = monitor

    async def _build(
        self, model: ServedModel, config: DriftMonitoringConfig, where: str
    ) -> ModelMonitor:
        from sidecar.drift.monitor import Capture, detector_config, fit_scope

        sig = model.signature
        names = config.inputs if config.inputs is not None else [s.name for s in sig.inputs]
        watched: list[TensorSpec] = []
        for name in names:
            spec = sig.input(name)
            if spec is None:
                raise ModelLoadError(
                    f"{where}.inputs names {name!r}, not an input; inputs are: "
                    f"{', '.join(s.name for s in sig.inputs)}"
                )
            watched.append(spec)
        base = model.path.parent.parent if model.path is not None else Path.cwd()
        path = config.reference if config.reference.is_absolute() else base / config.reference
        detectors = detector_config(config)
        monitoring = model.config.monitoring

        if not path.exists():
            if config.capture_rows is None:
                raise ModelLoadError(
                    f"{where}: reference {path} does not exist (set capture_rows to take the "
                    "reference from the first live rows)"
                )
            shapes = {s.name: _concrete(where, s) for s in watched}
            in_map = input_features(model.name, model.version, config, watched, shapes)
            out_map = None
            if config.outputs:
                out_shapes = {s.name: _concrete(where, s) for s in sig.outputs}
                out_map = output_features(
                    model.name, model.version, config, monitoring, sig, out_shapes
                )
            if path.suffix.lower() == ".npz":
                kept = tuple(s.name for s in sig.inputs)
            elif len(watched) == 1 and (out_map is None or len(sig.inputs) == 1):
                kept = (watched[0].name,)
            else:
                raise ModelLoadError(
                    f"{where}: reference {path} can hold one input, but the model has "
                    f"{len(sig.inputs)}; use a .npz file"
                )
            log.info(
                "model %s version %s: no drift reference at %s; capturing the first %d rows",
                model.name,
                model.version,
                path,
                config.capture_rows,
            )
            capture = Capture(path, config.capture_rows, kept, in_map, out_map)
            return self._monitor(model, config, detectors, None, None, capture)

        ref_file = await asyncio.to_thread(read_reference, path)
        bound = bind_reference(where, ref_file, watched, sig.inputs)
        if (
            ref_file.header is not None
            and config.reduction.method == "none"
            and watched[0].name not in config.feature_names
        ):
            config = config.model_copy(update={"feature_names": {watched[0].name: ref_file.header}})
        shapes = {s.name: tuple(bound[s.name].shape[1:]) for s in watched}
        in_map = input_features(model.name, model.version, config, watched, shapes)
        in_ref = await asyncio.to_thread(lambda: fit_scope(in_map, in_map.rows([bound])))
        out_ref = None
        if config.outputs:
            missing = [s.name for s in sig.inputs if s.name not in bound]
            if missing:
                raise ModelLoadError(
                    f"{where}: monitoring outputs runs the model on the reference, which needs "
                    f"every input; {path} lacks {missing} (add them, or set outputs: false)"
                )
            outputs = await self._reference_outputs(model, bound)
            out_shapes = {k: tuple(v.shape[1:]) for k, v in outputs.items()}
            out_map = output_features(
                model.name, model.version, config, monitoring, sig, out_shapes
            )
            if out_map is not None:
                out_ref = await asyncio.to_thread(
                    lambda: fit_scope(out_map, out_map.rows([outputs]))
                )
        log.info(
            "model %s version %s: drift reference %s, %d rows, %d input and %d output features",
            model.name,
            model.version,
            path,
            in_ref.reference.n_rows,
            in_ref.features.width,
            out_ref.features.width if out_ref is not None else 0,
        )
        return self._monitor(model, config, detectors, in_ref, out_ref, None)

    def _monitor(
        self,
        model: ServedModel,
        config: DriftMonitoringConfig,
        detectors: DriftConfig,
        inputs: ScopeReference | None,
        outputs: ScopeReference | None,
        capture: Capture | None,
    ) -> ModelMonitor:
        from sidecar.drift.monitor import ModelMonitor

        return ModelMonitor(
            model.name,
            model.version,
            config,
            detectors,
            inputs,
            outputs,
            capture,
            priority=self.worker.priority,
            clock=self._clock,
            monotonic=self._monotonic,
        )

    async def _reference_outputs(
        self, model: ServedModel, bound: Mapping[str, np.ndarray]
    ) -> Tensors:
        """The model's outputs on the reference rows (batched; the runtime runs off the loop)."""
        specs = model.signature.inputs
        rows = int(next(iter(bound.values())).shape[0])
        fixed = {s.shape[0] for s in specs if s.shape and s.shape[0] != -1}
        step = REFERENCE_BATCH
        if fixed:  # a model with a fixed batch size: whole batches only
            step = min(fixed)
            rows -= rows % step
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, rows, step):
            batch = {
                s.name: np.ascontiguousarray(bound[s.name][start : start + step], dtype=s.dtype)
                for s in specs
            }
            for name, value in (await model.runtime.predict(batch)).items():
                parts.setdefault(name, []).append(np.asarray(value))
        return {name: np.concatenate(values) for name, values in parts.items()}

    # ------------------------------------------------------------------ listener

    def on_model_loaded(self, model: ServedModel) -> None:
        """Start monitoring a prepared model version."""
        monitor = self._prepared.pop(model, None)
        if monitor is None:
            return
        export = self.collector.model(model.name, model.version, lambda: monitor.dropped_rows)
        monitor.activate(export)
        self._active[model] = monitor
        self.worker.add(monitor)

    def on_model_failed(self, name: str, version: str, error: str) -> None:
        """Forget a preparation whose model did not load after all."""
        for model in [m for m in self._prepared if (m.name, m.version) == (name, version)]:
            del self._prepared[model]

    def on_model_unloaded(self, model: ServedModel) -> None:
        """Stop monitoring a model version and its series."""
        if self._active.pop(model, None) is not None:
            self.worker.remove(model.name, model.version)
            self.collector.remove(model.name, model.version)

    def on_request(self, record: RequestRecord) -> None:
        """Offer an answered request's tensors to its model's monitor (O(1))."""
        if record.code != "OK" or record.inputs is None:
            return
        monitor = self._active.get(record.model)  # type: ignore[arg-type]
        if monitor is not None and monitor.offer(record.inputs, record.outputs, record.rows):
            self.worker.wake()
