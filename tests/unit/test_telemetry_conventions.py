"""The conventions' names without sockets: GenAI content capture, provider servers, exemplars
in OpenMetrics, edge refusal spans, gRPC peer parsing."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agent_service.providers.base import ChatMessage, StepFinished, TextDelta, ToolCallRequested
from relay_shared import content_telemetry as content
from relay_shared.agent_telemetry import AgentTelemetry, provider_server
from relay_shared.edge_telemetry import EdgeTelemetry
from relay_shared.grpc_telemetry import peer_attributes, split_target
from relay_shared.prometheus_telemetry import ExemplarPrometheusReader
from relay_shared.telemetry import JsonFormatter, Telemetry, setup_telemetry
from ws_edge.frames import decode_client_frame

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CONVERSATION = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "calc 6 * 7"),
    ChatMessage(
        "assistant", "Calling calculator.", (ToolCallRequested("c1", "calculator", '{"x": 1}'),)
    ),
    ChatMessage("tool", "42", call_id="c1", name="calculator"),
)


@pytest.fixture(autouse=True)
def no_capture_variable(monkeypatch):
    monkeypatch.delenv(content.CAPTURE_VARIABLE, raising=False)


def traced() -> tuple[Telemetry, InMemorySpanExporter]:
    """Telemetry whose spans land in memory and whose metrics keep exemplars."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[ExemplarPrometheusReader(registry)])
    return Telemetry("test", meter_provider, registry, tracer_provider), exporter


# -- the message schema ----------------------------------------------------------------------


def test_the_conversation_becomes_the_conventions_messages():
    assert content.input_messages(CONVERSATION) == [
        {"role": "user", "parts": [{"type": "text", "content": "calc 6 * 7"}]},
        {
            "role": "assistant",
            "parts": [
                {"type": "text", "content": "Calling calculator."},
                {"type": "tool_call", "id": "c1", "name": "calculator", "arguments": {"x": 1}},
            ],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]},
    ]
    assert content.system_instructions(CONVERSATION) == [{"type": "text", "content": "Be brief."}]
    call = ToolCallRequested("c2", "python", "not json")
    message = content.output_message("", [call], "tool_calls")
    assert message["finish_reason"] == "tool_call"
    assert message["parts"] == [
        {"type": "tool_call", "id": "c2", "name": "python", "arguments": "not json"}
    ]


def test_capture_is_on_only_for_the_standard_variable_set_to_true(monkeypatch):
    assert not content.capture_message_content()
    monkeypatch.setenv(content.CAPTURE_VARIABLE, "TRUE")
    assert content.capture_message_content()
    monkeypatch.setenv(content.CAPTURE_VARIABLE, "1")
    assert not content.capture_message_content()


# -- the agent's spans ------------------------------------------------------------------------


class Outcome:
    def __init__(self, status: str, result: str, code: str = "") -> None:
        self.status, self.result, self.code = status, result, code


class Provider:
    name = "openai"
    model = "gpt-test"
    base_url = "http://127.0.0.1:8123/v1"


async def traced_run(agent: AgentTelemetry) -> None:
    async def tool() -> Outcome:
        return Outcome("completed", "42")

    with agent.run({}, run_id="r1", session_id="s1", message_id="m1") as run:
        with agent.model_call(provider=Provider(), step=0, conversation=CONVERSATION) as call:
            for item in (
                TextDelta("The answer"),
                TextDelta(" is 42."),
                StepFinished("stop", response_model="gpt-test-0613", response_id="chatcmpl-9"),
            ):
                call.saw(item)
        await asyncio.create_task(
            agent.tool_call(tool_name="calc", call_id="c1", run=tool(), arguments_json='{"x": 1}')
        )
        run.ended("stop")


