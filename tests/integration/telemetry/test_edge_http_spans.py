"""The edge's HTTP tracing on a real aiohttp server (127.0.0.1, port 0), spans in memory.

What the real processes cannot easily show: a handler's crash (500, ERROR, one
exception event), a path no route matches, and a WebSocket whose handshake span
ends at the 101 while the socket lives on, its frames outside that trace.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from relay_shared.edge_telemetry import EdgeTelemetry
from relay_shared.prometheus_telemetry import ExemplarPrometheusReader
from relay_shared.telemetry import Telemetry
from ws_edge.http_tracing import install_http_tracing

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def make_app(exporter: InMemorySpanExporter) -> tuple[web.Application, Telemetry]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[ExemplarPrometheusReader(registry)])
    telemetry = Telemetry("edge-test", meter_provider, registry, tracer_provider)
    edge = EdgeTelemetry(telemetry)
    app = web.Application()
    traced = install_http_tracing(app, edge).wrap

    async def ok(request: web.Request) -> web.Response:
        context = trace.get_current_span().get_span_context()
        return web.json_response({"trace": format(context.trace_id, "032x")})

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:  # a frame's span, started as the edge's frame spans are
            with edge.tracer.start_as_current_span("frame work"):
                pass
            await ws.send_str("done")
        return ws

    app.router.add_get("/items/{item_id}", traced(ok))
    app.router.add_get("/crash", traced(crash))
    app.router.add_get("/ws", socket)  # a WebSocket's handler is not wrapped
    return app, telemetry


async def test_routes_crashes_unmatched_paths_and_websocket_handshakes_get_their_spans():
    exporter = InMemorySpanExporter()
    app, telemetry = make_app(exporter)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        reply = await client.get("/items/7", headers={"traceparent": TRACEPARENT})
        assert reply.status == 200
        # the handler ran inside the span: its context is the client's trace
        assert (await reply.json())["trace"] == TRACEPARENT.split("-")[1]
        assert (await client.get("/crash")).status == 500
        assert (await client.get("/nowhere")).status == 404
        ws = await client.ws_connect("/ws")
        await ws.send_str("hello")
        assert (await ws.receive()).data == "done"
        await ws.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    item = spans["GET /items/{item_id}"]
    assert item.kind is SpanKind.SERVER
    assert format(item.parent.span_id, "016x") == TRACEPARENT.split("-")[2]
    assert item.attributes["http.route"] == "/items/{item_id}"
    assert item.attributes["url.path"] == "/items/7"
    assert item.attributes["http.response.status_code"] == 200
    assert "error.type" not in item.attributes
    crash = spans["GET /crash"]
    assert crash.status.status_code is StatusCode.ERROR
    assert crash.attributes["error.type"] == "500"
    assert [e.name for e in crash.events] == ["exception"]
    unmatched = spans["GET"]  # no route: the method alone names the span
    assert "http.route" not in unmatched.attributes
    assert unmatched.attributes["http.response.status_code"] == 404
    assert unmatched.status.status_code is StatusCode.UNSET  # the client's mistake
    handshake = spans["GET /ws"]
    assert handshake.attributes["http.response.status_code"] == 101
    frame = spans["frame work"]
    # the handshake ended when the 101 went out, and the socket's frames are not its children
    assert handshake.end_time <= frame.start_time
    assert frame.parent is None
    text, _ = telemetry.exposition()
    assert b"http_server_request_duration_seconds_count{" in text
    assert b'http_route="/items/{item_id}"' in text


async def test_with_tracing_off_the_callers_traceparent_is_current_in_the_handler():
    app = web.Application()
    traced = install_http_tracing(app, EdgeTelemetry(None)).wrap

    async def ok(request: web.Request) -> web.Response:
        context = trace.get_current_span().get_span_context()
        return web.json_response({"trace": format(context.trace_id, "032x")})

    app.router.add_get("/", traced(ok))
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        reply = await client.get("/", headers={"traceparent": TRACEPARENT})
        assert (await reply.json())["trace"] == TRACEPARENT.split("-")[1]
        reply = await client.get("/")
        assert (await reply.json())["trace"] == "0" * 32
