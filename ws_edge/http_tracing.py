"""A span, a metric and an access log line for every HTTP request the edge answers.

`install_http_tracing(app, telemetry)` adds an `on_response_prepare` hook and
returns the app's `HttpTracing`, whose `wrap(handler)` each route's handler is
registered with; the handlers stay untouched. A request no wrapped handler ran
for (a path no route matched, a static file, the WebSocket upgrade) is traced
when its answer goes out. No middleware: with any, aiohttp keeps a frame of its
own suspended around every handler, a WebSocket's for the socket's life
(PERFORMANCE.md: memory per idle socket).

- Span (OpenTelemetry's HTTP server conventions): kind SERVER, named
  `{method} {route}` (`POST /api/sessions`; just the method when no route
  matched), with `http.request.method`, `http.route`, `url.path`,
  `url.scheme`, `http.response.status_code`, `network.peer.address`,
  `user_agent.original`, and `error.type` (the status code) on a 4xx or 5xx;
  status ERROR only on a 5xx (a 4xx is the client's mistake). A `traceparent`
  header makes it a child of the caller's span. Its context is current while
  the handler runs, so the gRPC calls it makes (CreateSession, ListMessages)
  carry it to the agent and its log lines carry its ids. With tracing off the
  caller's `traceparent` is made current instead, so the same holds for the
  caller's ids.
- A WebSocket upgrade (`/ws`, registered unwrapped) gets its span for the
  handshake only, made when the 101 (or the refusal) is sent, and its context is
  not made current: the socket lives for hours and each frame makes its own trace.
- Metric: `http.server.request.duration` (seconds) by method, route, status
  code and error.type, recorded in the span's context (its exemplar links to it).
- Log: one line per request, INFO (DEBUG for the probes `/healthz`, `/readyz`
  and `/metrics`, polled all day), written inside the span: it carries
  `trace_id` and `span_id`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from relay_shared.edge_telemetry import EdgeTelemetry

log = logging.getLogger("ws_edge.http")

KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# seconds: the HTTP conventions' advised boundaries
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                      7.5, 10.0)  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpTrace:
    """One request's span (None with tracing off), the context its log line is written
    in, and what its metric needs. `finish()` ends it once."""

    def __init__(
        self,
        owner: HttpTracing,
        span: trace.Span | None,
        context: otel_context.Context,
        attributes: dict[str, str],
        path: str,
    ) -> None:
        self.owner = owner
        self.span = span
        self.context = context
        self.attributes = attributes
        self.path = path
        self.started = time.perf_counter()
        self.done = False

    def finish(self, status: int | None, error: BaseException | None = None) -> None:
        """The answer went out with `status` (None: there was none, the client went away)."""
        if self.done:
            return
        self.done = True
        elapsed = time.perf_counter() - self.started
        attributes: dict[str, str | int] = dict(self.attributes)
        error_type = ""
        if status is not None:
            attributes["http.response.status_code"] = status
            if status >= 400:
                error_type = str(status)
        elif error is not None:
            error_type = type(error).__qualname__
        if error_type:
            attributes["error.type"] = error_type
        span = self.span
        if span is not None:
            span.set_attributes(attributes)
            if error is not None and not isinstance(error, asyncio.CancelledError):
                span.record_exception(error)
            if status is not None and status >= 500:
                span.set_status(Status(StatusCode.ERROR, error_type))
        token = otel_context.attach(self.context)
        try:
            self.owner.duration.record(elapsed, attributes)
            level = logging.DEBUG if self.path in PROBES else logging.INFO
            log.log(
                level,
                "%s %s %s in %.1f ms",
                self.attributes["http.request.method"],
                self.path,
                status if status is not None else "(no answer)",
                elapsed * 1e3,
                extra={"http_status": status or 0, "http_route": self.attributes.get("http.route")},
            )
        finally:
            otel_context.detach(token)
        if span is not None:
            span.end()


TRACE_KEY = web.RequestKey("agent_relay_http_trace", HttpTrace)


class HttpTracing:
    """The middleware and the response hook, sharing the edge's tracer and meter."""

    def __init__(self, telemetry: EdgeTelemetry) -> None:
        self.tracing = telemetry.tracing
        self.tracer = telemetry.tracer
        self.duration = telemetry.meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="HTTP requests the edge answered, by method, route and status code.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )

    def start(self, request: web.Request) -> HttpTrace:
        # rel_url.path, not request.path: each of the request's cached properties takes a
        # slot in a dict the request keeps, a WebSocket's for the socket's life, and a sixth
        # one doubles its table (208 B, PERFORMANCE.md: memory per idle socket).
        path = request.rel_url.path
        method = request.method if request.method in KNOWN_METHODS else "_OTHER"
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        attributes = {"http.request.method": method}
        if route:
            attributes["http.route"] = route
        parent = propagate.extract(request.headers)
        if not self.tracing:
            return HttpTrace(self, None, parent, attributes, path)
        span_attributes: dict[str, str] = {
            **attributes,
            "url.path": path,
            "url.scheme": request.scheme,
            "network.peer.address": request.remote or "",
        }
        agent = request.headers.get(hdrs.USER_AGENT)
        if agent:
            span_attributes["user_agent.original"] = agent
        span = self.tracer.start_span(
            f"{method} {route}" if route else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=span_attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return HttpTrace(self, span, trace.set_span_in_context(span), attributes, path)

    def wrap(self, handler: Handler) -> Handler:
        """`handler` traced, its span's context current while it runs: what a route is
        registered with. Not for a WebSocket's handler (see the module docstring)."""

        async def traced_handler(request: web.Request) -> web.StreamResponse:
            return await self._traced(request, handler)

        return traced_handler

    async def _traced(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        traced = request[TRACE_KEY] = self.start(request)
        token = otel_context.attach(traced.context)
        try:
            return await handler(request)
        except web.HTTPException:
            raise  # answered with its status: the response hook ends the span
        except asyncio.CancelledError as exc:
            traced.finish(None, exc)
            raise
        except Exception as exc:
            traced.finish(500, exc)  # aiohttp answers 500
            raise
        finally:
            otel_context.detach(token)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        # A socket's request lives on: its trace goes now.
        traced = request.pop(TRACE_KEY, None) or self.start(request)
        traced.finish(response.status)


HTTP_TRACING = web.AppKey("agent_relay_http_tracing", HttpTracing)


def handshake_failed(request: web.Request, error: BaseException) -> None:
    """A WebSocket handshake ended in `error` before its answer went out: end its span as
    the middleware ends a plain request's (a 500, or no answer when cancelled)."""
    tracing = request.app.get(HTTP_TRACING)
    if tracing is not None:
        status = None if isinstance(error, asyncio.CancelledError) else 500
        tracing.start(request).finish(status, error)


def install_http_tracing(app: web.Application, telemetry: EdgeTelemetry) -> HttpTracing:
    """Trace every HTTP request of `app` (call before the app starts); register each
    route's handler (but a WebSocket's) as `tracing.wrap(handler)`."""
    tracing = app[HTTP_TRACING] = HttpTracing(telemetry)
    app.on_response_prepare.append(tracing.on_response_prepare)
    return tracing
