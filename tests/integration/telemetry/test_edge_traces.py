"""One trace per user message across both real processes, from the browser's span to each tool.

The agent service exports over OTLP/gRPC and the edge over OTLP/HTTP to receivers
sharing one store. A client span's `traceparent` on a chat:message frame is the
parent of the edge's frame span; the agent's run span hangs below the edge's
span, and the model and tool spans below the run. Both /metrics endpoints are
scraped and must count what the test did.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from tests.integration.telemetry.otlp_receiver import (
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    ReceivedSpan,
)
from tests.integration.telemetry.processes import FAST_EXPORT, start_traced_service
from tests.integration.telemetry.prometheus import scrape, value
from tests.support.edge import EdgeClient, create_session, start_edge
from tests.support.timing import scaled

SPAN_KIND_SERVER = 2
PINGS = 100


async def scrape_until(url: str, done, timeout_s: float = 5.0):
    """Scrape until done(samples) holds or the time is up; the last scrape either way."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        samples = scrape(url)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def has_chain(spans, trace_id: str) -> bool:
    mine = [s for s in spans if s.trace_id == trace_id]
    return {"chat:message", "execute_tool calculator"} <= {s.name for s in mine} and any(
        s.name.startswith("invoke_agent") for s in mine
    )


def one(spans, name_prefix: str):
    found = [s for s in spans if s.name.startswith(name_prefix)]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_the_trace_runs_from_the_client_span_through_the_edge_to_the_tool_call(
    tmp_path, monkeypatch, receiver_grpc: OtlpGrpcReceiver
):
    store = receiver_grpc.store
    receiver_http = OtlpHttpReceiver(store)
    # content capture is opt-in: left unset here, no span may carry a prompt or a result
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    service_env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_grpc.endpoint,
    }
    service, service_metrics = start_traced_service(tmp_path, monkeypatch, service_env)
    for key, val in {
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_http.endpoint,
    }.items():
        monkeypatch.setenv(key, val)
    # a small burst and no abuse close: a flood of pings is sure to hit the limit
    edge = start_edge(service.address, "--conn-frames-burst", "20", "--abuse-strikes", "1000")
    clients: list[EdgeClient] = []
    try:
        session = create_session(edge)
        client = await EdgeClient.connect(edge.ws_url, token=session["token"])
        clients.append(client)
        sid = session["session_id"]
        assert (await client.join(sid))["type"] == "ack"

        traceparent, trace_id, client_span = new_traceparent()
        ack = await client.say(sid, "calc 6 * 7", traceparent=traceparent, tracestate="app=web")
        assert ack["type"] == "ack", ack
        await client.until_complete(sid, ack["run_id"])
        # without a traceparent the edge starts the trace
        second = await client.say(sid, "calc 1 + 1")
        await client.until_complete(sid, second["run_id"])

        spans = store.wait_for(lambda spans: has_chain(spans, trace_id))
        trace = [s for s in spans if s.trace_id == trace_id]
        frame = one(trace, "chat:message")
        assert frame.service == "ws_edge" and frame.kind == SPAN_KIND_SERVER
        assert frame.parent_span_id == client_span
        assert frame.attributes["agent_relay.run.id"] == ack["run_id"]
        run = one(trace, "invoke_agent")
        assert run.service == "agent_service"
        assert run.parent_span_id == frame.span_id
        tool = one(trace, "execute_tool calculator")
        assert tool.parent_span_id == run.span_id
        assert tool.attributes["agent_relay.tool.outcome"] == "completed"
        models = [s for s in trace if s.name.startswith("chat ")]
        assert len(models) == 2 and all(m.parent_span_id == run.span_id for m in models)
        captured = {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
                    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "input.value",
                    "output.value"}  # fmt: skip
        assert not [(s.name, k) for s in trace for k in s.attributes if k in captured]
        assert all(m.attributes["gen_ai.response.model"] == "demo" for m in models)

        def second_run(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
            return next(
                (
                    s
                    for s in spans
                    if s.name.startswith("invoke_agent")
                    and s.attributes.get("agent_relay.run.id") == second["run_id"]
                ),
                None,
            )

        def second_chain(spans: list[ReceivedSpan]) -> bool:
            # the edge and the service export on their own schedules: wait for both spans
            run = second_run(spans)
            return run is not None and any(
                s.name == "chat:message" and s.trace_id == run.trace_id for s in spans
            )

        run2 = second_run(store.wait_for(second_chain))
        assert run2 is not None
        frame2 = next(s for s in store.trace(run2.trace_id) if s.name == "chat:message")
        assert frame2.parent_span_id == "" and run2.parent_span_id == frame2.span_id
        assert run2.trace_id != trace_id

        # a second socket that floods pings past its burst gets rate_limited errors
        flooder = await EdgeClient.connect(edge.ws_url, token=session["token"])
        clients.append(flooder)
        for index in range(PINGS):
            await flooder.send({"type": "ping", "id": f"p{index}", "ts": index})
        replies = [await flooder.recv() for _ in range(PINGS)]
        limited = sum(1 for f in replies if f.get("code") == "rate_limited")
        assert limited > 0

        delivered = len(client.frames) + len(flooder.frames)  # welcomes and acks included
        metrics = await scrape_until(
            edge.url + "/metrics",  # the edge counts a frame right after writing it
            lambda m: value(m, "agent_relay_edge_frames_total", direction="sent") >= delivered,
        )
        sent_by_clients = 4 + 1 + PINGS  # auth, join, two messages; auth and the pings
        received = value(metrics, "agent_relay_edge_frames_total", direction="received")
        assert received == sent_by_clients
        assert value(metrics, "agent_relay_edge_frames_total", direction="sent") == delivered
        assert value(metrics, "agent_relay_edge_rate_limited_total", limit="frames") == limited
        assert value(metrics, "agent_relay_edge_connections") == 2
        assert value(metrics, "agent_relay_edge_rooms") == 1
        assert value(metrics, "agent_relay_edge_traffic_bytes_total", direction="received") > 0
        assert "agent_relay_edge_send_queue_frames" in metrics

        service_counts = scrape(f"http://{service_metrics}/metrics")
        assert value(service_counts, "agent_relay_runs_total", outcome="stop") == 2
    finally:
        for c in clients:
            await c.close()
        assert edge.stop() == 0
        assert service.stop() == 0
        receiver_http.stop()


async def test_the_console_exporter_prints_the_edges_spans(tmp_path, monkeypatch):
    service, _ = start_traced_service(tmp_path, monkeypatch, {})
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    edge = start_edge(service.address)
    try:
        session = create_session(edge)
        client = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await client.join(session["session_id"])
        traceparent, trace_id, _ = new_traceparent()
        ack = await client.say(session["session_id"], "hello", traceparent=traceparent)
        await client.until_complete(session["session_id"], ack["run_id"])
        await client.close()
    finally:
        assert edge.stop() == 0
        assert service.stop() == 0
    printed = edge.text()
    assert '"name": "chat:message"' in printed and trace_id in printed
