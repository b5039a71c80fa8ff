"""Reconnect delays: exponential with full jitter. Pure; the random source is passed in."""

from __future__ import annotations

import random


def backoff_s(
    attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """The delay before reconnect attempt number `attempt` (0-based): uniform in
    [0, min(max_s, base_s * 2**attempt)], so many edges do not reconnect in step."""
    ceiling = min(max_s, base_s * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0.0, ceiling)
