"""Admission control for user messages: refuse at once rather than queue past the deadline.

Every user message a process is carrying (the agent service: read off a Chat
stream, not yet answered; the edge: sent to one upstream stream, no reply yet)
is one unit of its backlog. `Admission` counts them and decides, before anything
is stored:

- past `max_pending` messages in the backlog, a new one is refused at once;
- a message whose sender's deadline (`SendMessage.accept_by_unix_ms`) has passed
  is refused at the moment of acceptance (the service's Hub asks `expired`).

A refusal carries a retry time: how long the backlog takes to drain at the rate
messages were answered lately, at least MIN_RETRY_MS and at most MAX_RETRY_MS,
spread over [1, 2) times that so that a thousand refused senders do not come
back at the same instant.

Pure: the caller passes `now_s` (monotonic seconds) and, for the jitter, a
`random.Random`; nothing here sleeps, awaits or reads a clock. Calling rule:
`try_enter` before a message is carried out; when it returns None, `leave`
exactly once when the message's reply is known (accepted or not).
"""

from __future__ import annotations

import random
from collections import deque

MIN_RETRY_MS = 500  # codes.json backoff.min_message_retry_ms: clients never retry sooner
MAX_RETRY_MS = 30_000
DEFAULT_RATE_PER_S = 100.0  # before any message was answered: a guess that errs short
_RATE_WINDOW = 64  # answers the drain rate is measured over


class Admission:
    """The acceptance backlog of one process. See the module docstring."""

    def __init__(self, max_pending: int, *, rng: random.Random | None = None) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.depth = 0  # messages being accepted now
        self.refused = 0  # refused so far, both reasons
        self._answered: deque[float] = deque(maxlen=_RATE_WINDOW)
        self._rng = rng or random.Random()

    def try_enter(self, now_s: float) -> int | None:
        """Admit one message (None), or refuse it: the milliseconds to wait before retrying."""
        if self.depth >= self.max_pending:
            self.refused += 1
            return self.retry_after_ms(now_s)
        self.depth += 1
        return None

    def leave(self, now_s: float) -> None:
        """An admitted message has its answer."""
        if self.depth <= 0:
            raise RuntimeError("leave() without a matching try_enter()")
        self.depth -= 1
        self._answered.append(now_s)

    def expired(self, accept_by_ms: int, now_ms: int) -> bool:
        """Whether a message with this deadline (0: none) may no longer be accepted."""
        return 0 < accept_by_ms <= now_ms

    def refuse_expired(self, now_s: float) -> int:
        """Count a refusal for a passed deadline; the retry time to give."""
        self.refused += 1
        return self.retry_after_ms(now_s)

    def rate_per_s(self, now_s: float) -> float:
        """Messages answered per second lately (a default before there are two answers)."""
        if len(self._answered) < 2:
            return DEFAULT_RATE_PER_S
        span = max(now_s, self._answered[-1]) - self._answered[0]
        if span <= 0:
            return DEFAULT_RATE_PER_S
        return (len(self._answered) - 1) / span

    def retry_after_ms(self, now_s: float) -> int:
        """The time the backlog takes to drain, jittered over [1, 2), within the bounds."""
        drain_ms = 1000.0 * (self.depth + 1) / self.rate_per_s(now_s)
        base = min(MAX_RETRY_MS / 2, max(float(MIN_RETRY_MS), drain_ms))
        return int(base * (1.0 + self._rng.random()))
