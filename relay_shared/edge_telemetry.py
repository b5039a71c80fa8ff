"""The WebSocket edge's spans and metrics.

Spans: one per `chat:message` frame (`EdgeTelemetry.message()`), a child of the
frame's `traceparent` when it has one (else the root of a new trace). Its
context goes on to the agent in `SendMessage.trace_context`, where the run's
span hangs below it. There is no span for a connection or a room: they live
for hours. With tracing off, the frame's own `traceparent`/`tracestate` pass
through untouched (and are current while the frame is handled), so the
agent's logs and the edge's still name the client's trace.

A frame the edge refuses before it goes anywhere (`not_joined`, `rate_limited`,
`forbidden`, `bad_frame`, ...) gets a short span of its own
(`EdgeTelemetry.refused()`), named for the frame's type (`chat:message`,
`join`, ...; `frame` when it could not be decoded), with `error.type` = the
code; one refused after the agent was asked carries `error.type` on its
`chat:message` span. Status ERROR only for the edge's or the agent's faults.

With `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` a
`chat:message` span also carries the message's text as `input.value`.

Metrics cost the hot path two integer additions per frame: the counters are
plain ints read by OpenTelemetry's observable instruments only when /metrics
is scraped (or a metric exporter collects). Shown in Prometheus format as:

- `agent_relay_edge_frames_total{direction="received"|"sent"}`
- `agent_relay_edge_traffic_bytes_total{direction=...}`
- `agent_relay_edge_rate_limited_total{limit="frames"|"runs"|"connections"}`
- gauges registered with `gauge()`: connections, rooms, send-queue depth, ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from relay_shared.content_telemetry import capture_message_content, text_attributes
from relay_shared.telemetry import Telemetry

log = logging.getLogger("ws_edge.frames")

SCOPE = "agent_relay.edge"
# edge error codes that are faults of the edge or the agent (span status ERROR);
# the rest (bad input, limits, auth) are the client's and leave the status unset
FAULT_CODES = frozenset({"internal", "upstream_unavailable"})


@dataclass
class MessageTrace:
    """One chat:message frame's span. `trace_context` goes into SendMessage.trace_context."""

    trace_context: dict[str, str]
    span: trace.Span | None = None

    def accepted(self, run_id: str, duplicate: bool) -> None:
        """The agent accepted the message: the run it started (or the first one's, if a retry)."""
        if self.span is not None:
            self.span.set_attribute("agent_relay.run.id", run_id)
            self.span.set_attribute("agent_relay.message.duplicate", duplicate)

    def refused(self, code: str, message: str = "") -> None:
        """The message was refused with edge error `code`; only faults mark the span."""
        if self.span is None:
            return
        self.span.set_attribute("error.type", code)
        if code in FAULT_CODES:
            self.span.set_status(Status(StatusCode.ERROR, message or code))


@dataclass
class _Counts:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    rate_limited: dict[str, int] = field(default_factory=dict)


