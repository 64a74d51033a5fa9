"""Prometheus metrics for the server: the listener that observes requests, and its assembly.

``MetricsListener`` turns the request path's events (``sidecar.events``) into
observations on ``exporters.metrics`` families. It resolves a model version's
label children once, when the model loads, and keeps them per ``ServedModel``,
so a request costs a dict lookup and a few counter/histogram updates.

``ServerMetrics`` builds everything a server exports from ``MetricsConfig``: a
fresh registry (never prometheus_client's global one), the families, the
listener, the process/GC/platform, GPU and in-flight collectors, and the HTTP
endpoint as a ``Service``. It is a server ``Service``.
``sidecar.app.build_server`` wires it in when ``metrics.enabled``; tests pass
their own through ``AppParts.metrics``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from exporters.gpu import GpuCollector
from exporters.http import MetricsHTTPServer
from exporters.metrics import (
    InflightCount,
    InflightSnapshot,
    ModelCalls,
    ModelFacts,
    ModelMetrics,
    ServerState,
    SidecarMetrics,
)
from exporters.outputs import OutputMonitoring
from sidecar import __version__
from sidecar.config import MetricsConfig
from sidecar.dataplane import DataPlane
from sidecar.events import BaseListener, RequestRecord
from sidecar.models import ServedModel
from sidecar.security import OUTCOMES, ReloadingSSLContext

if TYPE_CHECKING:
    from sidecar.server import SidecarServer


def output_monitoring(model: ServedModel) -> OutputMonitoring:
    """What to watch in this model's outputs: its monitoring config and float outputs."""
    mon = model.config.monitoring
    classification = mon.classification
    regression = mon.regression
    return OutputMonitoring(
        float_outputs=tuple(s.name for s in model.signature.outputs if s.dtype.kind == "f"),
        classification_output=classification.output if classification else None,
        class_names=classification.class_names if classification else (),
        logits=classification is not None and classification.scores == "logits",
        regression_outputs=regression.outputs if regression else (),
        regression_buckets=regression.buckets if regression else None,
    )


def model_facts(model: ServedModel) -> ModelFacts:
    """What the runtime reports about the loaded model."""
    info = model.runtime.info
    return ModelFacts(
        runtime=info.runtime,
        runtime_version=info.runtime_version,
        device=info.device,
        opset=info.opset,
        sha256=info.sha256,
        parameters=info.parameters,
        layers=info.layers,
        size_bytes=info.file_size_bytes,
        load_seconds=model.load_seconds,
        operators=dict(info.operators),
    )


class MetricsListener(BaseListener):
    """Observes model lifecycle, batches and requests into ``SidecarMetrics``."""

    def __init__(self, metrics: SidecarMetrics) -> None:
        self._metrics = metrics
        self._models: dict[ServedModel, ModelMetrics] = {}
        self._unknown = metrics.unknown_model()

    def _handle(self, model: ServedModel) -> ModelMetrics:
        handle = self._models.get(model)
        if handle is None:  # a model this listener did not see load: resolve it now
            handle = self._models[model] = self._metrics.model(
                model.name, model.version, output_monitoring(model)
            )
        return handle

    def on_model_loaded(self, model: ServedModel) -> None:
        """Resolve the model's label children and set its ready/info/size gauges."""
        self._models[model] = self._metrics.model(
            model.name, model.version, output_monitoring(model)
        )
        self._metrics.model_loaded(model.name, model.version, model_facts(model))

    def on_model_failed(self, name: str, version: str, error: str) -> None:
        """Count the failure."""
        self._metrics.model_failed(name, version)

    def on_model_unloaded(self, model: ServedModel) -> None:
        """Mark it not ready and drop its cached children."""
        self._models.pop(model, None)
        self._metrics.model_unloaded(model.name, model.version)

    def on_batch(self, model: ServedModel, rows: int, compute_seconds: float) -> None:
        """Compute time and rows of one executed batch."""
        self._handle(model).batch_done(rows, compute_seconds)

    def on_request(self, record: RequestRecord) -> None:
        """Count and time one answered request, and look at its outputs."""
        model = record.model
        if model is None:
            self._unknown.request(record.code, record.reason)
            return
        handle = self._models.get(model) or self._handle(model)
        handle.request_done(
            record.code,
            record.rows,
            record.duration,
            record.queue_seconds,
            record.outputs,
            record.reason,
        )


class ServerMetrics:
    """Everything one server exports: registry, families, listener, collectors, endpoint.

    A server ``Service``: ``start`` runs the output-analysis thread and opens
    the HTTP endpoint (``http.port`` is then the bound port), ``stop`` closes
    both.
    """

    def __init__(
        self,
        config: MetricsConfig,
        registry: CollectorRegistry | None = None,
        gpu: GpuCollector | None = None,
    ) -> None:
        # ``_created`` series double the series count of every counter and
        # histogram and Prometheus (before 2.50's created-timestamp ingestion)
        # stores them as separate gauges; a server process exports none.
        disable_created_metrics()
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = SidecarMetrics(
            self.registry, latency_buckets=config.latency_buckets, sidecar_version=__version__
        )
        self.listener = MetricsListener(self.metrics)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.gpu = gpu if gpu is not None else GpuCollector.discover()
        self.registry.register(self.gpu)
        #: The metrics port's TLS files (None: plain HTTP); ``tls.reloads`` counts rotations.
        self.tls = ReloadingSSLContext(config.tls) if config.tls.enabled else None
        self.http = MetricsHTTPServer(self.registry, config.host, config.port, tls=self.tls)

    async def start(self) -> None:
        """Start output analysis and the endpoint."""
        self.metrics.outputs.start()
        await self.http.start()

    async def stop(self) -> None:
        """Close the endpoint, then stop output analysis (off the event loop)."""
        await self.http.stop()
        await asyncio.to_thread(self.metrics.outputs.stop)

    def watch(self, plane: DataPlane) -> None:
        """Export the plane's in-flight counts, read at scrape time."""

        def snapshot() -> InflightSnapshot:
            return InflightSnapshot(
                server=plane.inflight,
                models=[
                    InflightCount(m.name, m.version, m.inflight)
                    for m in plane.models.models
                    if m.ready
                ],
            )

        self.metrics.watch_inflight(snapshot)

    def watch_server(self, server: SidecarServer) -> None:
        """Export what the server counts in memory, read at scrape time.

        Queue depth, stalls, timeouts and abandoned calls of each ready model
        version; authorisation outcomes of each configured policy (every outcome,
        from 0); TLS reloads and failed reloads of each listener that serves TLS.
        """
        auth = server.auth
        listeners = {"grpc": server.tls, "metrics": self.tls}
        tls = {name: files for name, files in listeners.items() if files is not None}

        def snapshot() -> ServerState:
            counts = auth.counts
            return ServerState(
                models=[
                    ModelCalls(
                        m.name,
                        m.version,
                        queued=m.queue_depth,
                        overdue=m.overdue,
                        timeouts=m.timeouts,
                        abandoned=dict(m.abandoned),
                    )
                    for m in server.plane.models.models
                    if m.ready
                ],
                auth={
                    (policy, outcome): counts.get((policy, outcome), 0)
                    for policy in auth.policies
                    for outcome in OUTCOMES
                },
                tls_reloads={name: files.reloads for name, files in tls.items()},
                tls_reload_failures={name: files.reload_failures for name, files in tls.items()},
            )

        self.metrics.watch_server(snapshot)
