"""The one server interceptor every call passes through.

It does two things before a servicer sees a call:

1. Parses the request bytes itself. gRPC's own parsing turns a malformed
   message into ``UNKNOWN`` with protobuf's internal error text; here it is
   ``INVALID_ARGUMENT`` naming the expected message type. Streamed requests
   are parsed one by one: a bad one ends the stream with INVALID_ARGUMENT.
2. Applies the ``Authorizer``'s policy for the call's service (token or mTLS
   identity); a refusal is UNAUTHENTICATED or PERMISSION_DENIED.

Wrapped handlers are cached per method, so the per-call cost is one extra
coroutine frame.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sidecar.errors import InvalidRequestError
from sidecar.security import Authorizer

log = logging.getLogger(__name__)

Deserializer = Callable[[bytes], Any]


class MalformedMessageError(InvalidRequestError):
    """Request bytes that are not a valid protobuf message of the method's type."""


def _parse(deserialize: Deserializer | None, raw: Any, method: str) -> Any:
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception as exc:
        owner = getattr(deserialize, "__self__", None)
        what = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")
        raise MalformedMessageError(
            f"{method}: the request is not a valid {what} protobuf message"
        ) from exc


async def _result(value: Any) -> Any:
    """The handler's answer, awaited when the handler is a coroutine function."""
    return await value if inspect.isawaitable(value) else value


class CallGuard(grpc.aio.ServerInterceptor):
    """Parses requests (malformed → INVALID_ARGUMENT) and enforces authorisation."""

    def __init__(self, authorizer: Authorizer | None = None) -> None:
        self._auth = authorizer
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

        async def requests(raw: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for item in raw:
                yield _parse(parse, item, method)

        async def refuse(exc: MalformedMessageError, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(service, context)
                try:
                    request = _parse(parse, raw, method)
                except MalformedMessageError as exc:
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
                except MalformedMessageError as exc:
                    await refuse(exc, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)

        inner: Callable[..., Any] = handler.unary_stream or handler.stream_stream
        streaming_in = handler.stream_stream is not None

        if inspect.isasyncgenfunction(inner):

            async def gen(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await admit(service, context)
                try:
                    request = requests(raw) if streaming_in else _parse(parse, raw, method)
                    async for response in inner(request, context):
                        yield response
                except MalformedMessageError as exc:
                    await refuse(exc, context)

            behaviour: Callable[..., Any] = gen
        else:  # a coroutine that answers with context.write (grpc_health's Watch)

            async def coro(raw: Any, context: grpc.aio.ServicerContext) -> None:
                await admit(service, context)
                try:
                    request = requests(raw) if streaming_in else _parse(parse, raw, method)
                    await _result(inner(request, context))
                except MalformedMessageError as exc:
                    await refuse(exc, context)

            behaviour = coro
        make = (
            grpc.stream_stream_rpc_method_handler
            if streaming_in
            else grpc.unary_stream_rpc_method_handler
        )
        return make(behaviour, None, serialize)
