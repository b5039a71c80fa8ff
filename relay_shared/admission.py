"""Admission control for user messages: refuse at once rather than queue past the deadline.

Every user message a process is carrying (the agent service: read off a Chat
stream, not yet answered; the edge: sent to one upstream stream, no reply yet)
is one unit of its backlog. `Admission` counts them and decides, before anything
is stored:

- past `max_pending` messages in the backlog, a new one is refused at once;
- a message with a deadline (`SendMessage.accept_by_unix_ms`) that the backlog
  would not drain before is refused at once: the wait is the backlog over the
  rate messages were answered lately, measured over busy time only (an idle
  spell says nothing about how fast the process works);
- a message whose deadline has passed is refused at the moment of acceptance
  (the service's Hub asks `expired`).

A refusal carries a retry time: the backlog's drain time, at least MIN_RETRY_MS
and at most MAX_RETRY_MS, spread over [1, 2) times that so that a thousand
refused senders do not come back at the same instant.

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
# Before enough answers were measured: optimistic, so that nothing is refused on a guess
# (the deadline itself still holds at the moment of acceptance).
DEFAULT_RATE_PER_S = 1000.0
_RATE_WINDOW = 256  # answers the drain rate is measured over (group commits answer in bursts)


class Admission:
    """The acceptance backlog of one process. See the module docstring."""

    def __init__(self, max_pending: int, *, rng: random.Random | None = None) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.depth = 0  # messages being accepted now
        self.refused = 0  # refused so far, every reason
        self._busy_s = 0.0  # seconds spent with depth > 0, up to _busy_since
        self._busy_since = 0.0
        self._answered: deque[float] = deque(maxlen=_RATE_WINDOW)  # busy clock at each answer
        self._rng = rng or random.Random()

    def try_enter(self, now_s: float, deadline_in_s: float | None = None) -> int | None:
        """Admit one message (None), or refuse it: the milliseconds to wait before retrying.
        `deadline_in_s`: the seconds left before the message must be accepted, if it must."""
        wait_s = (self.depth + 1) / self.rate_per_s()
        full = self.depth >= self.max_pending
        if full or (deadline_in_s is not None and wait_s > deadline_in_s):
            self.refused += 1
            return self.retry_after_ms()
        if self.depth == 0:
            self._busy_since = now_s
        self.depth += 1
        return None

    def leave(self, now_s: float) -> None:
        """An admitted message has its answer."""
        if self.depth <= 0:
            raise RuntimeError("leave() without a matching try_enter()")
        self._busy_s += max(0.0, now_s - self._busy_since)
        self._busy_since = now_s
        self.depth -= 1
        self._answered.append(self._busy_s)

    def expired(self, accept_by_ms: int, now_ms: int) -> bool:
        """Whether a message with this deadline (0: none) may no longer be accepted."""
        return 0 < accept_by_ms <= now_ms

    def refuse_expired(self) -> int:
        """Count a refusal for a passed deadline; the retry time to give."""
        self.refused += 1
        return self.retry_after_ms()

    def rate_per_s(self) -> float:
        """Messages answered per busy second lately (a default until that is measured)."""
        if len(self._answered) < _RATE_WINDOW // 4:
            return DEFAULT_RATE_PER_S
        span = self._answered[-1] - self._answered[0]
        if span <= 0:
            return DEFAULT_RATE_PER_S
        return (len(self._answered) - 1) / span

    def retry_after_ms(self) -> int:
        """The time the backlog takes to drain, jittered over [1, 2), within the bounds."""
        drain_ms = 1000.0 * (self.depth + 1) / self.rate_per_s()
        base = min(MAX_RETRY_MS / 2, max(float(MIN_RETRY_MS), drain_ms))
        return int(base * (1.0 + self._rng.random()))
