"""The client's connection state machine. Does no I/O.

::

    IDLE --start--> CONNECTING --connected--> CONNECTED
                        |                         |
                        | failed / closed         | closed (advice: reconnect)
                        v                         v
                  RECONNECTING <-----------------+
                        |  retry due: next attempt --connected--> CONNECTED
                        |
                        | stop(), close code that says STOP, or max_attempts spent
                        v
                  DISCONNECTED --start--> CONNECTING

The I/O layer calls `receive_*` as things happen and carries out what comes
back: `Reconnect(delay_s)` means "wait, then open a new connection";
`RefreshToken` means "renew the token, then reconnect at once"; `GiveUp` means
the connection is over.

The rules, the same in the TypeScript client (clients/web/src/lib/connectionMachine.ts)
and checked by the scenario files in clients/spec/:

- the attempt counter resets when a connection is authenticated (the auth ack;
  for gRPC, the Chat stream opened), not merely opened: a socket that opens and
  is refused at once must not reset the backoff;
- after a close, the code's action (codes.json) decides: stop, reconnect at once
  (1012, within the restart jitter), renew the token (4501; a second 4501 before
  a connection succeeds stops), or reconnect after full-jitter backoff, never
  sooner than a `retry_after_ms` the edge asked for;
- a link that carried no frame for DEAD_AFTER_INTERVALS heartbeat intervals is
  dead (`link_dead`): close it with 4001 and feed that close here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from agent_relay_client import codes_gen
from agent_relay_client.backoff import BackoffPolicy, CloseAdvice, advise_close


class State(enum.Enum):
    """Where the connection stands."""

    IDLE = "idle"  # never started
    CONNECTING = "connecting"  # first attempt in flight
    CONNECTED = "connected"  # open and authenticated
    RECONNECTING = "reconnecting"  # lost; waiting to retry or retrying
    DISCONNECTED = "disconnected"  # over: stop() or a close that says not to retry


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Open a new connection after `delay_s` seconds (attempt number `attempt`, 0-based)."""

    delay_s: float
    attempt: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The connection is over; `code` and `reason` say why."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """Renew the token, then open a new connection at once (attempt number `attempt`)."""

    attempt: int


Decision = Reconnect | RefreshToken | GiveUp


def link_dead(last_frame_ms: float, now_ms: float, interval_ms: float) -> bool:
    """Whether a link whose last frame arrived at `last_frame_ms` is dead at `now_ms`: silent
    for more than DEAD_AFTER_INTERVALS ping intervals (the edge answers every ping)."""
    return now_ms - last_frame_ms > codes_gen.DEAD_AFTER_INTERVALS * interval_ms


class ConnectionMachine:
    """Decides connection states and reconnect delays from what happened to the socket.

    Calling rule: `receive_start()` once to begin; then for every attempt exactly
    one of `receive_connected()` or `receive_closed()`; after a `Reconnect`,
    `receive_attempt()` when the wait is over and the next attempt begins.
    """

    def __init__(
        self,
        *,
        backoff: BackoffPolicy | None = None,
        random: Callable[[], float],
        max_attempts: int | None = None,
    ) -> None:
        self.backoff = backoff or BackoffPolicy()
        self._random = random
        # Consecutive failed attempts before giving up; None: never give up.
        self.max_attempts = max_attempts
        self.state = State.IDLE
        self.attempt = 0  # failed attempts since the last successful connection
        self._refreshed = False  # a token renewal was asked for since the last success
        self.transitions: list[tuple[State, State]] = []  # every change, oldest first

    def _move(self, new: State) -> None:
        if new is not self.state:
            self.transitions.append((self.state, new))
            self.state = new

    def receive_start(self) -> None:
        """The user wants a connection: the first attempt begins now."""
        if self.state not in (State.IDLE, State.DISCONNECTED):
            raise RuntimeError(f"cannot start from {self.state.value}")
        self.attempt = 0
        self._move(State.CONNECTING)

    def receive_connected(self) -> None:
        """The attempt succeeded (socket open and authenticated)."""
        if self.state not in (State.CONNECTING, State.RECONNECTING):
            raise RuntimeError(f"connected while {self.state.value}")
        self.attempt = 0
        self._refreshed = False
        self._move(State.CONNECTED)

    def receive_attempt(self) -> None:
        """A reconnect wait ended and the next attempt begins (the state stays RECONNECTING)."""
        if self.state is not State.RECONNECTING:
            raise RuntimeError(f"attempt while {self.state.value}")

    def receive_closed(self, code: int, reason: str = "", retry_after_ms: int = 0) -> Decision:
        """The socket closed, or the attempt failed (`code` 1006 when there was no close frame).

        `retry_after_ms`: the longest wait the edge asked for on this connection (0: none).
        Returns what to do next; the state is RECONNECTING or DISCONNECTED after it.
        """
        if self.state in (State.IDLE, State.DISCONNECTED):
            return GiveUp(code, reason)
        advice = advise_close(code)
        if advice is CloseAdvice.REFRESH_TOKEN and self._refreshed:
            advice = CloseAdvice.STOP  # the renewed token was refused too: it will not work
        if advice is CloseAdvice.STOP:
            self._move(State.DISCONNECTED)
            return GiveUp(code, reason)
        if self.max_attempts is not None and self.attempt >= self.max_attempts:
            self._move(State.DISCONNECTED)
            return GiveUp(code, f"gave up after {self.attempt} attempts: {reason}".strip(": "))
        decision: Decision
        if advice is CloseAdvice.REFRESH_TOKEN:
            self._refreshed = True
            decision = RefreshToken(self.attempt)
        else:
            if advice is CloseAdvice.RECONNECT_NOW:
                delay = self._random() * self.backoff.restart_cap_s
            else:
                delay = self.backoff.delay_s(self.attempt, self._random)
            decision = Reconnect(max(delay, retry_after_ms / 1000), self.attempt)
        self.attempt += 1
        self._move(State.RECONNECTING)
        return decision

    def receive_stop(self) -> None:
        """The user closed the client: no more attempts."""
        self._move(State.DISCONNECTED)
