"""Assembles a server from configuration: the one place that wires parts together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from sidecar.config import ServerConfig
from sidecar.dataplane import DataPlane
from sidecar.events import Listener, ModelHook, ResponseAnnotator
from sidecar.examples import MODEL_REPOSITORY
from sidecar.insight.hub import Insight
from sidecar.models import ModelManager, RuntimeFactory
from sidecar.server import GrpcRegistrar, Service, SidecarServer

if TYPE_CHECKING:
    from sidecar.drift import DriftMonitoring
    from sidecar.labels import Labels
    from sidecar.metrics_listener import ServerMetrics


@dataclass
class AppParts:
    """Extra pieces (metrics, monitors, stores) that plug into the server.

    ``metrics``: the Prometheus side (registry, listener, ``/metrics`` endpoint).
    None builds one from ``config.metrics`` when it is enabled; pass your own to
    choose its registry or GPU source and to read its bound port in tests.

    ``labels``: the delayed-label join (prediction store, FeedbackService). None
    builds one from ``config.labels`` when it is enabled, exporting to the
    metrics registry; pass your own to choose its store, clock or registry.

    ``insight``: activations, anomaly scores and shadow versions
    (docs/insight.md). None builds one exporting to the metrics registry (it
    does nothing for models whose config.yaml has no ``insight:`` section).

    ``model_hooks`` prepare each model version after it loads; ``annotators``
    add to OK responses (``sidecar.events``).

    ``drift``: drift monitoring (reference checks at load, the tap, the worker).
    None builds one exporting to the metrics registry; pass your own to choose
    its clocks or worker interval.
    """

    listeners: list[Listener] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    registrars: list[GrpcRegistrar] = field(default_factory=list)
    metrics: ServerMetrics | None = None
    labels: Labels | None = None
    insight: Insight | None = None
    model_hooks: list[ModelHook] = field(default_factory=list)
    annotators: list[ResponseAnnotator] = field(default_factory=list)
    drift: DriftMonitoring | None = None


def build_server(
    config: ServerConfig,
    parts: AppParts | None = None,
    runtime_factory: RuntimeFactory | None = None,
) -> SidecarServer:
    """A SidecarServer for ``config``; ``runtime_factory`` is the seam for fake runtimes."""
    parts = parts or AppParts()
    listeners = list(parts.listeners)
    services = list(parts.services)
    registrars = list(parts.registrars)
    metrics = parts.metrics
    if metrics is None and config.metrics.enabled:
        from sidecar.metrics_listener import ServerMetrics

        metrics = ServerMetrics(config.metrics)
    if metrics is not None:
        listeners.insert(0, metrics.listener)
        services.insert(0, metrics)
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    labels = parts.labels
    if labels is None and config.labels.enabled:
        from sidecar.labels import Labels

        labels = Labels(config, registry)
    if labels is not None:
        listeners.append(labels.recorder)
        services.append(labels)
        registrars.append(labels)
    insight = parts.insight or Insight(config, registry)
    if labels is not None:
        insight.add_shadow_listener(labels.recorder)  # score shadow versions by labels too
    listeners.append(insight)
    services.append(insight)
    drift = parts.drift
    if drift is None:
        from sidecar.drift import DriftMonitoring

        drift = DriftMonitoring(registry)
    listeners.append(drift)
    services.append(drift)
    repository = config.model_repository or MODEL_REPOSITORY
    # Each model runs on its own thread pool (ModelManager.executor): a hung model
    # cannot take the threads of the others.
    models = ModelManager(
        config,
        repository,
        listeners,
        runtime_factory=runtime_factory,
        hooks=[*parts.model_hooks, insight, drift],
    )
    plane = DataPlane(
        models,
        listeners,
        [*parts.annotators, insight],
        max_response_bytes=config.grpc.max_message_bytes,
    )
    server = SidecarServer(config, plane, services, registrars)
    if metrics is not None:
        metrics.watch(plane)
        metrics.watch_server(server)
    return server
