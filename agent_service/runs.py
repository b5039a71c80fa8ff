"""A session's runs: which one is active, which wait, and what a new message does.

Pure: the session runtime feeds it messages and run endings and carries out the
decisions it returns (start a run, cancel one, refuse a message).

Busy policies for a message that arrives while a run is active:
- `queue` (default): the new run starts after every run before it ends.
- `reject`: the message is refused; nothing is stored.
- `interrupt`: the active run is cancelled, queued runs are dropped, and the new
  run starts as soon as the cancelled one has ended.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class BusyPolicy(StrEnum):
    """What a message does when a run is active."""

    QUEUE = "queue"
    REJECT = "reject"
    INTERRUPT = "interrupt"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a new message's run."""

    start_now: bool = False  # start the run at once
    queued: bool = False  # the run waits behind others
    rejected: bool = False  # refuse the message
    cancel_active: str | None = None  # run id to cancel first
    dropped: tuple[str, ...] = field(default=())  # queued run ids that will never start


class RunQueue:
    """The active run and the queue behind it, for one session. Does no I/O."""

    def __init__(self) -> None:
        self.active: str | None = None
        self._waiting: deque[str] = deque()

    @property
    def waiting(self) -> tuple[str, ...]:
        """Queued run ids, next first."""
        return tuple(self._waiting)

    @property
    def busy(self) -> bool:
        """True while a run is active or queued."""
        return self.active is not None or bool(self._waiting)

    def receive_message(self, run_id: str, policy: BusyPolicy) -> Decision:
        """Decide the fate of the run a new message starts."""
        if not self.busy:
            self.active = run_id
            return Decision(start_now=True)
        if policy is BusyPolicy.REJECT:
            return Decision(rejected=True)
        if policy is BusyPolicy.INTERRUPT:
            dropped = tuple(self._waiting)
            self._waiting.clear()
            self._waiting.append(run_id)
            return Decision(queued=True, cancel_active=self.active, dropped=dropped)
        self._waiting.append(run_id)
        return Decision(queued=True)

    def receive_run_ended(self, run_id: str) -> str | None:
        """The active run ended; returns the run to start next, if any."""
        if run_id != self.active:
            return None
        self.active = self._waiting.popleft() if self._waiting else None
        return self.active

    def remove_waiting(self, run_id: str) -> bool:
        """Drop a queued run (it was cancelled before starting)."""
        try:
            self._waiting.remove(run_id)
        except ValueError:
            return False
        return True
