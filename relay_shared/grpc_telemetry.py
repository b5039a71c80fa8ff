"""gRPC telemetry for grpc.aio: server spans and metrics, and a client interceptor for the edge.

The names follow OpenTelemetry's RPC semantic conventions (the release-candidate
ones, `rpc.system.name` era) on spans and metrics alike, from one attribute set:

- `rpc.system.name` = `grpc`; `rpc.method` = the full method
  (`agent_relay.v1.AgentService/CreateSession`), which is also the span's name
  (no leading slash); `rpc.response.status_code` = the status name (`OK`,
  `NOT_FOUND`); `server.address` / `server.port` = the address the server
  listens on (see `bind_server_address`); `error.type` = the status name for
  the codes the conventions count as server errors (`UNKNOWN`,
  `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`,
  `DATA_LOSS`), which also set the span's status to ERROR; a client's mistake
  (`INVALID_ARGUMENT`, `NOT_FOUND`, ...) leaves it unset.
- Spans only: `network.peer.address` / `network.peer.port` from the peer, and
  one `exception` event when the handler raised (an abort included).

`server_interceptors(telemetry)` returns the interceptor list for
`grpc.aio.server(interceptors=...)`; handlers stay untouched. Calls that live
as long as a connection get no span (no span may last a whole stream): the
multiplexed `Chat` stream (each message carries its own trace context, see
agent_telemetry), health `Watch` and reflection; nor health checks, which load
balancers and the edge poll all day. Their metrics are kept.

Metrics: `rpc.server.call.duration` (seconds), `rpc.server.active_calls`, and
`rpc.server.messages` (by method and direction) counted as they stream.

`client_interceptors(target)` is for the edge's channel: a CLIENT span per
unary call (health checks excepted) whose context goes out in the call's
metadata as `traceparent`, so the agent's server span is its child.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from relay_shared.telemetry import Telemetry

if TYPE_CHECKING:
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]

SCOPE = "agent_relay.grpc"
# methods that live as long as their client's connection: never one span
LONG_LIVED_METHODS = frozenset(
    {
        "agent_relay.v1.AgentService/Chat",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
HEALTH_SERVICE = "grpc.health.v1.Health"
# status codes the RPC conventions count as the server's errors (span status ERROR)
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
# seconds: from a fast unary call to a long tool call
DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # fmt: skip


def server_interceptors(telemetry: Telemetry) -> list[Interceptor]:
    """The interceptors for a grpc.aio server of this process (spans only with tracing on)."""
    return [GrpcServerTelemetry(telemetry)]


def bind_server_address(interceptors: Sequence[object] | None, listen: str, port: int) -> None:
    """Tell the interceptors where the server listens, once bound (`listen` is HOST:PORT,
    `port` the bound one, which differs when the configured port was 0)."""
    host = listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
    for interceptor in interceptors or ():
        if isinstance(interceptor, GrpcServerTelemetry):
            interceptor.bind(host, port)


def split_target(target: str) -> tuple[str, int | None]:
    """`host:port` (or `dns:///host:port`, `[::1]:port`) into server.address and server.port."""
    address = target.split("///", 1)[-1]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address.strip("[]"), None
    return host.strip("[]"), int(port)


def peer_attributes(peer: str) -> dict[str, str | int]:
    """`ipv4:10.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:/tmp/s` as network.peer.* attributes."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, port = split_target(rest)
        attributes: dict[str, str | int] = {
            "network.peer.address": host,
            "network.transport": "tcp",
        }
        if port is not None:
            attributes["network.peer.port"] = port
        return attributes
    if kind == "unix":
        return {"network.peer.address": rest, "network.transport": "unix"}
    return {}


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


_NO_ERROR: BaseException | None = None


def _traced(method: str) -> bool:
    return method not in LONG_LIVED_METHODS and not method.startswith(HEALTH_SERVICE + "/")


class _Call:
    """One call's measurements: its attributes, start, and span (None when untraced)."""

    __slots__ = ("attributes", "span", "started", "token")

    def __init__(self, attributes: dict[str, Any], span: trace.Span | None) -> None:
        self.attributes = attributes
        self.span = span
        self.started = time.perf_counter()
        self.token: object | None = None


