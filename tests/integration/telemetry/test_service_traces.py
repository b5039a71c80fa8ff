"""The real agent service exports one trace per message to a real OTLP receiver.

A client span's `traceparent` travels in SendMessage.trace_context (the Chat
stream multiplexes messages, so each carries its own); the run's span is its
child, and the model call and each tool call hang below the run. /metrics is
scraped over HTTP and parsed with the Prometheus client's parser.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.integration.telemetry.otlp_receiver import OtlpHttpReceiver
from tests.integration.telemetry.processes import start_traced_service
from tests.integration.telemetry.prometheus import Samples, value
from tests.integration.telemetry.prometheus import scrape as scrape_url
from tests.support.chat import ChatClient, joined_session
from tests.support.service import ServiceProcess
from tests.support.timing import scaled

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_UNSET, STATUS_ERROR = 0, 2


def new_traceparent() -> tuple[str, str, str]:
    """A sampled client span's (traceparent, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def scrape(address: str) -> Samples:
    return scrape_url(f"http://{address}/metrics")


async def run_log_lines(service: ServiceProcess, run_id: str) -> list[dict]:
    """The service's JSON log lines about a run, once there is one: the line that says the
    run ended is written after the client has seen its end, and read from the process's
    output by a thread."""
    deadline = time.monotonic() + scaled(10)
    while True:
        lines = [json.loads(line) for line in service.output if line.startswith("{")]
        about = [e for e in lines if e.get("run_id") == run_id]
        if about or time.monotonic() > deadline:
            return about
        await asyncio.sleep(0.02)


async def run_message(address: str, text: str, trace_context: dict[str, str]) -> str:
    """Create a session (with the context in gRPC metadata too), send `text`; its run id."""
    metadata = tuple(trace_context.items())
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session = await stub.CreateSession(pb.CreateSessionRequest(), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the client's mistake
            await stub.GetSession(pb.GetSessionRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), metadata=metadata)
        chat = ChatClient(stub)
        await chat.join(session.session_id)
        reply = await chat.send(session.session_id, "m1", text, trace_context=trace_context)
        run_id = reply.accepted.run_id
        done = await chat.wait_completed(session.session_id, run_id)
        assert done.run_completed.finish_reason == pb.FINISH_REASON_STOP
        await chat.close()
        return run_id


def by_name(spans, prefix):
    found = [s for s in spans if s.name.startswith(prefix)]
    assert found, f"no span named {prefix}*: {[s.name for s in spans]}"
    return found


