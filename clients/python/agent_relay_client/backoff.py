"""Full-jitter exponential backoff, and what each WebSocket close code asks of a client.

Pure: the random source is passed in, so tests pick the numbers. The numbers and the
close-code table are the protocol's (proto/agent_relay/v1/codes.json, generated into
`codes_gen`), the same for the edge and the TypeScript client.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from agent_relay_client import codes_gen


@dataclass(frozen=True, kw_only=True)
class BackoffPolicy:
    """How long to wait before reconnect attempt number `attempt` (0-based)."""

    base_s: float = codes_gen.BACKOFF_BASE_MS / 1000  # the ceiling of the first wait
    cap_s: float = codes_gen.BACKOFF_CAP_MS / 1000  # no wait is longer than this
    # Ceiling of the wait after 1012 (the edge restarts: go at once, spread a little).
    restart_cap_s: float = codes_gen.RESTART_JITTER_MS / 1000

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
    REFRESH_TOKEN = "refresh_token"  # renew the token, then reconnect at once


def advise_close(code: int) -> CloseAdvice:
    """The advice for one close code: the spec's table, then its ranges (4000-4499 reconnect,
    4500-4999 stop); any other unknown code reconnects with backoff, because losing a
    conversation to an unexpected code is worse than one backed-off attempt."""
    return CloseAdvice(codes_gen.close_action(code))
