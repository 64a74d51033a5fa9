"""The one server interceptor every call passes through, and the request-bytes checks.

``CallGuard`` does two things before a servicer sees a call:

1. Parses the request bytes itself, after checking their
   size against ``grpc.max_message_bytes``. A larger message is
   RESOURCE_EXHAUSTED naming the size and the limit; gRPC's own parsing turns
   a malformed message into ``UNKNOWN`` with protobuf's internal error text,
   here it is ``INVALID_ARGUMENT`` naming the expected message type. Streamed
   requests are read one by one: a bad one ends the stream with its status.
   Methods registered with ``request_deserializer=None`` (``add_service``'s
   ``raw``) get the bytes as they came: their servicer reads them with a
   ``message_reader`` itself, to count a refusal or to answer it on the stream.
2. Applies the ``Authorizer``'s policy for the call's service (token or mTLS
   identity); a refusal is UNAUTHENTICATED or PERMISSION_DENIED.

The size check needs gRPC to hand over a message larger than the limit, so
gRPC core's own receive limit (``grpc.max_receive_message_length``) is the
higher ``grpc.transport_max_message_bytes``: core refuses a message above
*that* from its 5-byte length prefix, before buffering it, and no code of
ours ever sees the call (docs/security.md, "Limits").

Wrapped handlers are cached per method, so the per-call cost is one extra
coroutine frame.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from sidecar.errors import InvalidRequestError, RequestError, ResourceExhaustedError
from sidecar.security import Authorizer

log = logging.getLogger(__name__)

Deserializer = Callable[[bytes], Any]
M = TypeVar("M", bound=Message)


class MalformedMessageError(InvalidRequestError):
    """Request bytes that are not a valid protobuf message of the method's type."""


class MessageTooLargeError(ResourceExhaustedError):
    """A request message larger than ``grpc.max_message_bytes``."""

    def __init__(self, method: str, size: int, limit: int) -> None:
        super().__init__(
            f"{method}: the request message is {size} bytes, more than the limit "
            f"grpc.max_message_bytes={limit}; send smaller messages (fewer rows or labels "
            "per request), or raise the server's grpc.max_message_bytes",
            reason="request_too_large",
        )
        self.size = size
        self.limit = limit


def _parse(deserialize: Deserializer | None, raw: Any, method: str, limit: int) -> Any:
    if deserialize is None:
        return raw  # the servicer reads the bytes itself (message_reader)
    if len(raw) > limit:
        raise MessageTooLargeError(method, len(raw), limit)
    try:
        return deserialize(raw)
    except Exception as exc:
        owner = getattr(deserialize, "__self__", None)
        what = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")
        raise MalformedMessageError(
            f"{method}: the request is not a valid {what} protobuf message"
        ) from exc


def message_reader(message: type[M], method: str, limit: int) -> Callable[[bytes], M]:
    """A function reading ``message`` from request bytes, for a method registered raw.

    It raises MessageTooLargeError when the bytes are longer than ``limit``
    (``grpc.max_message_bytes``; checked before parsing) and MalformedMessageError
    when they are not a valid message of that type. Built once per method: a call
    costs a length check and the parse.
    """
    parse = message.FromString
    name = message.DESCRIPTOR.full_name

    def read(raw: bytes) -> M:
        if len(raw) > limit:
            raise MessageTooLargeError(method, len(raw), limit)
        try:
            return parse(raw)
        except Exception as exc:
            raise MalformedMessageError(
                f"{method}: the request is not a valid {name} protobuf message"
            ) from exc

    return read


def add_service(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    servicer: object,
    raw: Collection[str] = (),
) -> str:
    """Register ``servicer``'s methods for ``service`` (as the generated ``add_*`` would).

    The methods named in ``raw`` are registered with ``request_deserializer=None``:
    their handlers receive the request bytes (one ``bytes`` per message) and read
    them with a ``message_reader``. Returns the service's full name.
    """
    unknown = set(raw) - {m.name for m in service.methods}
    if unknown:
        raise ValueError(f"{service.full_name} has no method(s) {sorted(unknown)}")
    makers = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make = makers[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=None if method.name in raw else request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name


async def _result(value: Any) -> Any:
    """The handler's answer, awaited when the handler is a coroutine function."""
    return await value if inspect.isawaitable(value) else value


class CallGuard(grpc.aio.ServerInterceptor):
    """Reads requests (too large → RESOURCE_EXHAUSTED, malformed → INVALID_ARGUMENT), authorises.

    ``max_message_bytes`` is ``grpc.max_message_bytes``, checked on the messages
    this guard parses (methods registered with a deserializer).
    """

    def __init__(self, authorizer: Authorizer | None = None, max_message_bytes: int = 0) -> None:
        self._auth = authorizer
        self._limit = max_message_bytes or 2**63
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped

    async def _admit(self, service: str, context: grpc.aio.ServicerContext) -> None:
        if self._auth is None or not self._auth.guards(service):
            return
        decision = self._auth.check(
            service, context.invocation_metadata(), context.auth_context() or {}
        )
        if decision.code is not None:
            await context.abort(decision.code, decision.message)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service = method.lstrip("/").rpartition("/")[0]
        parse = handler.request_deserializer
        serialize = handler.response_serializer
        admit = self._admit
        limit = self._limit
        unreadable = (MalformedMessageError, MessageTooLargeError)

        async def requests(raw: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for item in raw:
                yield _parse(parse, item, method, limit)

        async def refuse(exc: RequestError, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode[exc.code], exc.message)

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            if parse is None:  # the servicer reads the bytes (ModelInfer, SendLabels)

                async def unary_raw(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                    await admit(service, context)
                    return await _result(inner_uu(raw, context))

                return grpc.unary_unary_rpc_method_handler(unary_raw, None, serialize)

            async def unary_unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(service, context)
                try:
                    request = _parse(parse, raw, method, limit)
                except unreadable as exc:
                    await refuse(exc, context)
                return await _result(inner_uu(request, context))

            return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)

        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(
                raw: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> Any:
                await admit(service, context)
                try:
                    return await _result(inner_su(requests(raw), context))
                except unreadable as exc:
                    await refuse(exc, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)

        inner: Callable[..., Any] = handler.unary_stream or handler.stream_stream
        streaming_in = handler.stream_stream is not None

        if inspect.isasyncgenfunction(inner):

            async def gen(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await admit(service, context)
                try:
                    request = requests(raw) if streaming_in else _parse(parse, raw, method, limit)
                    async for response in inner(request, context):
                        yield response
                except unreadable as exc:
                    await refuse(exc, context)

            behaviour: Callable[..., Any] = gen
        else:  # a coroutine that answers with context.write (grpc_health's Watch)

            async def coro(raw: Any, context: grpc.aio.ServicerContext) -> None:
                await admit(service, context)
                try:
                    request = requests(raw) if streaming_in else _parse(parse, raw, method, limit)
                    await _result(inner(request, context))
                except unreadable as exc:
                    await refuse(exc, context)

            behaviour = coro
        make = (
            grpc.stream_stream_rpc_method_handler
            if streaming_in
            else grpc.unary_stream_rpc_method_handler
        )
        return make(behaviour, None, serialize)