async def test_one_trace_from_the_client_span_down_to_each_tool_call(
    tmp_path, monkeypatch, receiver_grpc
):
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_grpc.endpoint,
    }
    service, metrics_at = start_traced_service(tmp_path, monkeypatch, env)
    try:
        traceparent, trace_id, client_span = new_traceparent()
        run_id = await run_message(
            service.address, "calc 6 * 7\ncalc 1 / 0", {"traceparent": traceparent}
        )
        names = ("invoke_agent", "chat ", "execute_tool calculator")

        def complete(spans):
            mine = [s for s in spans if s.trace_id == trace_id]
            tools = [s for s in mine if s.name.startswith("execute_tool")]
            models = [s for s in mine if s.name.startswith("chat ")]
            return (
                len(tools) == 2
                and len(models) == 2
                and any(s.name.startswith(names[0]) for s in mine)
            )

        receiver_grpc.store.wait_for(complete)
        spans = receiver_grpc.store.trace(trace_id)
        assert {s.service for s in spans} == {"agent_service"}
        (run,) = by_name(spans, "invoke_agent")
        assert run.parent_span_id == client_span  # the message's context is the run's parent
        assert run.attributes["agent_relay.run.id"] == run_id
        assert run.attributes["agent_relay.run.outcome"] == "stop"
        assert run.status_code == STATUS_UNSET
        models = by_name(spans, "chat ")
        assert all(m.parent_span_id == run.span_id for m in models)
        assert all(m.kind == SPAN_KIND_CLIENT for m in models)
        first = models[0].attributes
        assert first["gen_ai.operation.name"] == "chat"
        assert first["gen_ai.provider.name"] == "demo"
        assert first["gen_ai.request.model"]
        assert first["gen_ai.response.time_to_first_chunk"] >= 0
        assert first["gen_ai.response.finish_reasons"] == ("tool_calls",)
        assert first["gen_ai.usage.input_tokens"] > 0 and first["gen_ai.usage.output_tokens"] > 0
        tools = by_name(spans, "execute_tool calculator")
        assert all(t.parent_span_id == run.span_id for t in tools)
        outcomes = sorted(t.attributes["agent_relay.tool.outcome"] for t in tools)
        assert outcomes == ["completed", "failed"]
        assert all(t.attributes["gen_ai.tool.call.id"] for t in tools)
        # a tool's refusal (division by zero) is an answer, not a fault of the service
        assert all(t.status_code == STATUS_UNSET for t in tools)
        # the unary call got an rpc span, child of the context sent in its metadata
        (create,) = [s for s in spans if s.name.endswith("AgentService/CreateSession")]
        assert create.parent_span_id == client_span and create.kind == SPAN_KIND_SERVER
        assert create.name == "agent_relay.v1.AgentService/CreateSession"  # no leading slash
        assert create.attributes["rpc.system.name"] == "grpc"
        (get,) = [s for s in spans if s.name.endswith("AgentService/GetSession")]
        assert get.status_code == STATUS_UNSET  # a refused request is not a server fault
        # no span for the long-lived Chat stream, nor for health checks polled all day
        assert not [s for s in receiver_grpc.store.spans if s.name.endswith("/Chat")]
        assert not [s for s in receiver_grpc.store.spans if "Health" in s.name]

        # the service's JSON log line about the run carries the run span's ids
        (ended,) = await run_log_lines(service, run_id)
        assert ended["message"] == f"run {run_id} ended: stop" and ended["level"] == "INFO"
        assert (ended["trace_id"], ended["span_id"]) == (trace_id, run.span_id)

        samples = scrape(metrics_at)
        assert value(samples, "agent_relay_runs_total", outcome="stop") == 1
        assert value(samples, "agent_relay_run_duration_seconds_count", outcome="stop") == 1
        assert value(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == 2
        tool = "gen_ai_tool_name"
        calc = {tool: "calculator"}
        assert (
            value(samples, "agent_relay_tool_duration_seconds_count", **calc, outcome="completed")
            == 1
        )
        assert (
            value(samples, "agent_relay_tool_duration_seconds_count", **calc, outcome="failed") == 1
        )
        create_ok = {"rpc_method": "agent_relay.v1.AgentService/CreateSession"}
        assert (
            value(
                samples,
                "rpc_server_call_duration_seconds_count",
                **create_ok,
                rpc_response_status_code="OK",
            )
            == 1
        )
        get_refused = {
            "rpc_method": "agent_relay.v1.AgentService/GetSession",
            "rpc_response_status_code": "INVALID_ARGUMENT",
        }
        assert value(samples, "rpc_server_call_duration_seconds_count", **get_refused) == 1
        chat = {"rpc_method": "agent_relay.v1.AgentService/Chat"}
        # join + send received; the stream ended when the client closed it
        assert value(samples, "rpc_server_messages_total", **chat, rpc_message_type="RECEIVED") == 2
        assert value(samples, "rpc_server_call_duration_seconds_count", **chat) == 1
    finally:
        assert service.stop() == 0


async def test_spans_go_over_otlp_http_and_a_failed_run_is_an_error(tmp_path, monkeypatch):
    receiver = OtlpHttpReceiver()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "agent-under-test",
    }
    service, metrics_at = start_traced_service(tmp_path, monkeypatch, env)
    try:
        traceparent, trace_id, client_span = new_traceparent()
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = await joined_session(stub)
            reply = await chat.send(
                session, "m1", "/fail", trace_context={"traceparent": traceparent}
            )
            done = await chat.wait_completed(session, reply.accepted.run_id)
            assert done.run_completed.finish_reason == pb.FINISH_REASON_ERROR
            await chat.close()
        receiver.store.wait_for(
            lambda spans: any(
                s.trace_id == trace_id and s.name.startswith("invoke_agent") for s in spans
            )
        )
        spans = receiver.store.trace(trace_id)
        assert {s.service for s in spans} == {"agent-under-test"}
        (run,) = by_name(spans, "invoke_agent")
        assert run.parent_span_id == client_span
        assert run.status_code == STATUS_ERROR
        (model,) = by_name(spans, "chat ")
        assert model.status_code == STATUS_ERROR
        assert model.attributes["error.type"] == "model_error"
        samples = scrape(metrics_at)
        assert value(samples, "agent_relay_runs_total", outcome="error") == 1
        assert value(samples, "agent_relay_runs_total", outcome="stop") == 0
    finally:
        assert service.stop() == 0
        receiver.stop()


async def test_with_nothing_set_nothing_is_exported_and_metrics_still_count(
    tmp_path, monkeypatch, receiver_grpc
):
    for key in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_METRICS_EXPORTER"):
        monkeypatch.delenv(key, raising=False)
    service, metrics_at = start_traced_service(tmp_path, monkeypatch, {})
    try:
        traceparent, trace_id, client_span = new_traceparent()
        run_id = await run_message(service.address, "calc 2 + 2", {"traceparent": traceparent})
        # with tracing off the log line still names the client's trace
        (ended,) = await run_log_lines(service, run_id)
        assert (ended["trace_id"], ended["span_id"]) == (trace_id, client_span)
        samples = scrape(metrics_at)
        assert value(samples, "agent_relay_runs_total", outcome="stop") == 1
        assert value(samples, "agent_relay_tool_duration_seconds_count", outcome="completed") == 1
    finally:
        assert service.stop() == 0
    assert receiver_grpc.store.requests == 0


async def test_metrics_are_also_pushed_over_otlp_when_asked(tmp_path, monkeypatch, receiver_grpc):
    env = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_grpc.endpoint,
        "OTEL_TRACES_EXPORTER": "none",
    }
    service, _ = start_traced_service(tmp_path, monkeypatch, env)
    try:
        await run_message(service.address, "calc 3 * 3", {})
        deadline = time.monotonic() + scaled(15)
        while receiver_grpc.metrics.latest("agent_relay.runs", outcome="stop") is None:
            assert time.monotonic() < deadline, "no run count was pushed"
            await asyncio.sleep(0.1)
        assert receiver_grpc.metrics.latest("agent_relay.runs", outcome="stop") == 1
        tool = receiver_grpc.metrics.latest(
            "agent_relay.tool.duration", outcome="completed", **{"gen_ai.tool.name": "calculator"}
        )
        assert tool == 1
    finally:
        assert service.stop() == 0
    assert receiver_grpc.store.requests == 0  # OTEL_TRACES_EXPORTER=none: no spans
