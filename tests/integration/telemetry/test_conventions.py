"""The attribute names both real processes export, checked at a real OTLP receiver.

The agent service exports over OTLP/gRPC and the edge over OTLP/HTTP, both with
content capture on (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true).
A client span's `traceparent` on `POST /api/sessions` must be the parent of the
edge's HTTP span, whose gRPC client span is the parent of the agent's
CreateSession span; then a message that uses a tool yields GenAI spans with the
conventions' names and the captured content. Both /metrics answer OpenMetrics,
gzipped, with exemplars that name these traces. (Capture off, the default, is
checked in test_edge_traces.py.)
"""

from __future__ import annotations

import gzip
import json
import secrets
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.integration.telemetry.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver
from tests.integration.telemetry.processes import FAST_EXPORT, start_traced_service
from tests.support.edge import EdgeClient, start_edge
from tests.support.timing import scaled

SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3
STATUS_UNSET, STATUS_ERROR = 0, 2
CAPTURE = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
DEPRECATED_RPC = ("rpc.system", "rpc.service", "rpc.grpc.status_code", "net.peer.ip",
                  "net.peer.name", "net.peer.port")  # fmt: skip
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def post_session(url: str, traceparent: str) -> dict:
    request = urllib.request.Request(
        url + "/api/sessions",
        method="POST",
        headers={"Content-Type": "application/json", "traceparent": traceparent},
        data=b'{"title": "conventions"}',
    )
    with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
        return json.loads(reply.read())


