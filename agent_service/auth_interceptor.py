"""The server interceptor that authenticates every call and hands handlers its Caller.

Before a handler runs, the interceptor turns the call's metadata and TLS peer into
a Caller (auth.Authenticator) and checks the scope its RPC needs
(access.check_method). A refusal ends the call with UNAUTHENTICATED or
PERMISSION_DENIED and a google.rpc.Status (ErrorInfo) in the trailers; the handler
never runs. Otherwise the Caller is put in a context variable that handlers read
with `current_caller()`: each RPC runs in its own task, and tasks a handler starts
inherit it.

The health service is open (see access.OPEN_PREFIXES).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_status import rpc_status

from agent_service import access
from agent_service.auth import Authenticator, Caller
from agent_service.errors import ServiceError, Unauthenticated

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "agent_relay_caller", default=None
)


def current_caller() -> Caller:
    """The caller of the RPC being handled. Raises Unauthenticated outside an authenticated call.

    Failing closed: a handler reached without the interceptor has no caller."""
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("no credentials were checked for this call", reason="NO_CALLER")
    return caller


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates each call with `authenticator`; `clock` gives seconds since the epoch."""

    def __init__(
        self, authenticator: Authenticator, clock: Callable[[], float] = time.time
    ) -> None:
        self._authenticator = authenticator
        self._clock = clock

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        raw = handler_call_details.method
        method = raw.decode() if isinstance(raw, bytes) else raw
        if handler is None or access.is_open(method):
            return handler
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap_unary(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _admit(self, method: str, context: Any) -> bool:
        """Authenticate and authorize the call; on refusal abort it and return False."""
        try:
            caller = self._authenticator.authenticate(
                context.invocation_metadata() or (), context.auth_context(), self._clock()
            )
            access.check_method(caller, method)
        except ServiceError as exc:
            status = rpc_status.to_status(exc.to_status())
            await context.abort(status.code, status.details, status.trailing_metadata)
            return False  # unreachable: abort raises
        _caller.set(caller)
        return True

    def _wrap_unary(self, behavior: Any, method: str) -> Any:
        async def call(request_or_iterator: Any, context: Any) -> Any:
            if await self._admit(method, context):
                return await behavior(request_or_iterator, context)
            return None

        return call

    def _wrap_stream(self, behavior: Any, method: str) -> Any:
        async def stream(request_or_iterator: Any, context: Any) -> AsyncIterator[Any]:
            if not await self._admit(method, context):
                return
            async for response in behavior(request_or_iterator, context):
                yield response

        return stream
