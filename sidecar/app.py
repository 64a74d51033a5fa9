"""Assembles a server from configuration: the one place that wires parts together."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from sidecar.config import ServerConfig
from sidecar.dataplane import DataPlane
from sidecar.events import Listener
from sidecar.examples import MODEL_REPOSITORY
from sidecar.labels import Labels
from sidecar.models import ModelManager, RuntimeFactory
from sidecar.server import GrpcRegistrar, Service, SidecarServer


@dataclass
class AppParts:
    """Extra pieces (metrics, monitors, stores) that plug into the server."""

    listeners: list[Listener] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    registrars: list[GrpcRegistrar] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)


def build_server(
    config: ServerConfig,
    parts: AppParts | None = None,
    runtime_factory: RuntimeFactory | None = None,
) -> SidecarServer:
    """A SidecarServer for ``config``; ``runtime_factory`` is the seam for fake runtimes."""
    parts = parts or AppParts()
    if config.labels.enabled:
        Labels(config, parts.registry).attach(parts)
    executor = ThreadPoolExecutor(
        max_workers=config.threads.executor_workers, thread_name_prefix="model"
    )
    repository = config.model_repository or MODEL_REPOSITORY
    models = ModelManager(
        config, repository, parts.listeners, executor=executor, runtime_factory=runtime_factory
    )
    plane = DataPlane(models, parts.listeners)
    return SidecarServer(config, plane, parts.services, parts.registrars)