class GrpcServerTelemetry(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Spans and metrics of every call, from one attribute set; see the module docstring."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._tracer = telemetry.tracer(SCOPE) if telemetry.tracing else None
        self._server: dict[str, Any] = {}
        meter = telemetry.meter(SCOPE)
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

    def bind(self, host: str, port: int) -> None:
        """The server's listening address, for server.address and server.port."""
        self._server = {"server.address": host, "server.port": port}

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
        traced = self._tracer is not None and _traced(method)
        wrap = self._wrap
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                wrap(handler.stream_stream, method, traced, True, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary, method, traced, True, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream, method, traced, False, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, method, traced, False, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _start(self, method: str, traced: bool, context: Any) -> _Call:
        attributes = {"rpc.system.name": "grpc", "rpc.method": method, **self._server}
        self._active.add(1, attributes)
        if not traced or self._tracer is None:
            return _Call(attributes, None)
        carrier = {
            m.key: m.value for m in context.invocation_metadata() or () if isinstance(m.value, str)
        }
        span = self._tracer.start_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={**attributes, **peer_attributes(context.peer() or "")},
            record_exception=False,
            set_status_on_exception=False,
        )
        call = _Call(attributes, span)
        call.token = otel_context.attach(trace.set_span_in_context(span))
        return call

    def _finish(
        self, call: _Call, context: Any, default: grpc.StatusCode, error: BaseException | None
    ) -> None:
        status = _status_name(context, default)
        if error is not None and status == "OK":  # raised without an abort: grpc answers UNKNOWN
            status = default.name
        attributes = call.attributes
        self._active.add(-1, attributes)
        done = {**attributes, "rpc.response.status_code": status}
        if status in SERVER_ERROR_CODES:
            done["error.type"] = status
        span = call.span
        span_context = trace.set_span_in_context(span) if span is not None else None
        # recorded in the span's context: the histogram's exemplar links to this trace
        self._duration.record(time.perf_counter() - call.started, done, context=span_context)
        if span is None:
            return
        span.set_attribute("rpc.response.status_code", status)
        if error is not None and not isinstance(error, asyncio.CancelledError):
            # once: the abort that answered NOT_FOUND, or the fault that became UNKNOWN
            details = _details(context) or str(error)
            span.record_exception(error, {"exception.message": details} if details else None)
        if status in SERVER_ERROR_CODES:
            span.set_attribute("error.type", status)
            span.set_status(Status(StatusCode.ERROR, _details(context) or status))
        span.end()
        if call.token is not None:
            otel_context.detach(call.token)  # type: ignore[arg-type]

    def _wrap(
        self,
        behavior: Any,
        method: str,
        traced: bool,
        request_streaming: bool,
        response_streaming: bool,
    ) -> Any:
        received = self._cell(method, "RECEIVED")
        sent = self._cell(method, "SENT")

        def incoming(request_or_iterator: Any) -> Any:
            if not request_streaming:
                received[0] += 1
                return request_or_iterator
            return self._count(request_or_iterator, received)

        if response_streaming and inspect.isasyncgenfunction(behavior):

            async def stream_behavior(request_or_iterator: Any, context: Any) -> AsyncIterator[Any]:
                call = self._start(method, traced, context)
                outcome, error = grpc.StatusCode.UNKNOWN, _NO_ERROR
                try:
                    async for response in behavior(incoming(request_or_iterator), context):
                        sent[0] += 1
                        yield response
                    outcome = grpc.StatusCode.OK
                except asyncio.CancelledError as exc:
                    outcome, error = grpc.StatusCode.CANCELLED, exc
                    raise
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._finish(call, context, outcome, error)

            return stream_behavior

        async def call_behavior(request_or_iterator: Any, context: Any) -> Any:
            call = self._start(method, traced, context)
            outcome, error = grpc.StatusCode.UNKNOWN, _NO_ERROR
            try:
                result = behavior(incoming(request_or_iterator), context)
                if inspect.isawaitable(result):
                    result = await result
                if not response_streaming:
                    sent[0] += 1
                outcome = grpc.StatusCode.OK
                return result
            except asyncio.CancelledError as exc:
                outcome, error = grpc.StatusCode.CANCELLED, exc
                raise
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(call, context, outcome, error)

        return call_behavior

    @staticmethod
    async def _count(requests: AsyncIterator[Any], cell: list[int]) -> Any:
        async for request in requests:
            cell[0] += 1
            yield request


def _details(context: Any) -> str:
    try:
        details = context.details()
    except (AttributeError, NotImplementedError):
        return ""
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details or ""


# -- the client side (the edge) --------------------------------------------------------------


def client_interceptors(target: str) -> list[Any]:
    """The interceptors for the edge's channel to `target` (HOST:PORT)."""
    return [GrpcClientTracing(target)]


class GrpcClientTracing(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """A CLIENT span per unary call, its context sent in the call's metadata.

    Uses the global tracer provider (the process's, once setup_telemetry installed
    it); with tracing off the current context (an incoming `traceparent`, if any)
    still goes out, so the agent's logs name the caller's trace.
    """

    def __init__(self, target: str) -> None:
        host, port = split_target(target)
        self._server: dict[str, Any] = {"server.address": host}
        if port is not None:
            self._server["server.port"] = port

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        raw = client_call_details.method
        method = (raw.decode() if isinstance(raw, bytes) else raw).lstrip("/")
        if method.startswith(HEALTH_SERVICE + "/"):
            return await continuation(client_call_details, request)
        attributes = {"rpc.system.name": "grpc", "rpc.method": method, **self._server}
        tracer = trace.get_tracer(SCOPE)
        with tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            metadata = [*(client_call_details.metadata or ()), *carrier.items()]
            details = client_call_details._replace(metadata=grpc.aio.Metadata(*metadata))
            call = await continuation(details, request)
            code = await call.code()
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            span.set_attribute("rpc.response.status_code", name)
            if name != "OK":  # every code but OK is an error seen from the client
                span.set_attribute("error.type", name)
                span.set_status(Status(StatusCode.ERROR, await call.details() or name))
            return call