def get_status(url: str, traceparent: str) -> int:
    request = urllib.request.Request(url, headers={"traceparent": traceparent})
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def scrape_openmetrics(url: str) -> tuple[dict[str, str], list]:
    """GET /metrics asking for OpenMetrics and gzip: the headers and the parsed families."""
    request = urllib.request.Request(
        url, headers={"Accept": OPENMETRICS, "Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=scaled(5)) as reply:
        headers = {k.lower(): v for k, v in reply.headers.items()}
        body = reply.read()
    assert headers.get("content-encoding") == "gzip"
    return headers, list(text_string_to_metric_families(gzip.decompress(body).decode()))


def exemplar_traces(families: list, name: str, **labels: str) -> set[str]:
    """The trace ids of the exemplars on the buckets of histogram `name` with these labels."""
    found = set()
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.exemplar is not None:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    found.add(sample.exemplar.labels["trace_id"])
    return found


def one(spans, name: str, service: str | None = None):
    found = [s for s in spans if s.name == name and (service is None or s.service == service)]
    assert len(found) == 1, [(s.service, s.name) for s in spans]
    return found[0]


def no_deprecated_rpc_names(span) -> None:
    assert not [k for k in span.attributes if k in DEPRECATED_RPC], span.attributes


async def test_spans_and_metrics_carry_the_current_conventions_names(
    tmp_path, monkeypatch, receiver_grpc: OtlpGrpcReceiver
):
    store = receiver_grpc.store
    receiver_http = OtlpHttpReceiver(store)
    service_env = {
        **CAPTURE,
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
    edge = start_edge(service.address)
    service_port = int(service.address.rsplit(":", 1)[1])
    try:
        # -- POST /api/sessions joins the client's trace, down to the agent -------------------
        traceparent, http_trace, client_span = new_traceparent()
        session = post_session(edge.url, traceparent)
        sid = session["session_id"]

        def created(spans):
            return any(
                s.trace_id == http_trace and s.service == "agent_service" for s in spans
            ) and any(s.trace_id == http_trace and s.name == "POST /api/sessions" for s in spans)

        store.wait_for(created)
        spans = store.trace(http_trace)
        http = one(spans, "POST /api/sessions")
        assert http.service == "ws_edge" and http.kind == SPAN_KIND_SERVER
        assert http.parent_span_id == client_span
        assert http.attributes["http.request.method"] == "POST"
        assert http.attributes["http.route"] == "/api/sessions"
        assert http.attributes["url.path"] == "/api/sessions"
        assert http.attributes["http.response.status_code"] == 201
        assert "error.type" not in http.attributes and http.status_code == STATUS_UNSET
        method = "agent_relay.v1.AgentService/CreateSession"
        call = one(spans, method, "ws_edge")
        assert call.kind == SPAN_KIND_CLIENT and call.parent_span_id == http.span_id
        assert call.attributes["server.port"] == service_port
        served = one(spans, method, "agent_service")
        assert served.kind == SPAN_KIND_SERVER and served.parent_span_id == call.span_id
        attributes = served.attributes
        assert attributes["rpc.system.name"] == "grpc"
        assert attributes["rpc.method"] == method
        assert attributes["rpc.response.status_code"] == "OK"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == service_port
        assert attributes["network.peer.address"] == "127.0.0.1"
        assert isinstance(attributes["network.peer.port"], int)
        no_deprecated_rpc_names(served)
        no_deprecated_rpc_names(call)
        # the edge's log line about the request carries the trace's ids (at INFO)
        lines = [json.loads(line) for line in edge.output if line.startswith("{")]
        (logged,) = [e for e in lines if e["message"].startswith("POST /api/sessions 201")]
        assert logged["level"] == "INFO" and logged["trace_id"] == http_trace
        assert logged["span_id"] == http.span_id

        # -- a 4xx: the client's mistake, error.type but no ERROR status -----------------------
        refused_parent, refused_trace, _ = new_traceparent()
        assert get_status(f"{edge.url}/api/sessions/{sid}/messages", refused_parent) == 401
        store.wait_for(lambda spans: any(s.trace_id == refused_trace for s in spans))
        (unauthorized,) = store.trace(refused_trace)
        assert unauthorized.name == "GET /api/sessions/{session_id}/messages"
        assert unauthorized.attributes["http.route"] == "/api/sessions/{session_id}/messages"
        assert unauthorized.attributes["http.response.status_code"] == 401
        assert unauthorized.attributes["error.type"] == "401"
        assert unauthorized.status_code == STATUS_UNSET

        # -- a message that uses a tool: GenAI names and the captured content -------------------
        client = await EdgeClient.connect(edge.ws_url, token=session["token"])
        assert (await client.join(sid))["type"] == "ack"
        chat_parent, chat_trace, chat_span = new_traceparent()
        ack = await client.say(sid, "calc 6 * 7", traceparent=chat_parent)
        assert ack["type"] == "ack", ack
        await client.until_complete(sid, ack["run_id"])

        # a refused frame gets a span with error.type = the code, in the frame's trace
        refused_frame, refusal_trace, refusal_parent = new_traceparent()
        reply = await client.say("s_not_joined", "hello", traceparent=refused_frame)
        assert reply["code"] == "not_joined"
        await client.close()

        def chat_done(spans):
            mine = {s.name for s in spans if s.trace_id == chat_trace}
            refused = any(s.trace_id == refusal_trace for s in spans)
            return (
                refused
                and {"chat:message", "execute_tool calculator"} <= mine
                and (
                    sum(1 for s in spans if s.trace_id == chat_trace and s.name == "chat demo") == 2
                )
            )

        store.wait_for(chat_done)
        spans = store.trace(chat_trace)
        frame = one(spans, "chat:message")
        assert frame.parent_span_id == chat_span
        assert frame.attributes["input.value"] == "calc 6 * 7"
        run = one(spans, "invoke_agent agent-relay")
        assert run.attributes["input.value"] == "calc 6 * 7"
        assert "42" in run.attributes["output.value"]
        first, second = sorted(
            (s for s in spans if s.name == "chat demo"),
            key=lambda s: s.attributes["agent_relay.step"],
        )
        for model in (first, second):
            assert model.kind == SPAN_KIND_CLIENT
            assert model.attributes["gen_ai.provider.name"] == "demo"
            assert model.attributes["gen_ai.request.model"] == "demo"
            assert model.attributes["gen_ai.response.model"] == "demo"
            assert model.attributes["gen_ai.response.id"].startswith("demo-")
            assert model.attributes["server.address"] == "demo"
            assert model.attributes["gen_ai.response.time_to_first_chunk"] >= 0
            assert not [k for k in model.attributes if k.startswith("agent_relay.time_to")]
        asked = json.loads(first.attributes["gen_ai.input.messages"])
        assert asked == [{"role": "user", "parts": [{"type": "text", "content": "calc 6 * 7"}]}]
        assert first.attributes["input.value"] == first.attributes["gen_ai.input.messages"]
        assert first.attributes["input.mime_type"] == "application/json"
        (answer,) = json.loads(first.attributes["gen_ai.output.messages"])
        assert answer["role"] == "assistant" and answer["finish_reason"] == "tool_call"
        (tool_call,) = [p for p in answer["parts"] if p["type"] == "tool_call"]
        assert tool_call["name"] == "calculator"
        assert tool_call["arguments"] == {"expression": "6 * 7"}
        # the second call reads the tool's result and answers with text
        history = json.loads(second.attributes["gen_ai.input.messages"])
        assert [m["role"] for m in history] == ["user", "assistant", "tool"]
        (result,) = history[2]["parts"]
        assert result["type"] == "tool_call_response" and result["id"] == tool_call["id"]
        assert "42" in result["response"]
        (reply_message,) = json.loads(second.attributes["gen_ai.output.messages"])
        assert reply_message["finish_reason"] == "stop"
        assert second.attributes["output.mime_type"] == "text/plain"
        assert "42" in second.attributes["output.value"]
        tool = one(spans, "execute_tool calculator")
        assert tool.attributes["gen_ai.tool.call.id"] == tool_call["id"]
        assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"expression": "6 * 7"}
        assert "42" in tool.attributes["gen_ai.tool.call.result"]
        assert tool.attributes["output.value"] == tool.attributes["gen_ai.tool.call.result"]
        assert tool.attributes["input.mime_type"] == "application/json"

        handshakes = [s for s in store.spans if s.name == "GET /ws" and s.service == "ws_edge"]
        assert handshakes and handshakes[0].attributes["http.response.status_code"] == 101
        assert frame.trace_id not in {h.trace_id for h in handshakes}

        (refusal,) = store.trace(refusal_trace)
        assert refusal.name == "chat:message" and refusal.service == "ws_edge"
        assert refusal.parent_span_id == refusal_parent
        assert refusal.attributes["error.type"] == "not_joined"
        assert refusal.status_code == STATUS_UNSET  # the client's mistake

        # -- a NOT_FOUND unary call: one exception event, not an error of the server ------------
        missing_parent, missing_trace, _ = new_traceparent()
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetSession(
                    pb.GetSessionRequest(session_id="s_missing"),
                    metadata=(("traceparent", missing_parent),),
                )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        store.wait_for(lambda spans: any(s.trace_id == missing_trace for s in spans))
        (not_found,) = store.trace(missing_trace)
        assert not_found.name == "agent_relay.v1.AgentService/GetSession"
        assert not_found.attributes["rpc.response.status_code"] == "NOT_FOUND"
        assert "error.type" not in not_found.attributes  # not a server error code
        assert not_found.status_code == STATUS_UNSET
        assert [name for name, _ in not_found.events] == ["exception"]

        # -- /metrics: OpenMetrics, gzip, exemplars that name these traces ----------------------
        headers, families = scrape_openmetrics(f"http://{service_metrics}/metrics")
        assert headers["content-type"].startswith("application/openmetrics-text")
        create_traces = exemplar_traces(
            families, "rpc_server_call_duration_seconds", rpc_method=method
        )
        assert create_traces == {http_trace}
        assert exemplar_traces(families, "gen_ai_client_operation_duration_seconds") == {chat_trace}
        assert chat_trace in exemplar_traces(
            families, "gen_ai_client_operation_time_to_first_chunk_seconds"
        )
        # the same labels on the metric as on the span
        samples = [
            s
            for f in families
            if f.name == "rpc_server_call_duration_seconds"
            for s in f.samples
            if s.labels.get("rpc_method") == "agent_relay.v1.AgentService/GetSession"
        ]
        assert samples and all(s.labels["rpc_response_status_code"] == "NOT_FOUND" for s in samples)
        assert all(s.labels["server_port"] == str(service_port) for s in samples)

        headers, families = scrape_openmetrics(edge.url + "/metrics")
        assert headers["content-type"].startswith("application/openmetrics-text")
        posted = exemplar_traces(
            families, "http_server_request_duration_seconds", http_route="/api/sessions"
        )
        assert posted == {http_trace}
    finally:
        assert edge.stop() == 0
        assert service.stop() == 0
        receiver_http.stop()


async def test_an_unknown_exporter_is_one_line_and_the_service_runs_on(tmp_path, monkeypatch):
    env = {"OTEL_TRACES_EXPORTER": "no-such-exporter"}
    service, _ = start_traced_service(tmp_path, monkeypatch, env)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            created = await stub.CreateSession(pb.CreateSessionRequest())
            assert created.session_id
    finally:
        assert service.stop() == 0
    text = service.text()
    assert "Traceback" not in text
    errors = [json.loads(x) for x in service.output if x.startswith("{") and '"ERROR"' in x]
    (error,) = errors
    assert "no-such-exporter" in error["message"] and "exception" not in error
