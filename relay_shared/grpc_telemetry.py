"""gRPC server telemetry for grpc.aio: rpc.* spans (OpenTelemetry's interceptor) and metrics.

`server_interceptors(telemetry)` returns the interceptors to hand to
`grpc.aio.server(interceptors=...)`; the handlers stay untouched.

- Spans: opentelemetry-instrumentation-grpc's aio server interceptor, which
  continues a `traceparent` sent in the call's metadata. Calls that live as
  long as a connection are left out (no span may last a whole stream): the
  multiplexed `Chat` stream (each message carries its own trace context, see
  agent_telemetry), health `Watch` and reflection; nor health checks, which
  load balancers and the edge poll all day. With tracing off there is no span
  interceptor at all.
- Metrics (OpenTelemetry semantic conventions for RPC): `rpc.server.call.duration`
  (seconds, by method and status code), `rpc.server.active_calls`, and
  `rpc.server.messages` (by method and direction) counted as they stream.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.metrics import CallbackOptions, Observation

from relay_shared.telemetry import Telemetry

if TYPE_CHECKING:
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]

# methods that live as long as their client's connection: never one span
LONG_LIVED_METHODS = (
    "/agent_relay.v1.AgentService/Chat",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
HEALTH_SERVICE = "grpc.health.v1.Health"
# seconds: from a fast unary call to a long tool call
DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # fmt: skip


def server_interceptors(telemetry: Telemetry) -> list[Interceptor]:
    """The interceptors for a grpc.aio server of this process."""
    interceptors: list[Interceptor] = [GrpcServerMetrics(telemetry)]
    if telemetry.tracing:
        short_lived = filters.negate(
            filters.any_of(
                *(filters.full_method_name(m) for m in LONG_LIVED_METHODS),
                filters.service_name(HEALTH_SERVICE),  # polled all day: a trace each is noise
            )
        )
        interceptors.append(
            aio_server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=telemetry.tracer_provider, filter_=short_lived
            )
        )
    return interceptors


def _status_name(context: Any, default: grpc.StatusCode) -> str:
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):  # an older grpc.aio context
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # grpc.aio may hand back the raw number
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), default.name)
    return default.name


class GrpcServerMetrics(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every call: duration by status, calls in flight, messages each way."""

    def __init__(self, telemetry: Telemetry) -> None:
        meter = telemetry.meter("agent_relay.grpc")
        self._duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of gRPC server calls, by method and status code.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._active = meter.create_up_down_counter(
            "rpc.server.active_calls", unit="{call}", description="gRPC server calls in flight."
        )
        # per message: a plain int in a cell, read only when metrics are collected
        self._message_cells: dict[tuple[str, str], list[int]] = {}
        meter.create_observable_counter(
            "rpc.server.messages",
            callbacks=[self._observe_messages],
            unit="{message}",
            description="gRPC messages by method and direction (RECEIVED, SENT).",
        )

    def _cell(self, method: str, direction: str) -> list[int]:
        return self._message_cells.setdefault((method, direction), [0])

    def _observe_messages(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                cell[0],
                {"rpc.system.name": "grpc", "rpc.method": method, "rpc.message.type": direction},
            )
            for (method, direction), cell in list(self._message_cells.items())
        ]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        raw = handler_call_details.method
        method = (raw.decode() if isinstance(raw, bytes) else raw).lstrip("/")
        base = {"rpc.system.name": "grpc", "rpc.method": method}
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap(handler.stream_stream, base, True, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, base, True, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap(handler.unary_stream, base, False, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, base, False, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(
        self, behavior: Any, base: dict[str, str], request_streaming: bool, response_streaming: bool
    ) -> Any:
        received = self._cell(base["rpc.method"], "RECEIVED")
        sent = self._cell(base["rpc.method"], "SENT")

        def incoming(request_or_iterator: Any) -> Any:
            if not request_streaming:
                received[0] += 1
                return request_or_iterator
            return self._count(request_or_iterator, received)

        def finish(started: float, context: Any, default: grpc.StatusCode) -> None:
            status = _status_name(context, default)
            self._active.add(-1, base)
            self._duration.record(
                time.perf_counter() - started, {**base, "rpc.response.status_code": status}
            )

        if response_streaming and inspect.isasyncgenfunction(behavior):

            async def stream_behavior(request_or_iterator: Any, context: Any) -> AsyncIterator[Any]:
                started, outcome = time.perf_counter(), grpc.StatusCode.UNKNOWN
                self._active.add(1, base)
                try:
                    async for response in behavior(incoming(request_or_iterator), context):
                        sent[0] += 1
                        yield response
                    outcome = grpc.StatusCode.OK
                except asyncio.CancelledError:
                    outcome = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    finish(started, context, outcome)

            return stream_behavior

        async def call_behavior(request_or_iterator: Any, context: Any) -> Any:
            started, outcome = time.perf_counter(), grpc.StatusCode.UNKNOWN
            self._active.add(1, base)
            try:
                result = behavior(incoming(request_or_iterator), context)
                if inspect.isawaitable(result):
                    result = await result
                if not response_streaming:
                    sent[0] += 1
                outcome = grpc.StatusCode.OK
                return result
            except asyncio.CancelledError:
                outcome = grpc.StatusCode.CANCELLED
                raise
            finally:
                finish(started, context, outcome)

        return call_behavior

    @staticmethod
    async def _count(requests: AsyncIterator[Any], cell: list[int]) -> Any:
        async for request in requests:
            cell[0] += 1
            yield request
