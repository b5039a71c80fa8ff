"""relay_shared's telemetry without sockets: exporter choice, JSON logs, span rules, metrics."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from relay_shared.agent_telemetry import AgentTelemetry
from relay_shared.edge_telemetry import EdgeTelemetry
from relay_shared.telemetry import (
    JsonFormatter,
    Telemetry,
    configure_json_logging,
    metric_exporter_names,
    parse_listen,
    setup_telemetry,
    trace_exporter_names,
)

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
)
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


def traced() -> tuple[Telemetry, InMemorySpanExporter]:
    """Telemetry whose spans land in memory, with a private Prometheus registry."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    return Telemetry("test", meter_provider, registry, tracer_provider), exporter


def samples(telemetry: Telemetry) -> dict[tuple[str, tuple], float]:
    text = telemetry.metrics_text()[0].decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if not k.startswith("otel")))
            out[(s.name, labels)] = s.value
    return out


# -- which exporters ---------------------------------------------------------------------


def test_nothing_set_exports_nothing():
    assert trace_exporter_names() == []
    assert metric_exporter_names() == []
    assert not setup_telemetry("t", install_global=False).tracing


def test_an_otlp_endpoint_alone_means_otlp_over_grpc(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert trace_exporter_names() == ["otlp_proto_grpc"]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert trace_exporter_names() == ["otlp_proto_http"]


def test_exporters_are_named_as_the_sdk_names_them(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    assert trace_exporter_names() == ["console", "otlp_proto_grpc"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert trace_exporter_names() == []
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus,console")
    assert metric_exporter_names() == ["console"]  # /metrics is served by the process itself


def test_sdk_disabled_wins(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert trace_exporter_names() == []


def test_console_exporting_turns_tracing_on(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    telemetry = setup_telemetry("t", install_global=False)
    try:
        assert telemetry.tracing
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("variables", "named", "tracing"),
    [
        ({"OTEL_TRACES_EXPORTER": "no-such-exporter"}, "no-such-exporter", False),
        ({"OTEL_TRACES_EXPORTER": "console,no-such-exporter"}, "no-such-exporter", True),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "pigeon"},
            "pigeon",
            False,
        ),
        ({"OTEL_METRICS_EXPORTER": "no-such-metrics"}, "no-such-metrics", False),
    ],
)
def test_an_unknown_exporter_is_one_error_line_and_the_process_goes_on(
    monkeypatch, caplog, variables, named, tracing
):
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level(logging.WARNING):
        telemetry = setup_telemetry("t", install_global=False)
    try:
        assert telemetry.tracing is tracing  # the exporters that exist still run
    finally:
        telemetry.shutdown()
    (line,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.levelno == logging.ERROR and named in line.getMessage()
    assert line.exc_info is None


def test_parse_listen():
    assert parse_listen("") is None
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    with pytest.raises(ValueError):
        parse_listen("9464x")


# -- logs --------------------------------------------------------------------------------


def test_a_log_line_inside_a_span_carries_its_ids_and_outside_none():
    telemetry, _ = traced()
    record = logging.makeLogRecord({"msg": "hello %s", "args": ("world",), "levelname": "INFO"})
    outside = json.loads(JsonFormatter().format(record))
    assert outside["message"] == "hello world" and "trace_id" not in outside
    with telemetry.tracer("t").start_as_current_span("work") as span:
        inside = json.loads(JsonFormatter().format(record))
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")


def test_configured_logging_writes_json_at_the_configured_level():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level  # pytest's own capture handlers live there
    configure_json_logging("warning", stream)
    try:
        logging.getLogger("x").info("hidden")
        logging.getLogger("x").warning("shown", extra={"session_id": "s1"})
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["message"] == "shown"
    assert entry["session_id"] == "s1" and entry["logger"] == "x"
    with pytest.raises(ValueError):
        configure_json_logging("LOUD")


# -- the edge's message span and counters ------------------------------------------------


def test_the_message_span_is_a_child_of_the_frames_traceparent_and_passes_itself_on():
    telemetry, exporter = traced()
    edge = EdgeTelemetry(telemetry)
    with edge.message(TRACEPARENT, "k=v", session_id="s1", message_id="m1") as message:
        message.accepted("r1", False)
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == PARENT_TRACE
    assert format(span.parent.span_id, "016x") == PARENT_SPAN
    assert span.attributes["agent_relay.run.id"] == "r1"
    own = format(span.context.span_id, "016x")
    assert message.trace_context["traceparent"] == f"00-{PARENT_TRACE}-{own}-01"
    assert message.trace_context["tracestate"] == "k=v"


def test_without_a_traceparent_the_edge_starts_the_trace_and_only_faults_are_errors():
    telemetry, exporter = traced()
    edge = EdgeTelemetry(telemetry)
    with edge.message(None, None, session_id="s1", message_id="m1") as message:
        message.refused("rate_limited")
    with edge.message(None, None, session_id="s1", message_id="m2") as message:
        message.refused("upstream_unavailable")
    limited, unavailable = exporter.get_finished_spans()
    assert limited.parent is None
    assert limited.status.status_code is StatusCode.UNSET
    assert unavailable.status.status_code is StatusCode.ERROR


def test_with_tracing_off_the_frames_context_passes_through():
    edge = EdgeTelemetry(setup_telemetry("t", install_global=False))
    with edge.message(TRACEPARENT, None, session_id="s", message_id="m") as message:
        assert message.trace_context == {"traceparent": TRACEPARENT}
    with edge.message(None, "k=v", session_id="s", message_id="m") as message:
        assert message.trace_context == {}


def test_edge_counters_show_on_metrics():
    telemetry, _ = traced()
    edge = EdgeTelemetry(telemetry)
    for size in (10, 20):
        edge.received(size)
    edge.sent(7)
    edge.rate_limited("frames")
    edge.gauge("agent_relay.edge.rooms", "rooms", lambda: 4)
    got = samples(telemetry)
    assert got[("agent_relay_edge_frames_total", (("direction", "received"),))] == 2
    assert got[("agent_relay_edge_frames_total", (("direction", "sent"),))] == 1
    assert got[("agent_relay_edge_traffic_bytes_total", (("direction", "received"),))] == 30
    assert got[("agent_relay_edge_rate_limited_total", (("limit", "frames"),))] == 1
    assert got[("agent_relay_edge_rooms", ())] == 4


# -- the agent's spans -------------------------------------------------------------------


class Outcome:
    def __init__(self, status: str, code: str = "") -> None:
        self.status, self.code = status, code


async def test_run_model_and_tool_spans_hang_below_the_messages_context():
    telemetry, exporter = traced()
    agent = AgentTelemetry(telemetry)

    async def tool() -> Outcome:
        return Outcome("failed", "invalid_arguments")

    with agent.run(
        {"traceparent": TRACEPARENT}, run_id="r1", session_id="s1", message_id="m1"
    ) as run:
        with agent.model_call(provider="demo", model="demo", step=0) as call:
            call.saw_output()
            call.finished("tool_calls", 12, 3)
        await asyncio.create_task(agent.tool_call(tool_name="calc", call_id="c1", run=tool()))
        run.ended("stop")
    model, tool_span, run_span = exporter.get_finished_spans()
    assert format(run_span.parent.span_id, "016x") == PARENT_SPAN
    assert model.parent.span_id == run_span.context.span_id
    assert tool_span.parent.span_id == run_span.context.span_id
    assert model.attributes["gen_ai.usage.input_tokens"] == 12
    assert model.attributes["gen_ai.response.time_to_first_chunk"] >= 0
    assert tool_span.attributes["agent_relay.tool.outcome"] == "failed"
    assert tool_span.status.status_code is StatusCode.UNSET  # bad arguments: not our fault
    assert run_span.status.status_code is StatusCode.UNSET
    got = samples(telemetry)
    assert got[("agent_relay_runs_total", (("outcome", "stop"),))] == 1
    key = (("gen_ai_tool_name", "calc"), ("outcome", "failed"))
    assert got[("agent_relay_tool_duration_seconds_count", key)] == 1


def test_a_failed_model_call_and_run_are_errors_but_a_cancel_is_not():
    telemetry, exporter = traced()
    agent = AgentTelemetry(telemetry)

    class ModelError(Exception):
        code = "model_error"

    with agent.run({}, run_id="r1", session_id="s1", message_id="m1") as run:
        with pytest.raises(ModelError), agent.model_call(provider="d", model="d", step=0):
            raise ModelError("down")
        with (
            pytest.raises(asyncio.CancelledError),
            agent.model_call(provider="d", model="d", step=1),
        ):
            raise asyncio.CancelledError
        run.ended("error", "model_error", "down")
    failed, cancelled, run_span = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "model_error"
    assert cancelled.status.status_code is StatusCode.UNSET
    assert run_span.status.status_code is StatusCode.ERROR
    assert run_span.parent is None
