"""Logging set-up shared by both processes: one JSON object per line on stderr.

Each line carries `trace_id` and `span_id` when it is written inside a span
(see relay_shared.telemetry.JsonFormatter).
"""

from __future__ import annotations

from relay_shared.telemetry import configure_json_logging


def configure_logging(level: str) -> None:
    """Log at `level` (DEBUG, INFO, WARNING, ERROR) to stderr as JSON lines."""
    configure_json_logging(level)
