"""gRPC servicers: thin adapters between protobuf and the data plane.

Domain errors become gRPC status codes in exactly one place: ``_rpc`` for unary
calls; streamed inference reports per-message errors in
``ModelStreamInferResponse.error_message``, as Triton does, and keeps the
stream open.

ModelInfer and ModelStreamInfer receive their request messages as bytes
(``guard.add_service``'s ``raw``) and parse them here after checking their size
against ``grpc.max_message_bytes``: a larger message is refused
(RESOURCE_EXHAUSTED, reason ``request_too_large``) and counted like every
other refusal, on a stream as an error answer to that message only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sidecar import __version__
from sidecar.codec import peek_request
from sidecar.dataplane import DataPlane
from sidecar.errors import MAX_QUOTE, RequestError, SidecarError
from sidecar.guard import MessageTooLargeError, message_reader
from sidecar.proto import grpc_service_pb2 as pb
from sidecar.proto import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVER_NAME = "inference-sidecar"
#: Default for messages of one ModelStreamInfer call not yet answered (limits.max_stream_inflight).
MAX_STREAM_INFLIGHT = 64
#: The methods whose request messages this servicer reads from bytes itself.
RAW_METHODS = ("ModelInfer", "ModelStreamInfer")
_INFER = "/inference.GRPCInferenceService/ModelInfer"
_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _rpc(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map RequestError → its status code, anything else → INTERNAL (logged)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except RequestError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        except SidecarError as exc:
            log.error("%s failed: %s", method.__name__, exc.message)
            await context.abort(grpc.StatusCode.INTERNAL, exc.message)
        except Exception as exc:
            log.exception("%s failed unexpectedly", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` (KServe v2 / Triton).

    Register it with ``guard.add_service(..., raw=RAW_METHODS)``: ModelInfer and
    ModelStreamInfer take request bytes. ``max_message_bytes`` is
    ``grpc.max_message_bytes`` (0: no limit).
    """

    def __init__(
        self,
        plane: DataPlane,
        strict_readiness: bool = True,
        max_stream_inflight: int = MAX_STREAM_INFLIGHT,
        max_message_bytes: int = 0,
    ) -> None:
        self._plane = plane
        self._strict = strict_readiness
        self._stream_slots = max_stream_inflight
        limit = max_message_bytes or 2**63
        self._read = message_reader(pb.ModelInferRequest, _INFER, limit)
        self._read_streamed = message_reader(pb.ModelInferRequest, _STREAM_INFER, limit)

    def _refused(self, error: MessageTooLargeError, raw: bytes) -> pb.ModelInferResponse:
        """Count a request too large to parse; the answer's names and id, read from its bytes."""
        name, version, request_id = peek_request(raw)
        self._plane.refuse(error, name, version, request_id)
        log.debug("refused: %s", error.message)
        return pb.ModelInferResponse(
            model_name=name[:MAX_QUOTE], model_version=version[:MAX_QUOTE], id=request_id
        )

    @_rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """Live while the process runs."""
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """Ready unless shutting down; with strict readiness, every model must be ready."""
        models = self._plane.models
        ready = not self._plane.shutting_down and (
            models.all_ready if self._strict else any(m.ready for m in models.models)
        )
        return pb.ServerReadyResponse(ready=ready)

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """Ready when that model (version) serves; unknown models are NOT_FOUND."""
        models = self._plane.models
        if not models.versions(request.name) and (request.name, "") not in models.failures:
            models.resolve(request.name, request.version)  # raises NOT_FOUND with the list
        return pb.ModelReadyResponse(
            ready=not self._plane.shutting_down and models.is_ready(request.name, request.version)
        )

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """Name, version and the protocol extensions we add."""
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=["sidecar_feedback"]
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """Inputs, outputs, versions and platform of one model."""
        model = self._plane.models.resolve(request.name, request.version)
        sig = model.signature
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._plane.models.versions(model.name),
            platform=sig.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in sig.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in sig.outputs],
        )

    @_rpc
    async def ModelInfer(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """One inference (dropped unanswered by the model if the client's deadline passed)."""
        try:
            message = self._read(request)
        except MessageTooLargeError as exc:
            self._refused(exc, request)
            raise
        return await self._plane.infer(message, context.time_remaining())

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Pipelined inference: requests run concurrently, responses return as they finish.

        At most ``max_stream_inflight`` messages are being processed or waiting to be
        sent; beyond that the server stops reading the stream, and HTTP/2 flow control
        holds the client back. A message larger than ``grpc.max_message_bytes`` is
        answered with an error of its own (the stream goes on); a message that is not
        a valid request ends the stream with INVALID_ARGUMENT after the answers to the
        earlier ones.
        """
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self._stream_slots)
        tasks: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                response = await self._plane.infer(request, context.time_remaining())
                item = pb.ModelStreamInferResponse(infer_response=response)
            except RequestError as exc:
                failed = pb.ModelInferResponse(
                    model_name=request.model_name[:MAX_QUOTE],
                    model_version=request.model_version[:MAX_QUOTE],
                    id=request.id,
                )
                item = pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
            except Exception as exc:
                log.exception("stream request failed unexpectedly")
                item = pb.ModelStreamInferResponse(
                    error_message=f"internal error: {type(exc).__name__}"
                )
            results.put_nowait(item)  # bounded: a slot is held until the item is sent

        async def reader() -> None:
            try:
                async for raw in request_iterator:
                    await slots.acquire()  # an error answer holds its slot until sent, too
                    try:
                        request = self._read_streamed(raw)
                    except MessageTooLargeError as exc:
                        failed = self._refused(exc, raw)
                        results.put_nowait(
                            pb.ModelStreamInferResponse(
                                error_message=exc.message, infer_response=failed
                            )
                        )
                        continue
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except Exception as exc:  # a malformed message, or the stream broke
                failure.append(exc)
            try:
                while tasks:
                    await asyncio.gather(*tuple(tasks))
            finally:
                results.put_nowait(None)

        feeder = asyncio.create_task(reader())
        try:
            while (item := await results.get()) is not None:
                yield item
                slots.release()
        finally:
            feeder.cancel()
            for task in tuple(tasks):
                task.cancel()
        if failure:
            error = failure[0]
            if isinstance(error, RequestError):
                await context.abort(grpc.StatusCode[error.code], error.message)
            log.error("stream ended by an unexpected error: %s: %s", type(error).__name__, error)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")
