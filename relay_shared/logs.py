"""Logging set-up shared by both processes: readable lines for a person, JSON otherwise.

On a terminal (stderr is a TTY) each record is one readable line:

    09:15:45.123 INFO    agent_service.server  stopping: runs get 5.0 s to finish  trace=4bf9...

Anywhere else (a pipe, a file: `agent-relay run` writes var/logs/<process>.log,
a container's log collector) each record is one JSON object per line (see
relay_shared.telemetry.JsonFormatter). Both carry `trace_id` and `span_id` when
the record is written inside a span, and the fields given with `extra={...}`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from opentelemetry import trace

from relay_shared.telemetry import configure_json_logging

# the attributes every LogRecord has: anything else on a record came from `extra=`
_STANDARD = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class PrettyFormatter(logging.Formatter):
    """`HH:MM:SS.mmm LEVEL logger  message  key=value ... trace=ID`, local time."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [
            f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name}  "
            f"{record.getMessage()}"
        ]
        extras = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            extras.append(f"trace={context.trace_id:032x}")
        if extras:
            parts.append("  " + " ".join(extras))
        text = "".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def configure_logging(
    level: str, stream: TextIO | None = None, *, pretty: bool | None = None
) -> None:
    """Log at `level` (DEBUG, INFO, WARNING, ERROR) to `stream` (stderr): readable
    lines when `pretty` (default: when the stream is a terminal), else JSON lines.

    Replaces the root logger's handlers. Raises ValueError for an unknown level."""
    target = stream if stream is not None else sys.stderr
    configure_json_logging(level, target)
    if pretty if pretty is not None else _is_terminal(target):
        for handler in logging.getLogger().handlers:
            handler.setFormatter(PrettyFormatter())
