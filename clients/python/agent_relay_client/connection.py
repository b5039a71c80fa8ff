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
back: `Reconnect(delay_s)` means "wait, then open a new connection"; `GiveUp`
means the connection is over. "Connected" means authenticated, not merely
opened: a socket that opens and is refused at once must not reset the backoff.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

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


Decision = Reconnect | GiveUp


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
        self._move(State.CONNECTED)

    def receive_attempt(self) -> None:
        """A reconnect wait ended and the next attempt begins (the state stays RECONNECTING)."""
        if self.state is not State.RECONNECTING:
            raise RuntimeError(f"attempt while {self.state.value}")

    def receive_closed(self, code: int, reason: str = "") -> Decision:
        """The socket closed, or the attempt failed (`code` 1006 when there was no close frame).

        Returns what to do next; the state is RECONNECTING or DISCONNECTED after it.
        """
        if self.state in (State.IDLE, State.DISCONNECTED):
            return GiveUp(code, reason)
        advice = advise_close(code)
        if advice is CloseAdvice.STOP:
            self._move(State.DISCONNECTED)
            return GiveUp(code, reason)
        if self.max_attempts is not None and self.attempt >= self.max_attempts:
            self._move(State.DISCONNECTED)
            return GiveUp(code, f"gave up after {self.attempt} attempts: {reason}".strip(": "))
        if advice is CloseAdvice.RECONNECT_NOW:
            delay = self._random() * self.backoff.restart_cap_s
        else:
            delay = self.backoff.delay_s(self.attempt, self._random)
        decision = Reconnect(delay, self.attempt)
        self.attempt += 1
        self._move(State.RECONNECTING)
        return decision

    def receive_stop(self) -> None:
        """The user closed the client: no more attempts."""
        self._move(State.DISCONNECTED)
