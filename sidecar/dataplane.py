"""The request path: resolve the model, decode, run, encode, tell listeners.

O(1) Python work per request besides the model: a dict lookup, the codec's
per-input checks, one await on the runtime (or its batcher), one record handed to
each listener. Statistics happen elsewhere, off this path.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable

from sidecar.codec import encode_response
from sidecar.errors import (
    DeadlineExceededError,
    ModelExecutionError,
    RequestError,
    ResourceExhaustedError,
    SidecarError,
    UnavailableError,
)
from sidecar.events import Listener, RequestRecord, ResponseAnnotator
from sidecar.models import ModelManager, ServedModel
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.types import Prediction, Tensors

log = logging.getLogger(__name__)

#: Longest piece of a model's own error text passed on to the client.
MAX_MODEL_ERROR = 300
#: While draining, how long no request may arrive before the port may close.
DRAIN_QUIET_SECONDS = 0.2
#: Bytes a ModelStreamInferResponse adds around its ModelInferResponse (a tag and a
#: length): the response limit is checked with them, so streamed answers fit too.
STREAM_FRAMING = 6


class _Call:
    """One model call: its task, its timeout timer, and what became of it."""

    __slots__ = ("abandoned", "overdue", "task", "timer")

    def __init__(self, task: asyncio.Task[Prediction]) -> None:
        self.task = task
        self.timer: asyncio.TimerHandle | None = None
        self.overdue = False  # ran past the model's timeout
        self.abandoned = False  # the request stopped waiting for it


class DataPlane:
    """Answers ModelInfer requests for the models a ModelManager holds."""

    def __init__(
        self,
        models: ModelManager,
        listeners: Iterable[Listener] = (),
        annotators: Iterable[ResponseAnnotator] = (),
        max_response_bytes: int = 0,
    ) -> None:
        """``max_response_bytes``: gRPC's send limit (``grpc.max_message_bytes``; 0 = none).

        A larger answer would fail in gRPC after the model ran, unseen by the
        listeners; checked here, it is RESOURCE_EXHAUSTED ``response_too_large``.
        """
        self._models = models
        self._max_response = max_response_bytes
        self._listeners = tuple(listeners)
        self._annotators = tuple(annotators)
        self._prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self.shutting_down = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._last_arrival = 0.0  # perf_counter of the newest request
        #: Called with a model when it becomes stalled (a call past its timeout) or recovers.
        self.on_stall_change: list[Callable[[ServedModel], None]] = []

    @property
    def models(self) -> ModelManager:
        """The models this plane serves."""
        return self._models

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests (UNAVAILABLE); wait up to ``timeout`` s for in-flight ones.

        Returns once nothing is in flight **and** no request has arrived for
        ``DRAIN_QUIET_SECONDS``: calls gRPC has received but not yet handed to us
        would be failed with CANCELLED when the server stops, so the port stays
        open (refusing with UNAVAILABLE, which clients retry elsewhere) until
        arrivals stop, as they do once Kubernetes has removed the endpoint.
        False when ``timeout`` passed first.
        """
        self.shutting_down = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.inflight:
                try:
                    await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    return False
            quiet = time.perf_counter() - self._last_arrival
            if self.inflight == 0 and quiet >= DRAIN_QUIET_SECONDS:
                return True
            if loop.time() >= deadline:
                return False
            # Waiting out the quiet period (re-checked: a request may have come meanwhile).
            await asyncio.sleep(min(DRAIN_QUIET_SECONDS - quiet, deadline - loop.time()))

    def refuse(
        self,
        error: RequestError,
        model_name: str = "",
        model_version: str = "",
        request_id: str = "",
    ) -> None:
        """Tell the listeners of a request refused before it was parsed (too large).

        The record names the model only when ``model_name`` and ``model_version``
        (read from the unparsed bytes, ``codec.peek_request``) resolve to a model that
        serves; otherwise it is counted like a request naming no served model.
        """
        self._last_arrival = time.perf_counter()
        model: ServedModel | None = None
        if model_name:
            try:
                model = self._models.resolve(model_name, model_version)
            except SidecarError:
                model = None
        self._emit(RequestRecord(model, request_id, error.code, 0, 0.0, reason=error.reason))

    def new_request_id(self) -> str:
        """A request id unique across replicas: random process prefix + counter."""
        return f"{self._prefix}-{next(self._ids)}"

    async def infer(
        self, request: pb.ModelInferRequest, time_remaining: float | None = None
    ) -> pb.ModelInferResponse:
        """Run one request; raises RequestError subclasses for anything that fails.

        ``time_remaining`` is the client's deadline in seconds from now (None: no
        deadline): a request whose deadline has passed never reaches the model.
        """
        started = self._last_arrival = time.perf_counter()
        model: ServedModel | None = None
        rows = 0
        request_id = request.id
        self.inflight += 1
        self._idle.clear()
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
            deadline = None if time_remaining is None else started + time_remaining
            try:
                outputs, queue_seconds = await self._call(model, inputs, rows, deadline)
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
                    f"{type(exc).__name__}: {str(exc)[:MAX_MODEL_ERROR]}"
                ) from exc
            codec.check_outputs(outputs, rows)
            response = encode_response(model.name, model.version, request_id, outputs, names)
            for annotator in self._annotators:
                try:
                    annotator.annotate(model, inputs, outputs, response)
                except Exception:
                    log.exception("annotator %r failed", annotator)
            if self._max_response:
                self._check_size(model, response)
        except RequestError as exc:
            self._emit(
                RequestRecord(
                    model,
                    request_id,
                    exc.code,
                    rows,
                    time.perf_counter() - started,
                    reason=exc.reason,
                )
            )
            raise
        except asyncio.CancelledError:  # the client cancelled or its deadline passed
            self._emit(
                RequestRecord(
                    model,
                    request_id,
                    "CANCELLED",
                    rows,
                    time.perf_counter() - started,
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

    async def _call(
        self, model: ServedModel, inputs: Tensors, rows: int, deadline: float | None
    ) -> Prediction:
        """Admit the call (stall, concurrency, deadline), run it, bound the wait.

        A call the runtime knows to be fast (``predict_inline``) runs right here,
        on the event loop. Any other model call runs in its own task and is never
        cancelled: a call stuck in an executor thread cannot be stopped, so it is
        accounted for (``inflight``, and ``overdue`` once past the model's
        timeout) until it really returns.
        The request itself stops waiting at the model's timeout or the client's
        deadline, whichever comes first.
        """
        where = f"model {model.name!r} version {model.version}"
        if model.stalled:
            raise UnavailableError(
                f"{where} is stalled: {model.overdue} call(s) ran past its "
                f"{model.timeout:g}s timeout and have not returned; retry later or elsewhere",
                reason="model_stalled",
            )
        if model.max_concurrent and model.inflight >= model.max_concurrent:
            raise ResourceExhaustedError(
                f"{where} is running {model.inflight} requests, the limit "
                f"max_concurrent_requests={model.max_concurrent}; retry with backoff",
                reason="concurrency_limit",
            )
        now = time.perf_counter()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError(
                f"{where}: the client's deadline passed before the model ran; "
                "the request was dropped",
                reason="deadline_passed",
            )
        # A call known to be fast runs inline: no task, no timer (nothing could
        # interrupt it anyway); the others run in a task the timeout can give up on.
        prediction = model.predict_inline(inputs, rows)
        if prediction is not None:
            return prediction
        loop = asyncio.get_running_loop()
        call = _Call(loop.create_task(model.predict(inputs, rows)))
        model.inflight += 1
        if model.timeout:
            call.timer = loop.call_later(model.timeout, self._overdue, model, call)
        call.task.add_done_callback(functools.partial(self._finished, model, call))
        waits = [w for w in (model.timeout or None, deadline and deadline - now) if w]
        try:
            done, _ = await asyncio.wait((call.task,), timeout=min(waits, default=None))
        except asyncio.CancelledError:  # the client went away; the call runs on, accounted
            call.abandoned = True
            if not call.task.done():
                model.abandoned["cancelled"] += 1
            raise
        if done:
            return call.task.result()
        call.abandoned = True
        if model.timeout and min(waits) == model.timeout:
            model.abandoned["timeout"] += 1
            raise DeadlineExceededError(
                f"{where} did not answer within its timeout of {model.timeout:g}s "
                "(limits.model_timeout_seconds); the request was abandoned"
            )
        model.abandoned["deadline"] += 1
        raise DeadlineExceededError(f"{where}: the client's deadline passed while the model ran")

    def _check_size(self, model: ServedModel, response: pb.ModelInferResponse) -> None:
        size = response.ByteSize() + STREAM_FRAMING
        if size > self._max_response:
            raise ResourceExhaustedError(
                f"model {model.name!r} version {model.version}: the response would be "
                f"{size} bytes, more than the limit grpc.max_message_bytes="
                f"{self._max_response}; send fewer rows per request or request fewer outputs",
                reason="response_too_large",
            )

    def _overdue(self, model: ServedModel, call: _Call) -> None:
        if call.task.done():
            return
        call.overdue = True
        model.overdue += 1
        model.timeouts += 1
        log.error(
            "model %s version %s: a call has run past its %gs timeout; the model is stalled "
            "(refuses new requests) until it returns",
            model.name,
            model.version,
            model.timeout,
        )
        if model.overdue == 1:
            self._stall_changed(model)

    def _finished(self, model: ServedModel, call: _Call, task: asyncio.Task[Prediction]) -> None:
        model.inflight -= 1
        if call.timer is not None:
            call.timer.cancel()
        error = None if task.cancelled() else task.exception()  # retrieved here, always
        if call.abandoned and error is not None:
            log.warning(
                "model %s version %s: an abandoned call failed later: %s: %s",
                model.name,
                model.version,
                type(error).__name__,
                error,
            )
        if call.overdue:
            model.overdue -= 1
            log.warning(
                "model %s version %s: an overdue call %s",
                model.name,
                model.version,
                "was cancelled" if task.cancelled() else "returned",
            )
            if model.overdue == 0:
                self._stall_changed(model)

    def _stall_changed(self, model: ServedModel) -> None:
        for callback in self.on_stall_change:
            try:
                callback(model)
            except Exception:
                log.exception("stall callback %r failed", callback)

    def _emit(self, record: RequestRecord) -> None:
        for listener in self._listeners:
            try:
                listener.on_request(record)
            except Exception:
                log.exception("listener %r failed on_request", listener)
