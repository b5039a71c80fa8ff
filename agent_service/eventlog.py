"""A session's event log: sequence numbers, the retained window, and replay.

Pure: no I/O, no clock, no asyncio. The session runtime feeds it events and
asks it what a subscriber has not seen yet.

- `append()` gives each event the next `seq` (1, 2, 3 ... with no gaps) and keeps
  at most `capacity` of the newest events.
- `read_after(n)` returns every retained event with `seq > n`, and a ReplayGap
  first when events after `n` are no longer retained: a subscriber is never
  silently skipped ahead.
- A log can start above 1 (`first_seq`): after a restart the runtime starts each
  session past every number the previous process may have handed out, so a
  `seq` never repeats, and a resume from before the restart gets the gap marker.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_relay.v1 import agent_pb2 as pb


@dataclass(frozen=True, slots=True)
class Replay:
    """What a subscriber at some `after_seq` should receive now."""

    gap: pb.ReplayGap | None
    events: list[pb.SessionEvent]


class OutOfRange(ValueError):
    """A subscriber asked to resume after a seq the log has not reached."""


class SessionLog:
    """The retained window of one session's events. Does no I/O."""

    def __init__(self, session_id: str, *, capacity: int, first_seq: int = 1) -> None:
        if capacity < 1 or first_seq < 1:
            raise ValueError("capacity and first_seq must be positive")
        self.session_id = session_id
        self.capacity = capacity
        self._buf: list[pb.SessionEvent] = []
        self._start = 0  # index in _buf of the oldest retained event
        self._next_seq = first_seq
        self._base_seq = first_seq  # seq of _buf[_start] (when any)

    @property
    def head_seq(self) -> int:
        """The seq of the newest event; first_seq - 1 when nothing was appended."""
        return self._next_seq - 1

    @property
    def next_seq(self) -> int:
        """The seq the next appended event gets."""
        return self._next_seq

    @property
    def first_retained_seq(self) -> int:
        """The oldest seq still retained (== next_seq when none is)."""
        return self._base_seq

    def __len__(self) -> int:
        return len(self._buf) - self._start

    def append(self, event: pb.SessionEvent) -> pb.SessionEvent:
        """Stamp `event` with this session and the next seq, retain it, and return it."""
        event.session_id = self.session_id
        event.seq = self._next_seq
        self._next_seq += 1
        self._buf.append(event)
        if len(self) > self.capacity:
            self._start += 1
            self._base_seq += 1
            if self._start >= self.capacity:  # compact: amortised O(1) per append
                del self._buf[: self._start]
                self._start = 0
        return event

    def read_after(self, after_seq: int, limit: int | None = None) -> Replay:
        """Events with seq > after_seq (at most `limit`), with a gap marker when some are gone.

        Raises OutOfRange when after_seq is beyond the head: the caller claims to
        have seen events that do not exist.
        """
        if after_seq < 0 or after_seq > self.head_seq:
            raise OutOfRange(f"after_seq {after_seq} is beyond the session's head {self.head_seq}")
        gap = None
        if after_seq + 1 < self._base_seq:
            gap = pb.ReplayGap(after_seq=after_seq, first_seq=self._base_seq)
            after_seq = self._base_seq - 1
        first = self._start + (after_seq + 1 - self._base_seq)
        last = len(self._buf) if limit is None else min(len(self._buf), first + limit)
        return Replay(gap=gap, events=self._buf[first:last])
