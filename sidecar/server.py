"""The gRPC server: inference, feedback, health and reflection on one port.

``SidecarServer`` owns the process's serving lifecycle: load models, bind,
report health, and on SIGTERM turn NOT_SERVING, refuse new requests with
UNAVAILABLE, let in-flight ones finish within the grace period, then stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from sidecar.config import ServerConfig
from sidecar.dataplane import DataPlane
from sidecar.guard import CallGuard, add_service
from sidecar.proto import grpc_service_pb2
from sidecar.proto.pool import POOL
from sidecar.security import Authorizer, ReloadingCertificates
from sidecar.servicer import RAW_METHODS, InferenceServicer

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something that runs beside the gRPC server (metrics endpoint, background workers)."""

    async def start(self) -> None:
        """Start; called after models load, before the gRPC port opens."""
        ...

    async def stop(self) -> None:
        """Stop; called after the gRPC server has drained."""
        ...


class GrpcRegistrar(Protocol):
    """Adds a servicer to the gRPC server (for example the FeedbackService)."""

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Register; return the full service names for reflection."""
        ...


def _reflection_pool_ready() -> None:
    """Put the health and reflection descriptors into our private pool too."""
    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)


class SidecarServer:
    """One process's gRPC server around a data plane."""

    def __init__(
        self,
        config: ServerConfig,
        plane: DataPlane,
        services: Sequence[Service] = (),
        registrars: Sequence[GrpcRegistrar] = (),
    ) -> None:
        self._config = config
        self._plane = plane
        self._services = list(services)
        self._registrars = list(registrars)
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        #: Bound port of the plaintext health-only listener (0 when grpc.health_port is unset).
        self.health_port = 0
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()
        self._health_updates: set[asyncio.Task[None]] = set()
        self.port = 0
        #: Model calls still running when ``stop`` finished (hung in native code).
        self.abandoned_calls = 0
        #: Authorisation of guarded services; ``auth.counts`` is read by the metrics exporter.
        self.auth = Authorizer(config.auth)
        #: The TLS files in use (None: plaintext port); ``tls.reloads`` counts rotations.
        self.tls = ReloadingCertificates(config.grpc.tls) if config.grpc.tls.enabled else None
        plane.on_stall_change.append(self._stall_changed)

    @property
    def plane(self) -> DataPlane:
        """The data plane this server answers with."""
        return self._plane

    async def start(self) -> None:
        """Load models, start services, open the gRPC port."""
        await self._plane.models.load_all()
        for service in self._services:
            await service.start()
        limit = self._config.grpc.max_message_bytes
        server = grpc.aio.server(
            interceptors=[CallGuard(self.auth, limit)],
            options=[
                # Higher than the limit, so that messages a little over it reach our
                # code, to be refused there with the limit's name and counted; core
                # refuses larger ones from their length prefix, before buffering them.
                ("grpc.max_receive_message_length", self._config.grpc.transport_limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = InferenceServicer(
            self._plane,
            self._config.startup.strict_readiness,
            self._config.limits.max_stream_inflight,
            limit,
        )
        inference = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [
            add_service(server, inference, servicer, raw=RAW_METHODS),
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        for registrar in self._registrars:
            names.extend(registrar.register(server))
        _reflection_pool_ready()
        reflection.enable_server_reflection(names, server, pool=POOL)
        address = f"{self._config.grpc.host}:{self._config.grpc.port}"
        if ":" in self._config.grpc.host and not self._config.grpc.host.startswith("["):
            address = f"[{self._config.grpc.host}]:{self._config.grpc.port}"
        if self.tls is not None:
            self.port = server.add_secure_port(address, self.tls.credentials())
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        if self._config.grpc.health_port is not None:
            await self._start_health_port()
        await self._update_health()
        auth = self._config.auth
        if not auth.writes.required:
            log.warning(
                "label writes (%s) accept any caller: set auth.writes.token_file or "
                "auth.writes.allowed_identities",
                ", ".join(auth.write_services),
            )
        log.info(
            "serving gRPC on %s:%d (%s)",
            self._config.grpc.host,
            self.port,
            "plaintext" if self.tls is None else "mutual TLS" if self.tls.mutual else "TLS",
        )

    async def _start_health_port(self) -> None:
        """A plaintext listener with only the health service (same states as the main port)."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host, port = self._config.grpc.host, self._config.grpc.health_port
        bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
        address = f"{bracketed}:{port}"
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise OSError(f"cannot listen on {address} (grpc.health_port)")
        await server.start()
        self._health_server = server
        log.info("serving gRPC health (plaintext) on %s:%d", host, self.health_port)

    def _stall_changed(self, model: object) -> None:
        if self._server is None:
            return
        task = asyncio.get_running_loop().create_task(self._update_health())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _update_health(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        models = self._plane.models
        if self._plane.shutting_down:
            return  # enter_graceful_shutdown has set everything NOT_SERVING for good
        for name in {m.name for m in models.models} | {n for n, _ in models.failures}:
            await self._health.set(name, serving if models.is_ready(name) else not_serving)
        overall = models.all_ready or (
            not self._config.startup.strict_readiness and any(m.ready for m in models.models)
        )
        await self._health.set("", serving if overall else not_serving)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, wait drain_delay, refuse new work, finish in-flight, stop."""
        if self._server is None:
            return
        shutdown = self._config.shutdown
        grace = shutdown.grace_period_seconds if grace is None else grace
        await self._health.enter_graceful_shutdown()
        log.info("shutting down: health NOT_SERVING, draining for up to %.1fs", grace)
        if shutdown.drain_delay_seconds:
            await asyncio.sleep(shutdown.drain_delay_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Our own refusal (UNAVAILABLE, a clear message) while in-flight requests finish;
        # grpc's own stop() would cancel new calls on open connections instead.
        if not await self._plane.drain(grace):
            log.warning("grace period over with %d requests in flight", self._plane.inflight)
        await self._server.stop(max(0.0, deadline - loop.time()))
        self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        for service in reversed(self._services):
            await service.stop()
        models = self._plane.models.models
        self.abandoned_calls = sum(m.inflight for m in models)
        if self.abandoned_calls:
            log.error(
                "%d model call(s) still running past their timeout (%s): abandoned; their "
                "threads cannot be stopped",
                self.abandoned_calls,
                ", ".join(sorted({m.name for m in models if m.inflight})),
            )
        await self._plane.models.unload_all()
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        """Return once ``stop`` has finished."""
        await self._stopped.wait()

    async def serve_until_signal(self) -> None:
        """Start, then stop cleanly on SIGTERM or SIGINT.

        If a hung model call is still running after the drain, the process exits at
        once (status 0): its thread cannot be stopped, and waiting for it would
        outlive the grace period.
        """
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        await stop_requested.wait()
        await self.stop()
        if self.abandoned_calls:
            # The interpreter would join the hung threads at exit and never finish:
            # everything that can be flushed has been; leave now, within the grace period.
            log.error("exiting without waiting for hung model threads")
            logging.shutdown()
            os._exit(0)
