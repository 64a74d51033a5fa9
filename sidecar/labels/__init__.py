"""Delayed labels: keep predictions, join ground truth to them by request id, count.

    PredictionRecorder (Listener)  ── on_request: O(1) append ──▶ StoreWorker queue
      (ShadowListener)             ── on_shadow_prediction: O(1) append ─▶ (same queue)
    FeedbackService (gRPC)         ── label batches ────────────▶ StoreWorker.join
    StoreWorker (one thread)       ── owns ─▶ PredictionStore (memory | sqlite | redis)
                                   ── runs ─▶ LabelJoiner ──▶ exporters.labels.LabelMetrics

``Labels`` assembles the pieces from the server config; ``app.build_server``
plugs it in as a listener (``recorder``), a gRPC registrar and a service. docs/labels.md
describes the behaviour, docs/metrics.md the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc
from prometheus_client import CollectorRegistry

from exporters.labels import LabelMetrics
from sidecar.config import ServerConfig
from sidecar.labels.join import LabelJoiner
from sidecar.labels.recorder import PredictionRecorder
from sidecar.labels.service import FeedbackRegistrar, FeedbackServicer
from sidecar.labels.store import PredictionStore, create_store
from sidecar.labels.worker import StoreWorker

__all__ = ["Labels"]


class Labels:
    """The label join for one server: listener, FeedbackService and background worker."""

    def __init__(
        self,
        config: ServerConfig,
        registry: CollectorRegistry,
        store: PredictionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = config.labels
        self.registry = registry
        self.store = store or create_store(settings)
        self.metrics = LabelMetrics(
            registry,
            settings.delay_buckets,
            settings.error_buckets,
            self.store.backend,
            self.store.scope,
        )
        self.joiner = LabelJoiner(
            self.store, self.metrics, max_row=config.limits.max_batch_rows - 1, clock=clock
        )
        self.worker = StoreWorker(self.store, self.joiner, self.metrics, settings, clock=clock)
        self.recorder = PredictionRecorder(
            self.worker, self.joiner, self.metrics, settings.ttl_seconds, clock=clock
        )
        self._registrar = FeedbackRegistrar(
            FeedbackServicer(
                self.worker, settings.max_batch_labels, self.metrics, config.grpc.max_message_bytes
            )
        )

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Add FeedbackService to the gRPC server."""
        return self._registrar.register(server)

    async def start(self) -> None:
        """Open the store and start the worker thread."""
        await self.worker.start()

    async def stop(self) -> None:
        """Write queued predictions, close the store."""
        await self.worker.stop()
