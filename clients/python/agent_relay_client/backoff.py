"""Full-jitter exponential backoff, and what each WebSocket close code asks of a client.

Pure: the random source is passed in, so tests pick the numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BackoffPolicy:
    """How long to wait before reconnect attempt number `attempt` (0-based)."""

    base_s: float = 0.5  # the ceiling of the first wait
    cap_s: float = 15.0  # no wait is longer than this
    restart_cap_s: float = 1.0  # ceiling of the wait after 1012 (the edge restarts: go at once)

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        if self.restart_cap_s < 0:
            raise ValueError("restart_cap_s must be 0 or more")

    def ceiling_s(self, attempt: int) -> float:
        """The largest wait for this attempt: base * 2**attempt, capped."""
        if attempt < 0:
            raise ValueError("attempt must be 0 or more")
        # Past 2**32 the cap has long won; stop doubling so the float never overflows.
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 32))

    def delay_s(self, attempt: int, random: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, ceiling). `random()` returns a float in [0, 1)."""
        return random() * self.ceiling_s(attempt)


class CloseAdvice(enum.Enum):
    """What a close code asks the client to do (docs/protocol.md, "Close codes")."""

    STOP = "stop"  # do not reconnect: normal close, policy, or credentials that will fail again
    RECONNECT_NOW = "reconnect_now"  # the edge is restarting: reconnect at once, with jitter
    RECONNECT = "reconnect"  # reconnect after backoff and resume by seq


_STOP_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1010})


def advise_close(code: int) -> CloseAdvice:
    """The advice for one close code. Unknown codes reconnect with backoff: losing a
    conversation to an unexpected code is worse than one wasted attempt."""
    if code in _STOP_CODES or 4500 <= code <= 4999:
        return CloseAdvice.STOP
    if code == 1012:
        return CloseAdvice.RECONNECT_NOW
    return CloseAdvice.RECONNECT
