"""Scrape a /metrics endpoint over HTTP and read it with the Prometheus client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.timing import scaled

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str) -> Samples:
    """GET url (http://HOST:PORT/metrics) parsed: sample name -> {sorted labels: value}."""
    with urllib.request.urlopen(url, timeout=scaled(5)) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    return sum(
        v
        for key, v in samples.get(name, {}).items()
        if all((k, want) in key for k, want in labels.items())
    )
