"""The request path: resolve the model, decode, run, encode, tell listeners.

O(1) Python work per request besides the model: a dict lookup, the codec's
per-input checks, one await on the runtime (or its batcher), one record handed to
each listener. Statistics happen elsewhere, off this path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterable

from sidecar.codec import encode_response
from sidecar.errors import (
    ModelExecutionError,
    RequestError,
    SidecarError,
    UnavailableError,
)
from sidecar.events import Listener, RequestRecord, ResponseAnnotator
from sidecar.models import ModelManager, ServedModel
from sidecar.proto import grpc_service_pb2 as pb

log = logging.getLogger(__name__)


class DataPlane:
    """Answers ModelInfer requests for the models a ModelManager holds."""

    def __init__(
        self,
        models: ModelManager,
        listeners: Iterable[Listener] = (),
        annotators: Iterable[ResponseAnnotator] = (),
    ) -> None:
        self._models = models
        self._listeners = tuple(listeners)
        self._annotators = tuple(annotators)
        self._prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self.shutting_down = False
        self.inflight = 0
        self._idle = asyncio.Event()

    @property
    def models(self) -> ModelManager:
        """The models this plane serves."""
        return self._models

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests (UNAVAILABLE); wait up to ``timeout`` s for in-flight ones."""
        self.shutting_down = True
        if self.inflight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def new_request_id(self) -> str:
        """A request id unique across replicas: random process prefix + counter."""
        return f"{self._prefix}-{next(self._ids)}"

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Run one request; raises RequestError subclasses for anything that fails."""
        started = time.perf_counter()
        model: ServedModel | None = None
        rows = 0
        request_id = request.id
        self.inflight += 1
        try:
            if self.shutting_down:
                raise UnavailableError(
                    "server is shutting down and accepts no new requests; retry on another replica",
                    reason="shutting_down",
                )
            model = self._models.resolve(request.model_name, request.model_version)
            codec = model.codec
            assert codec is not None  # set when the model became ready
            inputs, rows = codec.decode(request)
            names = codec.requested_outputs(request)
            request_id = request_id or self.new_request_id()
            model.inflight += 1
            try:
                outputs, queue_seconds = await model.predict(inputs, rows)
            except SidecarError:
                raise
            except Exception as exc:
                log.error(
                    "model %s version %s failed on request %s: %s: %s",
                    model.name,
                    model.version,
                    request_id,
                    type(exc).__name__,
                    exc,
                )
                raise ModelExecutionError(
                    f"model {model.name!r} version {model.version} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            finally:
                model.inflight -= 1
            try:
                response = encode_response(model.name, model.version, request_id, outputs, names)
            except (KeyError, ValueError) as exc:
                raise ModelExecutionError(
                    f"model {model.name!r} version {model.version} returned outputs that do not "
                    f"match its signature: {exc}"
                ) from exc
            for annotator in self._annotators:
                try:
                    annotator.annotate(model, inputs, outputs, response)
                except Exception:
                    log.exception("annotator %r failed", annotator)
        except RequestError as exc:
            self._emit(
                RequestRecord(
                    model,
                    request_id,
                    exc.code,
                    rows,
                    time.perf_counter() - started,
                    reason=getattr(exc, "reason", ""),
                )
            )
            raise
        finally:
            self.inflight -= 1
            if self.shutting_down and self.inflight == 0:
                self._idle.set()
        self._emit(
            RequestRecord(
                model,
                request_id,
                "OK",
                rows,
                time.perf_counter() - started,
                queue_seconds=queue_seconds,
                inputs=inputs,
                outputs=outputs,
            )
        )
        return response

    def _emit(self, record: RequestRecord) -> None:
        for listener in self._listeners:
            try:
                listener.on_request(record)
            except Exception:
                log.exception("listener %r failed on_request", listener)