class EdgeTelemetry:
    """The edge's tracer and instruments; see the module docstring.

    Calling rule: the counting methods are synchronous and cheap, for the socket
    read and write loops; `gauge()` is called once per gauge at start-up.
    """

    def __init__(self, telemetry: Telemetry | None, *, capture_content: bool | None = None) -> None:
        """With None: counts are kept but shown nowhere, and no span is made.
        `capture_content` defaults to OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT."""
        self.telemetry = telemetry
        self.tracing = telemetry is not None and telemetry.tracing
        self.tracer = telemetry.tracer(SCOPE) if telemetry is not None else trace.NoOpTracer()
        self.capture_content = (
            capture_message_content() if capture_content is None else capture_content
        )
        self.counts = _Counts()
        self._meter = telemetry.meter(SCOPE) if telemetry is not None else metrics.NoOpMeter(SCOPE)
        self.meter = self._meter  # for the edge's other instruments (HTTP requests)
        self._meter.create_observable_counter(
            "agent_relay.edge.frames",
            callbacks=[self._observe_frames],
            unit="{frame}",
            description="WebSocket frames, by direction (received, sent).",
        )
        self._meter.create_observable_counter(
            "agent_relay.edge.traffic",
            callbacks=[self._observe_bytes],
            unit="By",
            description="WebSocket payload bytes, by direction (received, sent).",
        )
        self._meter.create_observable_counter(
            "agent_relay.edge.rate_limited",
            callbacks=[self._observe_rate_limited],
            unit="{frame}",
            description="Frames refused by a limit, by limit (frames, runs, connections).",
        )

    def metrics_text(self) -> tuple[bytes, str]:
        """The Prometheus exposition of the process's instruments, and its content type."""
        if self.telemetry is None:
            return b"", "text/plain; version=0.0.4; charset=utf-8"
        return self.telemetry.metrics_text()

    def exposition(
        self, accept: str = "", accept_encoding: str = ""
    ) -> tuple[bytes, dict[str, str]]:
        """A /metrics answer negotiated from `Accept` (OpenMetrics with exemplars, or text)
        and `Accept-Encoding` (gzip); an empty body when no telemetry was set up."""
        if self.telemetry is None:
            return b"", {}
        return self.telemetry.exposition(accept, accept_encoding)

    # -- counting (hot path) --------------------------------------------------------------

    def received(self, size: int) -> None:
        """A client frame of `size` bytes arrived (before any check)."""
        counts = self.counts
        counts.frames_in += 1
        counts.bytes_in += size

    def sent(self, size: int) -> None:
        """A frame of `size` bytes was written to a socket."""
        counts = self.counts
        counts.frames_out += 1
        counts.bytes_out += size

    def rate_limited(self, limit: str) -> None:
        """A frame was refused by `limit` (frames, runs, connections)."""
        by_limit = self.counts.rate_limited
        by_limit[limit] = by_limit.get(limit, 0) + 1

    def gauge(
        self, name: str, description: str, read: Callable[[], float], unit: str = "1"
    ) -> None:
        """Report `read()` as gauge `name` whenever metrics are collected."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read())]

        self._meter.create_observable_gauge(
            name, callbacks=[observe], unit=unit, description=description
        )

    def _observe_frames(self, options: CallbackOptions) -> Iterable[Observation]:
        c = self.counts
        return [
            Observation(c.frames_in, {"direction": "received"}),
            Observation(c.frames_out, {"direction": "sent"}),
        ]

    def _observe_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        c = self.counts
        return [
            Observation(c.bytes_in, {"direction": "received"}),
            Observation(c.bytes_out, {"direction": "sent"}),
        ]

    def _observe_rate_limited(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"limit": k}) for k, n in list(self.counts.rate_limited.items())]

    # -- spans ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def message(
        self,
        traceparent: str | None,
        tracestate: str | None,
        *,
        session_id: str,
        message_id: str,
        text: str | None = None,
    ) -> Iterator[MessageTrace]:
        """The span of one chat:message frame, current inside the `with`. `text` (the
        message) goes on the span only with content capture on.

        Yields the MessageTrace whose `trace_context` (W3C `traceparent`, and
        `tracestate` when there is one) the SendMessage must carry.
        """
        carrier = {"traceparent": traceparent} if traceparent else {}
        if tracestate and traceparent:
            carrier["tracestate"] = tracestate
        if not self.tracing:
            if not carrier:
                yield MessageTrace(carrier)
                return
            # the client's ids stay current: the edge's log lines about the frame name them
            token = otel_context.attach(propagate.extract(carrier))
            try:
                yield MessageTrace(carrier)
            finally:
                otel_context.detach(token)
            return
        # no traceparent: a new trace, whatever context the socket's task holds
        parent = propagate.extract(carrier) if carrier else otel_context.Context()
        attributes = {
            "network.protocol.name": "websocket",
            "agent_relay.session.id": session_id,
            "agent_relay.message.id": message_id,
        }
        if self.capture_content and text is not None:
            attributes.update(text_attributes("input", text))
        with self.tracer.start_as_current_span(
            "chat:message",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            outgoing: dict[str, str] = {}
            propagate.inject(outgoing)
            yield MessageTrace(outgoing, span)

    def refused(self, code: str, frame: object | None = None) -> None:
        """A client frame refused with edge error `code` before it went anywhere: a span
        of its own (see the module docstring); `frame` is the decoded frame, if any."""
        if not self.tracing:
            log.debug("refused a frame: %s", code)
            return
        frame_type = _frame_type(frame)
        traceparent = getattr(frame, "traceparent", None)
        carrier = {"traceparent": traceparent} if isinstance(traceparent, str) else {}
        attributes = {
            "network.protocol.name": "websocket",
            "agent_relay.frame.type": frame_type,
            "error.type": code,
        }
        for attribute, field_name in (
            ("agent_relay.session.id", "session_id"),
            ("agent_relay.message.id", "message_id"),
        ):
            value = getattr(frame, field_name, None)
            if isinstance(value, str) and value:
                attributes[attribute] = value
        with self.tracer.start_as_current_span(
            frame_type,
            context=propagate.extract(carrier) if carrier else otel_context.Context(),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            if code in FAULT_CODES:
                span.set_status(Status(StatusCode.ERROR, code))
            log.debug("refused %s: %s", frame_type, code)


def _frame_type(frame: object | None) -> str:
    """A decoded frame's `type` tag (`chat:message`, `join`, ...); `frame` when undecoded."""
    config = getattr(type(frame), "__struct_config__", None) if frame is not None else None
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else "frame"
