"""OpenTelemetry for one process: tracer and meter providers, Prometheus text, JSON logs.

Call `setup_telemetry(service_name, ...)` once at process start, before serving.
It reads the standard `OTEL_*` environment variables through the SDK's own
exporter registry (the same names `opentelemetry-instrument` accepts):

- traces: `OTEL_TRACES_EXPORTER` (`otlp`, `otlp_proto_grpc`, `otlp_proto_http`,
  `console`, comma-separated, or `none`), with `OTEL_EXPORTER_OTLP_PROTOCOL`
  (`grpc` or `http/protobuf`) choosing what `otlp` means and
  `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, headers, timeouts read by the
  exporters themselves. When `OTEL_TRACES_EXPORTER` is unset but an OTLP
  endpoint is, `otlp` is meant. With none of these set, tracing is off: no SDK
  tracer provider is installed, spans cost what the API's no-op costs, and an
  incoming `traceparent` is still passed on (the no-op keeps the parent's ids).
- metrics: always kept in-process for Prometheus (`Telemetry.metrics_text()`,
  `Telemetry.exposition()` with OpenMetrics, gzip and exemplars: see
  relay_shared.prometheus_telemetry); also pushed when `OTEL_METRICS_EXPORTER`
  names exporters. Histograms keep exemplars (the trace of a measurement made
  inside a sampled span) while tracing is on, unless `OTEL_METRICS_EXEMPLAR_FILTER`
  says otherwise.
- `OTEL_SDK_DISABLED=true` turns exporting off whatever else is set.
- An exporter name or OTLP protocol that nothing provides is logged as one
  ERROR line naming it; the process goes on without that exporter.

The providers are installed as OpenTelemetry's global ones (one per process),
so instrumentation libraries find them. Logs: `configure_json_logging` writes
one JSON object per line, with `trace_id` and `span_id` inside a span.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

# The SDK's own resolution of OTEL_*_EXPORTER and OTEL_EXPORTER_OTLP_PROTOCOL into
# exporter classes (entry points), as `opentelemetry-instrument` does it; private
# names, so the SDK's version range in pyproject.toml is kept narrow.
from opentelemetry.sdk._configuration import (
    _get_exporter_entry_point,
    _get_exporter_names,
    _import_exporters,
)
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_wsgi_server

from relay_shared.prometheus_telemetry import ExemplarPrometheusReader, exposition

log = logging.getLogger(__name__)

OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def trace_exporter_names() -> list[str]:
    """The span exporters the environment asks for, as the SDK's entry-point names.

    Unlike the SDK's own default (`otlp`), nothing set means nothing exported:
    a process exports only when told to.
    """
    if _sdk_disabled():
        return []
    if not os.environ.get("OTEL_TRACES_EXPORTER"):
        if any(os.environ.get(v) for v in OTLP_ENDPOINT_VARS):
            return [_get_exporter_entry_point("otlp", "traces")]
        return []
    names: list[str] = _get_exporter_names("traces")
    return names


def metric_exporter_names() -> list[str]:
    """The metric exporters to push to, besides the in-process Prometheus reader."""
    if _sdk_disabled() or not os.environ.get("OTEL_METRICS_EXPORTER"):
        return []
    # the SDK's `prometheus` entry point starts its own HTTP server: ours serves /metrics
    return [n for n in _get_exporter_names("metrics") if n != "prometheus"]


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


@dataclass
class Telemetry:
    """One process's providers. `tracing` is False when no span is exported."""

    service_name: str
    meter_provider: MeterProvider
    registry: CollectorRegistry
    tracer_provider: TracerProvider | None = None
    _metrics_server: Any = field(default=None, repr=False)

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer of this process (the API's no-op one when tracing is off)."""
        if self.tracer_provider is None:
            return trace.NoOpTracer()
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> metrics.Meter:
        """A meter whose instruments show on /metrics (and are pushed if configured)."""
        return self.meter_provider.get_meter(name)

    def metrics_text(self) -> tuple[bytes, str]:
        """The Prometheus exposition of every instrument, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def exposition(
        self, accept: str = "", accept_encoding: str = ""
    ) -> tuple[bytes, dict[str, str]]:
        """A /metrics answer (body, headers) negotiated from the request's `Accept`
        (OpenMetrics, with exemplars, or text 0.0.4) and `Accept-Encoding` (gzip)."""
        return exposition(self.registry, accept, accept_encoding)

    def serve_metrics(self, host: str, port: int) -> tuple[str, int]:
        """Serve the Prometheus text over HTTP from a thread; returns the bound host and port.

        Scrapes then never wait for the event loop. Port 0 picks a free port.
        """
        server, _thread = start_wsgi_server(port, addr=host, registry=self.registry)
        self._metrics_server = server
        bound_host, bound_port = server.server_address[:2]
        return str(bound_host), int(bound_port)

    def shutdown(self) -> None:
        """Flush and stop the exporters and the /metrics server. Safe to call twice."""
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(service_name: str, *, install_global: bool = True) -> Telemetry:
    """Build this process's telemetry from the OTEL_* environment; see the module doc.

    `service_name` is the resource's `service.name` unless OTEL_SERVICE_NAME says
    otherwise. With `install_global`, the providers become OpenTelemetry's
    global ones (set once per process: later calls keep the first ones there).
    An exporter name or OTLP protocol nobody provides is logged (one line) and left out.
    """
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    resource = Resource.create(attributes)
    span_exporters = _exporters("traces", trace_exporter_names)
    metric_exporters = _exporters("metrics", metric_exporter_names)
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    readers: list[MetricReader] = [ExemplarPrometheusReader(registry)]
    for exporter_class in metric_exporters.values():
        exporter = exporter_class()
        readers.append(
            exporter
            if isinstance(exporter, MetricReader)
            else PeriodicExportingMetricReader(exporter)
        )
    # Exemplars link a histogram to the trace of one of its measurements: the SDK's default
    # (a sampled span's measurements) while spans are exported; with tracing off there is
    # no trace to link to, so off (a quarter of each measurement's cost) unless
    # OTEL_METRICS_EXEMPLAR_FILTER asks.
    exemplars = (
        None
        if span_exporters or os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER")
        else AlwaysOffExemplarFilter()
    )
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, exemplar_filter=exemplars
    )
    tracer_provider: TracerProvider | None = None
    if span_exporters:
        tracer_provider = TracerProvider(resource=resource)
        for span_exporter_class in span_exporters.values():
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter_class()))
    telemetry = Telemetry(service_name, meter_provider, registry, tracer_provider)
    if install_global:
        metrics.set_meter_provider(meter_provider)
        if tracer_provider is not None:
            trace.set_tracer_provider(tracer_provider)
    if tracer_provider is not None:
        log.info("exporting spans with %s", ", ".join(span_exporters))
    return telemetry


def _exporters(signal: str, names: Any) -> dict[str, Any]:
    """The exporter classes `names()` asks for; one that nothing provides is logged as one
    line and left out (a typo in OTEL_* must not stop the service)."""
    try:
        wanted: list[str] = names()
    except (RuntimeError, ValueError) as exc:  # an unknown OTEL_EXPORTER_OTLP_PROTOCOL
        log.error("no %s exporter: %s", signal, exc)
        return {}
    found: dict[str, Any] = {}
    for name in wanted:
        try:
            traces, pushed, _ = _import_exporters(
                [name] if signal == "traces" else [], [name] if signal == "metrics" else [], []
            )
        except (RuntimeError, ValueError, ImportError) as exc:
            log.error(
                "unknown %s exporter %r (OTEL_%s_EXPORTER): %s; going on without it",
                signal,
                name,
                signal.upper(),
                exc,
            )
            continue
        found.update(traces if signal == "traces" else pushed)
    return found


def parse_listen(address: str) -> tuple[str, int] | None:
    """`host:port` into its parts; an empty string means "do not listen" (None)."""
    address = address.strip()
    if not address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


# -- logs -------------------------------------------------------------------------------

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, trace and span ids.

    `trace_id` and `span_id` (lowercase hex, as in `traceparent`) appear when the
    record is written inside a span, also one whose context only came from an
    incoming `traceparent` while tracing is off. Extra fields given with
    `extra={...}` are kept when JSON can hold them.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _iso_time(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


_handler_lock = threading.Lock()


def configure_json_logging(level: str, stream: Any = None) -> None:
    """Log at `level` (DEBUG, INFO, WARNING, ERROR) as JSON lines on `stream` (stderr).

    Replaces the root logger's handlers, so calling it again changes the level.
    Raises ValueError for an unknown level name.
    """
    resolved = logging.getLevelName(level.strip().upper())
    if not isinstance(resolved, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    with _handler_lock:
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(resolved)
