"""A real OTLP receiver for tests: the collector's trace and metrics services over gRPC,
and traces over OTLP/HTTP.

Spans are kept flattened with their service name, so a test can wait for the spans
of one trace and check their parent chain; metric data points are kept by name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.timing import scaled


@dataclass(frozen=True)
class ReceivedSpan:
    """One received span, with ids as lowercase hex (as in `traceparent`)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, attributes) in order


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, which) if which else None


@dataclass
class SpanStore:
    """Spans received so far, by any transport."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attrs.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            status_code=s.status.code,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            events=tuple(
                                (e.name, {a.key: _value(a.value) for a in e.attributes})
                                for e in s.events
                            ),
                        )
                    )
        with self._lock:
            self.spans.extend(received)
            self.requests += 1

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 15
    ) -> list[ReceivedSpan]:
        """Poll until predicate(all spans) holds; returns the spans. Raises AssertionError."""
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            with self._lock:
                snapshot = list(self.spans)
            if predicate(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                names = [(s.service, s.name) for s in snapshot]
                raise AssertionError(f"spans never matched; received: {names}")
            time.sleep(0.05)


@dataclass
class MetricStore:
    """Metric data points received so far: name -> [(attributes, value)], newest last."""

    points: dict[str, list[tuple[dict[str, Any], float]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self._lock:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attrs = {a.key: _value(a.value) for a in point.attributes}
                            if kind == "histogram":
                                number = float(point.count)
                            else:
                                number = point.as_double or float(point.as_int)
                            self.points.setdefault(metric.name, []).append((attrs, number))

    def latest(self, name: str, **attributes: Any) -> float | None:
        """The newest value (a histogram's count) of `name` whose attributes include these."""
        with self._lock:
            for attrs, number in reversed(self.points.get(name, [])):
                if all(attrs.get(k) == v for k, v in attributes.items()):
                    return number
        return None


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: MetricStore) -> None:
        self.store = store

    def Export(
        self, request: Any, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.store.add(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: SpanStore) -> None:
        self.store = store

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.store.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpGrpcReceiver:
    """The OTLP trace and metrics services on 127.0.0.1 at a free port; `endpoint` is for
    the OTEL_* variables."""

    def __init__(self, store: SpanStore | None = None) -> None:
        self.store = store or SpanStore()
        self.metrics = MetricStore()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceService(self.store), self.server
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsService(self.metrics), self.server
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)


class OtlpHttpReceiver:
    """OTLP/HTTP (protobuf) on 127.0.0.1 at a free port: POST /v1/traces."""

    def __init__(self, store: SpanStore | None = None) -> None:
        self.store = store or SpanStore()
        store_ = self.store

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                store_.add(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    """Run a gRPC receiver until stdin closes; print `otlp receiver on ENDPOINT`, and at
    the end `spans received N`. For benchmarks that want the receiver's CPU elsewhere."""
    import sys

    receiver = OtlpGrpcReceiver()
    print(f"otlp receiver on {receiver.endpoint}", flush=True)
    sys.stdin.read()
    receiver.stop()
    print(f"spans received {len(receiver.store.spans)}", flush=True)


if __name__ == "__main__":
    main()
