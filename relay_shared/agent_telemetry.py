"""The agent service's spans and metrics: one run, each model call, each tool call.

A run's span continues the trace of the message that started it: its parent is
the W3C context the message carried (`SendMessage.trace_context`, one per
message because a Chat stream multiplexes many sessions and messages, so the
stream's own gRPC metadata cannot say which trace a message belongs to). Below
it hang a span per model call (`chat <model>`, gen_ai.* attributes, time to
first token) and a span per tool call (`execute_tool <name>`, outcome).

Span status is ERROR only for faults of the service (a run that ended in
`error`, a model call that failed, a tool that crashed); a cancel, a timeout
of a tool or bad tool arguments are outcomes, recorded as attributes.

Metrics (shown on /metrics as agent_relay_runs_total and so on):
`agent_relay.runs` by outcome, `agent_relay.run.duration`,
`agent_relay.model.time_to_first_token`, `gen_ai.client.operation.duration`,
`gen_ai.client.token.usage`, `agent_relay.tool.duration` by tool and outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator, Mapping
from typing import Protocol

from opentelemetry import metrics, trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

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


class ModelCall:
    """One model call's span and timings; the agent loop reports what it sees."""

    def __init__(self, span: trace.Span, attributes: dict[str, str], owner: AgentTelemetry) -> None:
        self.span = span
        self.attributes = attributes
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self._owner = owner

    def saw_output(self) -> None:
        """The model produced text or a tool call: the first one sets time to first token."""
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
            self.span.set_attribute("agent_relay.time_to_first_token_ms", self.first_token_s * 1e3)
            self._owner.time_to_first_token.record(self.first_token_s, self.attributes)

    def finished(self, reason: str, input_tokens: int, output_tokens: int) -> None:
        """The step's end: why it stopped and the tokens it used."""
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.span.set_attribute("gen_ai.response.finish_reasons", (reason,))
        self.span.set_attribute("gen_ai.usage.input_tokens", self.input_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", self.output_tokens)


class RunTrace:
    """One run's span. `ended()` records its outcome; the span ends with the `with`."""

    def __init__(self, span: trace.Span, owner: AgentTelemetry) -> None:
        self.span = span
        self.started = time.perf_counter()
        self._owner = owner

    def ended(self, outcome: str, error_code: str = "", message: str = "") -> None:
        """The run's finish reason (stop, cancelled, error, interrupted, max_steps)."""
        self.span.set_attribute("agent_relay.run.outcome", outcome)
        if error_code:
            self.span.set_attribute("error.type", error_code)
        if outcome in FAULT_OUTCOMES:
            self.span.set_status(Status(StatusCode.ERROR, message or error_code))
        attributes = {"outcome": outcome}
        self._owner.runs.add(1, attributes)
        self._owner.run_duration.record(time.perf_counter() - self.started, attributes)


class AgentTelemetry:
    """Tracer and instruments of the agent loop. `AgentTelemetry(None)`: the global API
    providers (no-op unless a process installed its own)."""

    def __init__(self, telemetry: Telemetry | None) -> None:
        if telemetry is None:
            self.tracer = trace.get_tracer(SCOPE)
            meter = metrics.get_meter(SCOPE)
        else:
            self.tracer = telemetry.tracer(SCOPE)
            meter = telemetry.meter(SCOPE)
        self.runs = meter.create_counter(
            "agent_relay.runs", unit="{run}", description="Runs ended, by outcome."
        )
        self.run_duration = meter.create_histogram(
            "agent_relay.run.duration",
            unit="s",
            description="Runs from start to completion, by outcome.",
            explicit_bucket_boundaries_advisory=LONG_BUCKETS_S,
        )
        self.time_to_first_token = meter.create_histogram(
            "agent_relay.model.time_to_first_token",
            unit="s",
            description="From a model call's start to its first text or tool call.",
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
            yield RunTrace(span, self)

    @contextlib.contextmanager
    def model_call(self, *, provider: str, model: str, step: int) -> Iterator[ModelCall]:
        """A span for one model call, current inside the `with`; a raised error marks it."""
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
        }
        with self.tracer.start_as_current_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={**attributes, "agent_relay.step": step},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            call = ModelCall(span, attributes, self)
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
                done = {**attributes, "error.type": error_type} if error_type else attributes
                self.model_duration.record(time.perf_counter() - call.started, done)
                if call.input_tokens or call.output_tokens:
                    self.token_usage.record(
                        call.input_tokens, {**attributes, "gen_ai.token.type": "input"}
                    )
                    self.token_usage.record(
                        call.output_tokens, {**attributes, "gen_ai.token.type": "output"}
                    )

    async def tool_call(
        self, *, tool_name: str, call_id: str, run: Awaitable[ToolResult]
    ) -> ToolResult:
        """Await `run` (a tool call that never raises) inside its span; record its outcome."""
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"execute_tool {tool_name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool_name,
                "gen_ai.tool.call.id": call_id,
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
        self.tool_duration.record(
            time.perf_counter() - started,
            {"gen_ai.tool.name": tool_name, "outcome": outcome.status},
        )
        return outcome


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)
