"""Logging set-up shared by both processes: one line per record on stderr."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Log at `level` (DEBUG, INFO, WARNING, ERROR) to stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
