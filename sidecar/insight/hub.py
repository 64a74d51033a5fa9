"""``Insight``: activations, anomaly scores and shadow versions wired into one server.

One object plays every role the server offers a plug-in (``sidecar.app``):

- ``ModelHook.prepare``: after a model version's runtime loads, set up what its
  ``insight:`` section asks for — export its activation taps, fit its anomaly
  scorer from the reference file, load its shadow version. A configuration
  problem (a bad reference file, activations on an ONNX model, a shadow whose
  inputs differ) is a ``ModelLoadError`` and fails that version's load; a
  shadow that fails to *load* is logged and counted, and the primary serves.
- ``ResponseAnnotator.annotate``: score the request's rows (one matrix product)
  and, when configured, return the scores as response parameters.
- ``Listener.on_request``: offer answered requests to the shadow (O(1)).
- ``Service.start`` / ``stop``: the shadow's background tasks.

Response parameters (``insight.anomaly.return_score: true``):

- ``sidecar_anomaly_score`` (double): the request's largest row score;
- ``sidecar_anomaly_scores`` (string): every row's score, comma-separated;
- ``sidecar_anomalous_rows`` (int64): rows whose score exceeds 1.

A score is the row's Mahalanobis distance divided by the threshold, so 1 is
the threshold for every model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from exporters.insight import AnomalyMetrics, InsightMetrics
from sidecar.config import ActivationsConfig, AnomalyConfig, InsightConfig, ServerConfig
from sidecar.errors import ModelLoadError, SidecarError
from sidecar.events import BaseListener, RequestRecord
from sidecar.insight.anomaly import AnomalyFitError, MahalanobisScorer
from sidecar.insight.data import load_array
from sidecar.insight.shadow import ShadowListener, ShadowRunner
from sidecar.models import ServedModel, model_versions
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.runtimes import create_runtime
from sidecar.types import Tensors, TensorSpec

log = logging.getLogger(__name__)

#: Response parameter names (docs/insight.md).
SCORE_PARAMETER = "sidecar_anomaly_score"
SCORES_PARAMETER = "sidecar_anomaly_scores"
ANOMALOUS_PARAMETER = "sidecar_anomalous_rows"


@dataclass(frozen=True, slots=True)
class _Anomaly:
    scorer: MahalanobisScorer
    metrics: AnomalyMetrics
    input: str
    return_score: bool


def _model_dir(model: ServedModel) -> Path | None:
    return model.path.parent.parent if model.path is not None else None


def _resolve(model: ServedModel, path: Path, field: str) -> Path:
    if path.is_absolute():
        return path
    base = _model_dir(model)
    if base is None:
        raise ModelLoadError(
            f"model {model.name!r}: {field} {str(path)!r} is relative, but this model has no "
            "directory in the repository; give an absolute path"
        )
    return base / path


class Insight(BaseListener):
    """Activations, anomaly scores and shadow comparison for every model that asks."""

    def __init__(
        self,
        config: ServerConfig,
        registry: CollectorRegistry | None = None,
        shadow_listeners: Iterable[ShadowListener] = (),
    ) -> None:
        self._config = config
        self.metrics = InsightMetrics(registry if registry is not None else CollectorRegistry())
        self._shadow_listeners = tuple(shadow_listeners)
        self._anomaly: dict[ServedModel, _Anomaly] = {}
        self._shadows: dict[ServedModel, ShadowRunner] = {}
        self._watched: set[ServedModel] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._started = False

    # ------------------------------------------------------------ ModelHook

    async def prepare(self, model: ServedModel) -> None:
        """Set up the model's ``insight:`` section; ModelLoadError fails its load."""
        insight = model.config.insight
        if insight.activations is not None:
            await self._prepare_activations(model, insight.activations)
        if insight.anomaly is not None:
            await self._prepare_anomaly(model, insight.anomaly)
        if insight.shadow is not None:
            if model.version != str(insight.shadow.version):
                await self._prepare_shadow(model)
            else:
                log.warning(
                    "model %s version %s is its own insight.shadow.version: not shadowed (pin "
                    "the primary with versions: [...] to keep the shadow from serving)",
                    model.name,
                    model.version,
                )

    async def _prepare_activations(self, model: ServedModel, config: ActivationsConfig) -> None:
        taps = getattr(model.runtime, "activations", None)
        if taps is None:
            raise ModelLoadError(
                f"model {model.name!r} version {model.version}: insight.activations needs a "
                f"torch.export model (model.pt2); this one runs on {model.runtime.info.runtime}"
            )
        drift = None
        if config.reference is not None:
            # scipy (through detectors) loads only for models that test layer drift
            from sidecar.insight.layer_drift import LayerDriftError, LayerMeanDrift

            where = f"model {model.name!r} version {model.version}: insight.activations.reference"
            inputs = model.signature.inputs
            if len(inputs) != 1:
                raise ModelLoadError(f"{where}: layer-mean drift needs a single-input model")
            reference = await self._reference(model, config.reference, inputs[0], where)
            try:
                means = await asyncio.to_thread(taps.profile, {inputs[0].name: reference})
                drift = LayerMeanDrift(taps.stats, means, config.drift_alpha)
            except LayerDriftError as exc:
                raise ModelLoadError(f"{where}: layer means of the reference: {exc}") from exc
            log.info(
                "model %s version %s: layer-mean drift reference from %d rows",
                model.name,
                model.version,
                drift.reference_rows,
            )
        self.metrics.watch_activations(model.name, model.version, taps.stats, drift)
        self._watched.add(model)

    async def _reference(
        self, model: ServedModel, path: Path, spec: TensorSpec, where: str
    ) -> np.ndarray:
        """Load reference rows for input ``spec``; ModelLoadError when they do not fit."""
        full = _resolve(model, path, where.rsplit(": ", 1)[-1])
        try:
            reference = await asyncio.to_thread(load_array, full)
        except SidecarError as exc:
            raise ModelLoadError(f"{where}: {exc.message}") from exc
        want = spec.shape[1:] if spec.batched else spec.shape
        if reference.ndim != len(want) + 1 or any(
            w != -1 and w != g for w, g in zip(want, reference.shape[1:], strict=True)
        ):
            raise ModelLoadError(
                f"{where}: reference {full} has shape {list(reference.shape)}, but input "
                f"{spec.name!r} is {spec.describe()}: expected rows of {list(want)}"
            )
        return np.ascontiguousarray(reference, dtype=spec.dtype)

    async def _prepare_anomaly(self, model: ServedModel, config: AnomalyConfig) -> None:
        where = f"model {model.name!r} version {model.version}: insight.anomaly"
        inputs = model.signature.inputs
        if config.input is None and len(inputs) != 1:
            raise ModelLoadError(
                f"{where}: the model has {len(inputs)} inputs "
                f"({', '.join(s.name for s in inputs)}); name one in insight.anomaly.input"
            )
        spec = model.signature.input(config.input) if config.input else inputs[0]
        if spec is None:
            raise ModelLoadError(
                f"{where}: input {config.input!r} is not an input; inputs are: "
                f"{', '.join(s.name for s in inputs)}"
            )
        path = config.reference
        reference = await self._reference(model, path, spec, f"{where}.reference")
        try:
            scorer = await asyncio.to_thread(MahalanobisScorer.fit, reference, config)
        except AnomalyFitError as exc:
            raise ModelLoadError(f"{where}: reference {path}: {exc}") from exc
        metrics = self.metrics.anomaly(model.name, model.version, scorer.threshold, config.buckets)
        self._anomaly[model] = _Anomaly(scorer, metrics, spec.name, config.return_score)
        log.info(
            "model %s version %s: anomaly threshold %.4g (quantile %g of %d calibration rows)",
            model.name,
            model.version,
            scorer.threshold,
            config.quantile,
            scorer.calibration_rows,
        )

    async def _prepare_shadow(self, model: ServedModel) -> None:
        config = model.config.insight.shadow
        assert config is not None
        where = f"model {model.name!r} version {model.version}: insight.shadow"
        base = _model_dir(model)
        if base is None:
            raise ModelLoadError(f"{where}: the model has no directory in the repository")
        path = model_versions(base).get(config.version)
        if path is None:
            raise ModelLoadError(
                f"{where}: version {config.version} not found under {base}; present: "
                f"{sorted(model_versions(base))}"
            )
        if not path.resolve().is_relative_to(base.resolve()):
            raise ModelLoadError(f"{where}: {path} resolves outside {base}")
        if os.stat(path).st_mode & stat.S_IWOTH:
            raise ModelLoadError(f"{where}: {path} is writable by any user; refusing to load it")
        output, classify = self._compared_output(model)
        shadow_config = model.config.model_copy(update={"insight": InsightConfig()})
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"shadow-{model.name}")
        runtime = create_runtime(
            model.name,
            path,
            shadow_config,
            model.config.device or self._config.device,
            self._config.threads,
            executor,
        )
        shadow_version = str(config.version)
        metrics = self.metrics.shadow(
            model.name, model.version, shadow_version, config.difference_buckets
        )
        try:
            await runtime.load()
            self._check_shadow(model, runtime.signature.inputs, runtime.signature.outputs, output)
        except Exception as exc:  # a shadow must never stop the primary
            executor.shutdown(wait=False)
            metrics.failed.inc()
            reason = exc.message if isinstance(exc, SidecarError) else repr(exc)
            log.error("%s: shadow not started, the primary serves alone: %s", where, reason)
            return
        runner = ShadowRunner(
            model.name,
            model.version,
            shadow_version,
            runtime,
            config,
            output,
            classify,
            metrics,
            self._shadow_listeners,
            executor,
        )
        self._shadows[model] = runner
        if self._started:
            runner.start()
        log.info("model %s version %s: shadowed by version %s", model.name, model.version, path)

    @staticmethod
    def _compared_output(model: ServedModel) -> tuple[str, bool]:
        config = model.config
        shadow = config.insight.shadow
        assert shadow is not None
        classification = config.monitoring.classification
        if shadow.output is not None:
            name = shadow.output
        elif classification is not None:
            name = classification.output
        elif config.monitoring.regression is not None:
            name = config.monitoring.regression.outputs[0]
        else:
            name = model.signature.outputs[0].name
        if model.signature.output(name) is None:
            raise ModelLoadError(
                f"model {model.name!r}: insight.shadow.output {name!r} is not an output; "
                f"outputs are: {', '.join(s.name for s in model.signature.outputs)}"
            )
        return name, classification is not None and classification.output == name

    @staticmethod
    def _check_shadow(model: ServedModel, inputs: tuple, outputs: tuple, output: str) -> None:
        primary = model.signature.inputs
        if tuple(inputs) != tuple(primary):
            raise ModelLoadError(
                "the shadow's inputs ("
                + ", ".join(f"{s.name} {s.describe()}" for s in inputs)
                + ") differ from the primary's ("
                + ", ".join(f"{s.name} {s.describe()}" for s in primary)
                + ")"
            )
        if not any(s.name == output for s in outputs):
            raise ModelLoadError(f"the shadow has no output {output!r}")

    # ------------------------------------------------------------ ResponseAnnotator

    def annotate(
        self, model: ServedModel, inputs: Tensors, outputs: Tensors, response: pb.ModelInferResponse
    ) -> None:
        """Score the request's rows; add the scores to the response when configured."""
        anomaly = self._anomaly.get(model)
        if anomaly is None:
            return
        scores = anomaly.scorer.score(inputs[anomaly.input])
        anomaly.metrics.observe(scores)
        if anomaly.return_score:
            params = response.parameters
            params[SCORE_PARAMETER].double_param = float(scores.max())
            params[SCORES_PARAMETER].string_param = ",".join(f"{s:.4g}" for s in scores.tolist())
            params[ANOMALOUS_PARAMETER].int64_param = int(np.count_nonzero(scores > 1.0))

    # ------------------------------------------------------------ Listener

    def on_request(self, record: RequestRecord) -> None:
        """Offer an answered request to the model's shadow, if it has one."""
        model = record.model
        if model is None or record.code != "OK" or record.inputs is None:
            return
        runner = self._shadows.get(model)
        if runner is not None and record.outputs is not None:
            runner.offer(record.request_id, record.inputs, record.outputs)

    def on_model_unloaded(self, model: ServedModel) -> None:
        """Forget the version's series and stop its shadow."""
        runner = self._shadows.pop(model, None)
        if runner is not None:
            task = asyncio.get_running_loop().create_task(runner.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            self.metrics.forget_shadow(model.name, model.version, runner.shadow_version)
        if model in self._watched:
            self._watched.discard(model)
            self.metrics.forget_activations(model.name, model.version)
        if self._anomaly.pop(model, None) is not None:
            self.metrics.forget_anomaly(model.name, model.version)

    def add_shadow_listener(self, listener: ShadowListener) -> None:
        """Hand shadow predictions to ``listener`` too (shadows started from now on)."""
        if listener not in self._shadow_listeners:
            self._shadow_listeners = (*self._shadow_listeners, listener)

    def shadow(self, model: ServedModel) -> ShadowRunner | None:
        """The shadow runner of a primary model version (None without one)."""
        return self._shadows.get(model)

    def scorer(self, model: ServedModel) -> MahalanobisScorer | None:
        """The fitted anomaly scorer of a model version (None without one)."""
        anomaly = self._anomaly.get(model)
        return anomaly.scorer if anomaly is not None else None

    # ------------------------------------------------------------ Service

    async def start(self) -> None:
        """Start the shadows' background tasks."""
        self._started = True
        for runner in self._shadows.values():
            runner.start()

    async def stop(self) -> None:
        """Stop the shadows and unload their runtimes."""
        self._started = False
        shadows, self._shadows = self._shadows, {}
        for model, runner in shadows.items():
            await runner.stop()
            self.metrics.forget_shadow(model.name, model.version, runner.shadow_version)
        if self._stopping:
            await asyncio.gather(*self._stopping)
