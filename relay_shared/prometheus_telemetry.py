"""The Prometheus side of a process's metrics: exposition with content negotiation, gzip,
and histogram exemplars that link to traces.

OpenTelemetry's Prometheus reader drops the exemplars the SDK keeps on histogram
points. `ExemplarPrometheusReader` is that reader with them put back: it keeps
its own registry, and what it registers in the process's registry is a
collector that passes the reader's metric families on, attaching to each
histogram bucket the exemplar (`trace_id`, `span_id`, value, time) the SDK
kept for that bucket. Only OpenMetrics carries exemplars; the classic text
format leaves them out.

`exposition(registry, accept, accept_encoding)` answers a scrape as
prometheus_client's own HTTP server does: OpenMetrics when the `Accept`
header asks for `application/openmetrics-text`, else text 0.0.4, gzipped when
`Accept-Encoding` allows it.
"""

from __future__ import annotations

import bisect
import gzip
import json
from collections.abc import Iterable, Iterator
from typing import Any

# The exporter's own name sanitizing, so the keys here match its metric families;
# private, hence the exporter's narrow version range in pyproject.toml.
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.exporter.prometheus._mapping import sanitize_attribute, sanitize_full_name
from opentelemetry.sdk.metrics.export import Histogram, HistogramDataPoint, MetricsData
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric as PrometheusMetric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.samples import Exemplar

# (sanitized metric name, its point's labels without empty ones) -> bucket index -> exemplar
ExemplarIndex = dict[tuple[str, frozenset[tuple[str, str]]], dict[int, Exemplar]]


def exposition(
    registry: CollectorRegistry, accept: str = "", accept_encoding: str = ""
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a /metrics answer for these request headers."""
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    headers = {"Content-Type": content_type}
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def _label_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _labels(attributes: Any) -> frozenset[tuple[str, str]]:
    pairs = ((sanitize_attribute(k), _label_value(v)) for k, v in (attributes or {}).items())
    return frozenset((k, v) for k, v in pairs if v != "")


def histogram_exemplars(metrics_data: MetricsData) -> ExemplarIndex:
    """The exemplars of every histogram point, by metric, labels and bucket."""
    index: ExemplarIndex = {}
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if not isinstance(metric.data, Histogram):
                    continue
                name = sanitize_full_name(metric.name)
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint) and point.exemplars:
                        index[(name, _labels(point.attributes))] = _by_bucket(point)
    return index


def _by_bucket(point: HistogramDataPoint) -> dict[int, Exemplar]:
    buckets: dict[int, Exemplar] = {}
    bounds = list(point.explicit_bounds)
    for exemplar in point.exemplars:
        if exemplar.trace_id is None or exemplar.span_id is None:
            continue
        labels = {
            "trace_id": format(exemplar.trace_id, "032x"),
            "span_id": format(exemplar.span_id, "016x"),
        }
        value = float(exemplar.value)
        buckets[bisect.bisect_left(bounds, value)] = Exemplar(
            labels, value, exemplar.time_unix_nano / 1e9
        )
    return buckets


def attach_exemplars(
    families: Iterable[PrometheusMetric], index: ExemplarIndex
) -> Iterator[PrometheusMetric]:
    """The families, each histogram bucket sample given its exemplar when one was kept."""
    for family in families:
        if family.type == "histogram" and index:
            _attach(family, index)
        yield family


def _attach(family: PrometheusMetric, index: ExemplarIndex) -> None:
    candidates = [
        (name, buckets)
        for (name, _), buckets in index.items()
        if family.name == name or family.name.startswith(name + "_")
    ]
    if not candidates:
        return
    bucket_name = family.name + "_bucket"
    for position, sample in enumerate(family.samples):
        if sample.name != bucket_name:
            continue
        labels = {k: v for k, v in sample.labels.items() if k != "le" and v != ""}
        key = frozenset((k, v) for k, v in labels.items() if not k.startswith("otel_scope_"))
        for name, _ in candidates:
            buckets = index.get((name, key))
            if buckets is None:
                continue
            exemplar = buckets.get(_bucket_index(family, sample.labels["le"]))
            if exemplar is not None:
                family.samples[position] = sample._replace(exemplar=exemplar)
            break


def _bucket_index(family: PrometheusMetric, le: str) -> int:
    bounds = sorted({float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")})
    return bisect.bisect_left(bounds, float(le))


class ExemplarPrometheusReader(PrometheusMetricReader):
    """OpenTelemetry's Prometheus reader, its histograms with their exemplars; registers
    itself in `registry` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._own_registry = CollectorRegistry(auto_describe=False)
        self._exemplars: ExemplarIndex = {}
        super().__init__(registry=self._own_registry)
        registry.register(_ExemplarCollector(self))

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        if metrics_data is not None:
            self._exemplars = histogram_exemplars(metrics_data)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    def families(self) -> Iterator[PrometheusMetric]:
        """Collect now: every metric family, with exemplars."""
        collected = list(self._own_registry.collect())  # runs _receive_metrics first
        return attach_exemplars(collected, self._exemplars)


class _ExemplarCollector:
    """The prometheus_client collector the process's registry holds."""

    def __init__(self, reader: ExemplarPrometheusReader) -> None:
        self._reader = reader

    def describe(self) -> list[PrometheusMetric]:
        # registering must not collect: the reader has no meter provider yet
        return []

    def collect(self) -> Iterator[PrometheusMetric]:
        return self._reader.families()
