"""Timeouts for tests, scaled by AGENT_RELAY_TEST_TIMEOUT_FACTOR on slow machines."""

from __future__ import annotations

import os

FACTOR = float(os.environ.get("AGENT_RELAY_TEST_TIMEOUT_FACTOR", "1"))


def scaled(seconds: float) -> float:
    """`seconds` times the machine's timeout factor."""
    return seconds * FACTOR