async def test_with_capture_on_the_spans_carry_messages_arguments_and_results():
    telemetry, exporter = traced()
    await traced_run(AgentTelemetry(telemetry, capture_content=True))
    model, tool, run = exporter.get_finished_spans()
    attributes = model.attributes
    assert attributes["gen_ai.response.model"] == "gpt-test-0613"
    assert attributes["gen_ai.response.id"] == "chatcmpl-9"
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", 8123)
    assert json.loads(attributes["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "Be brief."}
    ]
    assert json.loads(attributes["gen_ai.input.messages"])[0]["role"] == "user"
    (output,) = json.loads(attributes["gen_ai.output.messages"])
    assert output == {
        "role": "assistant",
        "parts": [{"type": "text", "content": "The answer is 42."}],
        "finish_reason": "stop",
    }
    assert (attributes["output.value"], attributes["output.mime_type"]) == (
        "The answer is 42.",
        "text/plain",
    )
    assert tool.attributes["gen_ai.tool.call.arguments"] == '{"x": 1}'
    assert tool.attributes["gen_ai.tool.call.result"] == "42"
    assert run.attributes["input.value"] == "calc 6 * 7"
    assert run.attributes["output.value"] == "The answer is 42."


async def test_with_capture_off_no_span_carries_content():
    telemetry, exporter = traced()
    await traced_run(AgentTelemetry(telemetry))
    for span in exporter.get_finished_spans():
        keys = set(span.attributes)
        assert not keys & {
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.system_instructions",
            "gen_ai.tool.call.arguments",
            "gen_ai.tool.call.result",
            "input.value",
            "output.value",
        }, span.name
    model = exporter.get_finished_spans()[0]
    assert model.attributes["gen_ai.response.model"] == "gpt-test-0613"  # not content


def provider(name: str, **attributes: object) -> object:
    return type("Provider", (), {"name": name, **attributes})()


@pytest.mark.parametrize(
    ("provider", "server"),
    [
        (provider("demo"), ("demo", None)),
        (provider("openai", server_address=("api.x.test", 8443)), ("api.x.test", 8443)),
        (provider("openai", base_url="https://api.x.test/v1"), ("api.x.test", 443)),
        (provider("openai", base_url="http://[::1]:9000/v1"), ("::1", 9000)),
        (provider("anthropic", _client=provider("c", base_url="http://h:81")), ("h", 81)),
    ],
)
def test_the_server_of_a_provider_is_its_base_urls_host_or_its_name(provider, server):
    assert provider_server(provider) == server


# -- exemplars ---------------------------------------------------------------------------------


def test_openmetrics_histograms_carry_the_exemplar_of_the_span_they_were_measured_in():
    telemetry, _ = traced()
    histogram = telemetry.meter("t").create_histogram(
        "work.duration", unit="s", explicit_bucket_boundaries_advisory=(0.1, 1.0)
    )
    with telemetry.tracer("t").start_as_current_span("work") as span:
        histogram.record(0.5, {"kind": "a"})
    histogram.record(0.05, {"kind": "a"})  # outside a span: no exemplar
    trace_id = format(span.get_span_context().trace_id, "032x")
    body, headers = telemetry.exposition("application/openmetrics-text; version=1.0.0", "gzip")
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    (family,) = [
        f
        for f in text_string_to_metric_families(gzip.decompress(body).decode())
        if f.name == "work_duration_seconds"
    ]
    exemplars = {s.labels["le"]: s.exemplar for s in family.samples if s.name.endswith("_bucket")}
    assert exemplars["0.1"] is None and exemplars["+Inf"] is None
    assert exemplars["1.0"].labels["trace_id"] == trace_id
    assert exemplars["1.0"].value == 0.5
    text, headers = telemetry.exposition()
    assert headers == {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    assert b"work_duration_seconds_bucket" in text and b"trace_id" not in text


def test_exemplars_are_off_with_tracing_off(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    telemetry = setup_telemetry("t", install_global=False)
    histogram = telemetry.meter("t").create_histogram("off.duration", unit="s")
    with TracerProvider().get_tracer("t").start_as_current_span("elsewhere"):
        histogram.record(0.5)
    body, _ = telemetry.exposition("application/openmetrics-text; version=1.0.0")
    telemetry.shutdown()
    assert b"off_duration_seconds_bucket" in body and b"trace_id" not in body


# -- the edge's spans and log lines ------------------------------------------------------------


def test_a_refused_frame_gets_a_span_in_its_trace_with_the_code_as_error_type():
    telemetry, exporter = traced()
    edge = EdgeTelemetry(telemetry)
    frame = decode_client_frame(
        json.dumps(
            {
                "type": "chat:message",
                "session_id": "s1",
                "message_id": "m1",
                "text": "hi",
                "traceparent": TRACEPARENT,
            }
        ),
        max_bytes=10_000,
    )
    edge.refused("not_joined", frame)
    edge.refused("rate_limited")  # a frame refused before it was decoded
    edge.refused("internal", decode_client_frame('{"type": "ping"}', max_bytes=100))
    refused, limited, fault = exporter.get_finished_spans()
    assert refused.name == "chat:message"
    assert format(refused.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert refused.attributes["error.type"] == "not_joined"
    assert refused.attributes["agent_relay.session.id"] == "s1"
    assert refused.status.status_code is StatusCode.UNSET
    assert limited.name == "frame" and limited.parent is None
    assert limited.attributes["error.type"] == "rate_limited"
    assert fault.name == "ping" and fault.status.status_code is StatusCode.ERROR


def test_with_tracing_off_a_frames_log_lines_carry_the_clients_ids():
    edge = EdgeTelemetry(setup_telemetry("t", install_global=False))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.edge.frame")
    logger.addHandler(handler)
    try:
        with edge.message(TRACEPARENT, None, session_id="s", message_id="m"):
            logger.warning("about the frame")
        logger.warning("after it")
    finally:
        logger.removeHandler(handler)
    inside, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["trace_id"] == TRACEPARENT.split("-")[1]
    assert inside["span_id"] == TRACEPARENT.split("-")[2]
    assert "trace_id" not in after


def test_a_chat_message_span_carries_the_text_only_with_capture_on():
    telemetry, exporter = traced()
    with EdgeTelemetry(telemetry, capture_content=True).message(
        None, None, session_id="s", message_id="m", text="hello"
    ):
        pass
    with EdgeTelemetry(telemetry).message(None, None, session_id="s", message_id="m", text="x"):
        pass
    captured, plain = exporter.get_finished_spans()
    assert captured.attributes["input.value"] == "hello"
    assert "input.value" not in plain.attributes


# -- gRPC ---------------------------------------------------------------------------------------


def test_grpc_peers_and_targets_become_network_and_server_attributes():
    assert peer_attributes("ipv4:10.0.0.1:5000") == {
        "network.peer.address": "10.0.0.1",
        "network.peer.port": 5000,
        "network.transport": "tcp",
    }
    assert peer_attributes("ipv6:[::1]:7")["network.peer.address"] == "::1"
    assert peer_attributes("unix:/tmp/s") == {
        "network.peer.address": "/tmp/s",
        "network.transport": "unix",
    }
    assert peer_attributes("") == {}
    assert split_target("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert split_target("dns:///agent:443") == ("agent", 443)
    assert split_target("agent") == ("agent", None)
