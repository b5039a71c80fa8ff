"""The agent service's spans and metrics: one run, each model call, each tool call.

A run's span continues the trace of the message that started it: its parent is
the W3C context the message carried (`SendMessage.trace_context`, one per
message because a Chat stream multiplexes many sessions and messages, so the
stream's own gRPC metadata cannot say which trace a message belongs to). Below
it hang a span per model call (`chat <model>`, gen_ai.* attributes: provider,
request and response model, response id, server address and port, finish
reasons, tokens, `gen_ai.response.time_to_first_chunk`) and a span per tool call
(`execute_tool <name>`, outcome). With content capture on
(`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`, see
relay_shared.content_telemetry) they also carry the messages, tool arguments
and results.

Span status is ERROR only for faults of the service (a run that ended in
`error`, a model call that failed, a tool that crashed); a cancel, a timeout
of a tool or bad tool arguments are outcomes, recorded as attributes.

Metrics (shown on /metrics as agent_relay_runs_total and so on):
`agent_relay.runs` by outcome, `agent_relay.run.duration`, the GenAI client
metrics `gen_ai.client.operation.duration`, `gen_ai.client.token.usage` and
`gen_ai.client.operation.time_to_first_chunk` (the names of semantic
conventions v1.41, the last release; the GenAI repository's unreleased main
renames the inference ones `gen_ai.client.inference.*`), and
`agent_relay.tool.duration` by tool and outcome. The model metrics carry the
span's attributes (provider, request and response model, server address and
port, error.type) and are recorded in the span's context, so their exemplars
link to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from relay_shared import content_telemetry as content
from relay_shared.content_telemetry import MessageLike, ToolCallLike
from relay_shared.telemetry import Telemetry

SCOPE = "agent_relay.agent"
# seconds: time to first token and model calls (fast local models to slow remote ones)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                     10.0, 20.0, 60.0)  # fmt: skip
# seconds: whole runs and tool calls (up to the run timeout)
LONG_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                  600.0)  # fmt: skip
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
# run outcomes that are the service's fault (span status ERROR)
FAULT_OUTCOMES = frozenset({"error"})
# tool failure codes that are the service's fault; the rest (bad arguments,
# timeouts, a tool's own refusal such as a division by zero) are answers the
# model reads. The executor reports a tool's crash as "error" too, the same code
# as a refusal, so only a dedicated "internal" code can mark a crash.
TOOL_FAULT_CODES = frozenset({"internal"})


class ToolResult(Protocol):
    """What a tool call returns (agent_service.tools.executor.ToolOutcome)."""

    @property
    def status(self) -> str: ...
    @property
    def code(self) -> str: ...


class ProviderLike(Protocol):
    """A model provider as telemetry sees it: its `name`; optionally `model`, and
    `server_address` (HOST, PORT) or a `base_url` for server.address / server.port."""

    @property
    def name(self) -> str: ...


def provider_server(provider: object) -> tuple[str, int | None]:
    """server.address and server.port of a provider: its `server_address` (host, port),
    else its base URL's host and port (the scheme's default port when the URL names
    none), else its name (an in-process model such as `demo`)."""
    declared = getattr(provider, "server_address", None)
    if isinstance(declared, tuple) and len(declared) == 2 and declared[0]:
        host, port = declared
        return str(host), int(port) if isinstance(port, int) else None
    base_url = getattr(provider, "base_url", None)
    if base_url is None:
        base_url = getattr(getattr(provider, "_client", None), "base_url", None)
    if base_url:
        parts = urlsplit(str(base_url))
        if parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            return parts.hostname, parts.port or default
    return str(getattr(provider, "name", "") or "unknown"), None


# the run being traced in this task (model calls add to its captured input and output)
_current_run: contextvars.ContextVar[RunTrace | None] = contextvars.ContextVar(
    "agent_relay_run_trace", default=None
)


class ModelCall:
    """One model call's span and timings; the agent loop reports each streamed item
    with `saw(item)` (or `saw_output()` and `finished()`)."""

    def __init__(
        self,
        span: trace.Span,
        attributes: dict[str, Any],
        owner: AgentTelemetry,
        capture: bool,
    ) -> None:
        self.span = span
        self.attributes = attributes
        self.started = time.perf_counter()
        self.first_chunk_s: float | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.finish_reason = ""
        self._owner = owner
        self._capture = capture
        self._text: list[str] = []
        self._calls: list[ToolCallLike] = []

    def saw(self, item: object) -> None:
        """One item of the model's stream: text, a tool call, or the step's end
        (StepFinished: reason, usage, and `response_model` / `response_id` when the
        provider reports them)."""
        self.saw_output()
        text = getattr(item, "text", None)
        if isinstance(text, str):
            if self._capture:
                self._text.append(text)
            return
        if hasattr(item, "arguments_json"):
            if self._capture:
                self._calls.append(item)  # type: ignore[arg-type]
            return
        usage = getattr(item, "usage", None)
        if hasattr(item, "reason"):
            self.finished(
                str(getattr(item, "reason", "")),
                int(getattr(usage, "input_tokens", 0) or 0),
                int(getattr(usage, "output_tokens", 0) or 0),
                response_model=str(getattr(item, "response_model", "") or ""),
                response_id=str(getattr(item, "response_id", "") or ""),
            )

    def saw_text(self, text: str) -> None:
        """saw() of a piece of text: the agent loop's path for every chunk."""
        if self.first_chunk_s is None:
            self.saw_output()
        if self._capture:
            self._text.append(text)

    def saw_output(self) -> None:
        """The first chunk of the response arrived (the first call sets time to first chunk)."""
        if self.first_chunk_s is None:
            self.first_chunk_s = time.perf_counter() - self.started
            self.span.set_attribute("gen_ai.response.time_to_first_chunk", self.first_chunk_s)

    def finished(
        self,
        reason: str,
        input_tokens: int,
        output_tokens: int,
        *,
        response_model: str = "",
        response_id: str = "",
    ) -> None:
        """The step's end: why it stopped, the tokens it used, and the response's model
        and id when the provider names them."""
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.finish_reason = reason
        span = self.span
        span.set_attribute("gen_ai.response.finish_reasons", (reason,))
        span.set_attribute("gen_ai.usage.input_tokens", self.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", self.output_tokens)
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
            self.attributes["gen_ai.response.model"] = response_model
        if response_id:
            span.set_attribute("gen_ai.response.id", response_id)
        if self._capture:
            text = "".join(self._text)
            span.set_attributes(content.model_output_attributes(text, self._calls, reason))
            run = _current_run.get()
            if run is not None and text:
                run.output_text.append(text)


class RunTrace:
    """One run's span. `ended()` records its outcome; the span ends with the `with`."""

    def __init__(self, span: trace.Span, owner: AgentTelemetry) -> None:
        self.span = span
        self.started = time.perf_counter()
        self._owner = owner
        self.input_text: str | None = None  # with capture on: the user's message
        self.output_text: list[str] = []  # with capture on: every step's text

    def ended(self, outcome: str, error_code: str = "", message: str = "") -> None:
        """The run's finish reason (stop, cancelled, error, interrupted, max_steps)."""
        self.span.set_attribute("agent_relay.run.outcome", outcome)
        if error_code:
            self.span.set_attribute("error.type", error_code)
        if outcome in FAULT_OUTCOMES:
            self.span.set_status(Status(StatusCode.ERROR, message or error_code))
        if self._owner.capture_content:
            if self.input_text is not None:
                self.span.set_attributes(content.text_attributes("input", self.input_text))
            self.span.set_attributes(content.text_attributes("output", "".join(self.output_text)))
        self._owner.count_run(outcome)
        self._owner.run_duration.record(time.perf_counter() - self.started, {"outcome": outcome})


class AgentTelemetry:
    """Tracer and instruments of the agent loop. `AgentTelemetry(None)`: the global API
    providers (no-op unless a process installed its own). `capture_content` (default:
    the OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT variable) puts messages,
    tool arguments and results on the spans."""

    def __init__(self, telemetry: Telemetry | None, *, capture_content: bool | None = None) -> None:
        if telemetry is None:
            self.tracer = trace.get_tracer(SCOPE)
            meter = metrics.get_meter(SCOPE)
        else:
            self.tracer = telemetry.tracer(SCOPE)
            meter = telemetry.meter(SCOPE)
        self.capture_content = (
            content.capture_message_content() if capture_content is None else capture_content
        )
        # a plain int per outcome, read only when metrics are collected: a counter's add
        # through the SDK cost about 13 us per run (py-spy), for the same series
        self._run_counts: dict[str, list[int]] = {}
        meter.create_observable_counter(
            "agent_relay.runs",
            callbacks=[self._observe_runs],
            unit="{run}",
            description="Runs ended, by outcome.",
        )
        self.run_duration = meter.create_histogram(
            "agent_relay.run.duration",
            unit="s",
            description="Runs from start to completion, by outcome.",
            explicit_bucket_boundaries_advisory=LONG_BUCKETS_S,
        )
        self.time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="From a model call's request to the first chunk of its streamed response.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self.model_duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Model calls from start to end.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens per model call, by type (input, output).",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.tool_duration = meter.create_histogram(
            "agent_relay.tool.duration",
            unit="s",
            description="Tool calls from start to end, by tool and outcome.",
            explicit_bucket_boundaries_advisory=LONG_BUCKETS_S,
        )

    def count_run(self, outcome: str) -> None:
        """One more run ended with `outcome` (agent_relay.runs)."""
        cell = self._run_counts.get(outcome)
        if cell is None:
            cell = self._run_counts.setdefault(outcome, [0])
        cell[0] += 1

    def _observe_runs(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(cell[0], {"outcome": outcome})
            for outcome, cell in list(self._run_counts.items())
        ]

    @contextlib.contextmanager
    def run(
        self,
        trace_context: Mapping[str, str],
        *,
        run_id: str,
        session_id: str,
        message_id: str,
        agent_name: str = "agent-relay",
    ) -> Iterator[RunTrace]:
        """The run's span, current inside the `with`, child of the message's context."""
        parent = extract(dict(trace_context)) if trace_context else None
        with self.tracer.start_as_current_span(
            f"invoke_agent {agent_name}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": agent_name,
                "gen_ai.conversation.id": session_id,
                "agent_relay.run.id": run_id,
                "agent_relay.message.id": message_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            run_trace = RunTrace(span, self)
            token = _current_run.set(run_trace)
            try:
                yield run_trace
            finally:
                _current_run.reset(token)

    @contextlib.contextmanager
    def model_call(
        self,
        *,
        provider: ProviderLike | str,
        step: int,
        model: str = "",
        conversation: Sequence[MessageLike] = (),
    ) -> Iterator[ModelCall]:
        """A span for one model call to `provider` (a provider object, or its name), current
        inside the `with`; a raised error marks it. `conversation` is what the model reads
        (captured only with content capture on)."""
        if isinstance(provider, str):
            name, address, port = provider, provider, None
            model = model or provider
        else:
            name = provider.name
            model = model or str(getattr(provider, "model", "") or name)
            address, port = provider_server(provider)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": name,
            "gen_ai.request.model": model,
            "server.address": address,
        }
        if port is not None:
            attributes["server.port"] = port
        span_attributes = {**attributes, "gen_ai.request.stream": True, "agent_relay.step": step}
        if self.capture_content:
            span_attributes.update(content.model_input_attributes(conversation))
            run = _current_run.get()
            if run is not None and run.input_text is None:
                run.input_text = _last_user_text(conversation)
        with self.tracer.start_as_current_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes=span_attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            call = ModelCall(span, attributes, self, self.capture_content)
            error_type = ""
            try:
                yield call
            except GeneratorExit:
                raise
            except BaseException as exc:
                code = getattr(exc, "code", "")
                error_type = code if isinstance(code, str) and code else type(exc).__name__
                if not _is_cancel(exc):
                    span.set_attribute("error.type", error_type)
                    span.set_status(Status(StatusCode.ERROR, str(exc) or error_type))
                raise
            finally:
                self._record_model_metrics(call, error_type)

    def _record_model_metrics(self, call: ModelCall, error_type: str) -> None:
        """The model call's metrics, in its span's context (for the exemplars)."""
        # the span's context only for a span that records (its exemplars link to it)
        in_span = trace.set_span_in_context(call.span) if call.span.is_recording() else None
        attributes = call.attributes
        done = {**attributes, "error.type": error_type} if error_type else attributes
        self.model_duration.record(time.perf_counter() - call.started, done, context=in_span)
        if call.first_chunk_s is not None:
            self.time_to_first_chunk.record(call.first_chunk_s, attributes, context=in_span)
        if call.input_tokens or call.output_tokens:
            for kind, count in (("input", call.input_tokens), ("output", call.output_tokens)):
                self.token_usage.record(
                    count, {**attributes, "gen_ai.token.type": kind}, context=in_span
                )

    async def tool_call(
        self,
        *,
        tool_name: str,
        call_id: str,
        run: Awaitable[ToolResult],
        arguments_json: str = "",
    ) -> ToolResult:
        """Await `run` (a tool call that never raises) inside its span; record its outcome.
        With content capture on, the span also carries `arguments_json` and the result."""
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"execute_tool {tool_name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool_name,
                "gen_ai.tool.call.id": call_id,
                "gen_ai.tool.type": "function",
            },
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            outcome = await run
            span.set_attribute("agent_relay.tool.outcome", outcome.status)
            if outcome.code:
                span.set_attribute("error.type", outcome.code)
            if outcome.status == "failed" and outcome.code in TOOL_FAULT_CODES:
                span.set_status(Status(StatusCode.ERROR, f"tool failed: {outcome.code}"))
            if self.capture_content:
                result = str(getattr(outcome, "result", ""))
                span.set_attributes(content.tool_attributes(arguments_json, result))
            self.tool_duration.record(
                time.perf_counter() - started,
                {"gen_ai.tool.name": tool_name, "outcome": outcome.status},
                context=trace.set_span_in_context(span),
            )
        return outcome


def _last_user_text(conversation: Sequence[MessageLike]) -> str:
    return next((m.content for m in reversed(conversation) if m.role == "user"), "")


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)
