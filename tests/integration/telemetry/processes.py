"""Start the real processes with OTEL_* variables pointing at a test's OTLP receiver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

# export quickly so a test sees its spans within a fraction of a second
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"}


def printed_address(output: list[str], prefix: str) -> str:
    """The HOST:PORT a process printed after `prefix` (waits for the line)."""
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline:
        for line in list(output):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        time.sleep(0.02)
    raise AssertionError(f"no {prefix!r} line in:\n{''.join(output)}")


def start_traced_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str
) -> tuple[ServiceProcess, str]:
    """The agent service with `env` set (OTEL_* variables); returns it and its metrics address."""
    for key, value in {**FAST_EXPORT, **env}.items():
        monkeypatch.setenv(key, value)
    service = start_agent_service(
        tmp_path, "--demo-tokens-per-s", "0", "--metrics-listen", "127.0.0.1:0", *args
    )
    return service, printed_address(service.output, "agent_service metrics on ")
