"""A session's event log in memory: sequence numbers, what is durable, the window, replay.

Pure: no I/O, no clock, no asyncio. The session feeds it events and the log
writer tells it what became durable; subscribers ask it what they have not seen.

- `stamp()` gives each event the next `seq` (1, 2, 3 ... with no gaps, for the
  life of the session: a reloaded log continues from the durable head). A
  stamped event is not yet visible: nobody may see an event the durable log
  (log.py) could still lose.
- `publish_through(seq)` makes the stamped events up to `seq` visible, once the
  log writer has made them durable. `head_seq` is the newest visible event.
- The window keeps at most `capacity` of the newest visible events.
  `read_after(n)` returns every retained event with `seq > n`, with a ReplayGap
  first when events after `n` are no longer retained: a subscriber is never
  silently skipped ahead.
- `restore()` refills the window from the durable log when a session loads.
- `extend_unsubmitted_delta()` adds a model delta's text to the newest stamped
  event when that is a delta of the same run and step not yet handed to the log
  writer: under load several words share one event and one seq. The words gather
  in a list and become the event's text when the writer takes it
  (`take_unsubmitted()`): `delta.text += word` copied the whole text out of the
  message and back per word (quadratic in the words of an event).
- `continues_delta()` tells whether a new delta would continue the stream of the newest
  stamped event (same run and step): the log writer may hold such a delta back a
  moment under load (log_writer.py), never a run's first.
- `receive()` adds events another process made durable (a follower replica's
  window, fed from the shared log): they are visible at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
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
    """The visible window and the not-yet-durable tail of one session's events."""

    def __init__(
        self, session_id: str, *, capacity: int, durable_head: int = 0, merge_delta_chars: int = 0
    ) -> None:
        if capacity < 1 or durable_head < 0 or merge_delta_chars < 0:
            raise ValueError(
                "capacity must be positive, durable_head and merge_delta_chars not negative"
            )
        self.session_id = session_id
        self.capacity = capacity
        self.merge_delta_chars = merge_delta_chars  # 0: every delta is its own event
        self._buf: list[pb.SessionEvent] = []
        self._start = 0  # index in _buf of the oldest retained event
        self._base_seq = durable_head + 1  # seq of _buf[_start] (when any)
        self._head = durable_head
        self._pending: deque[pb.SessionEvent] = deque()  # stamped, not yet durable
        self._next_seq = durable_head + 1
        self._submitted = durable_head  # the newest seq handed to the log writer
        # the newest stamped delta that words joined, its (run_id, step), its text's pieces
        # and their length; its text is set from the pieces when the writer takes it
        self._open: pb.SessionEvent | None = None
        self._open_key: tuple[str, int] = ("", 0)
        self._open_pieces: list[str] = []
        self._open_chars = 0
        # the newest delta stamped by stamp_delta, its (run_id, step) and text: the next
        # word's checks read these, not the event's protobuf fields (a C call each)
        self._last_delta: pb.SessionEvent | None = None
        self._last_key: tuple[str, int] = ("", 0)
        self._last_text = ""

    @property
    def head_seq(self) -> int:
        """The seq of the newest visible (durable) event; 0 when there is none."""
        return self._head

    @property
    def next_seq(self) -> int:
        """The seq the next stamped event gets."""
        return self._next_seq

    @property
    def submitted_seq(self) -> int:
        """The newest seq handed to the log writer (take_unsubmitted)."""
        return self._submitted

    @property
    def first_retained_seq(self) -> int:
        """The oldest seq still retained (== head_seq + 1 when none is)."""
        return self._base_seq

    @property
    def unpublished(self) -> int:
        """How many stamped events wait to become durable."""
        return len(self._pending)

    def __len__(self) -> int:
        return len(self._buf) - self._start

    def restore(self, events: Iterable[pb.SessionEvent]) -> None:
        """Fill an empty window with durable events, oldest first, ending at the head."""
        if len(self) or self._pending:
            raise RuntimeError("restore() is for a freshly loaded log")
        kept = list(events)[-self.capacity :]
        if kept and kept[-1].seq != self._head:
            raise ValueError(f"restored events end at {kept[-1].seq}, not at the head {self._head}")
        self._buf = kept
        self._base_seq = kept[0].seq if kept else self._head + 1

    def receive(self, events: Iterable[pb.SessionEvent]) -> int:
        """Make durable events from another writer visible, oldest first; events at or
        before the head are skipped, and a jump past head + 1 (the writer's retention
        trimmed them first) restarts the window there, so readers get a gap. Returns
        how many were added. Only for a window that stamps nothing itself."""
        if self._pending:
            raise RuntimeError("receive() is for a window that stamps nothing")
        added = 0
        for event in events:
            if event.seq <= self._head:
                continue
            if event.seq != self._head + 1:
                self._buf, self._start, self._base_seq = [], 0, event.seq
            self._retain(event)
            added += 1
        self._next_seq = self._submitted = self._head + 1
        return added

    def stamp(self, event: pb.SessionEvent) -> pb.SessionEvent:
        """Give `event` this session and the next seq; it waits to be published."""
        event.session_id = self.session_id
        event.seq = self._next_seq
        self._next_seq += 1
        self._pending.append(event)
        return event

    def stamp_delta(self, event: pb.SessionEvent, run_id: str, step: int, text: str) -> None:
        """stamp() a response delta whose run_id, step and text are these."""
        self.stamp(event)
        self._last_delta, self._last_key, self._last_text = event, (run_id, step), text

    def extend_unsubmitted_delta(self, run_id: str, step: int, text: str) -> pb.SessionEvent | None:
        """Add `text` to the newest stamped event and return it, when that event is a
        response delta of this run and step that the log writer has not taken yet (so
        nobody has seen it, and no seq is spent) and holds under `merge_delta_chars`
        characters; None otherwise (always, with merge_delta_chars 0). The deltas a
        session makes while a commit is in flight so travel as one event: the busier the
        writer, the more words per event, at no extra wait. The returned event's text
        holds the added words once the writer has taken it (take_unsubmitted)."""
        pending = self._pending
        if not self.merge_delta_chars or not pending or self._submitted >= self._next_seq - 1:
            return None
        last = pending[-1]
        if last is self._open:
            if self._open_key != (run_id, step):
                return None
        else:
            if last is self._last_delta:
                if self._last_key != (run_id, step):
                    return None
                first = self._last_text
            else:
                if last.run_id != run_id or last.WhichOneof("kind") != "response_delta":
                    return None
                delta = last.response_delta
                if delta.step != step:
                    return None
                first = delta.text
            self._close_open()
            self._open, self._open_key = last, (run_id, step)
            self._open_pieces, self._open_chars = [first], len(first)
        if self._open_chars >= self.merge_delta_chars:
            return None
        self._open_pieces.append(text)
        self._open_chars += len(text)
        return last

    def _close_open(self) -> None:
        """The open delta's words become its text; no more join it here."""
        event = self._open
        if event is not None:
            self._open = None
            if len(self._open_pieces) > 1:
                text = event.response_delta.text = "".join(self._open_pieces)
                if event is self._last_delta:
                    self._last_text = text
            self._open_pieces = []

    def continues_delta(self, run_id: str, step: int) -> bool:
        """Whether the newest stamped event (durable or not) is a response delta of this
        run and step: a delta appended now continues a stream already under way."""
        if self._pending:
            last = self._pending[-1]
        elif len(self):
            last = self._buf[-1]
        else:
            return False
        if last is self._last_delta:
            return self._last_key == (run_id, step)
        return bool(
            last.run_id == run_id
            and last.WhichOneof("kind") == "response_delta"
            and last.response_delta.step == step
        )

    def take_unsubmitted(self) -> list[pb.SessionEvent]:
        """Stamped events not yet handed to the log writer, oldest first; they count as
        handed over from now on."""
        count = self._next_seq - 1 - self._submitted
        if count <= 0:
            return []
        self._submitted = self._next_seq - 1
        self._close_open()
        pending = self._pending
        return [pending[i] for i in range(len(pending) - count, len(pending))]

    def untake(self, first_seq: int) -> None:
        """Stamped events from `first_seq` on count as not handed to the log writer (it
        could not write them yet and gives them back)."""
        self._submitted = min(self._submitted, max(first_seq - 1, self._head))

    def publish_through(self, seq: int) -> int:
        """Make stamped events up to `seq` visible (they are durable). Returns how many."""
        published = 0
        pending = self._pending
        while pending and pending[0].seq <= seq:
            self._retain(pending.popleft())
            published += 1
        return published

    def _retain(self, event: pb.SessionEvent) -> None:
        self._buf.append(event)
        self._head = event.seq
        if len(self) > self.capacity:
            self._start += 1
            self._base_seq += 1
            if self._start >= self.capacity:  # compact: amortised O(1) per event
                del self._buf[: self._start]
                self._start = 0

    def read_after(self, after_seq: int, limit: int | None = None) -> Replay:
        """Visible events with seq > after_seq (at most `limit`), with a gap marker when
        some are gone.

        Raises OutOfRange when after_seq is beyond the head: the caller claims to
        have seen events that do not exist.
        """
        if after_seq < 0 or after_seq > self._head:
            raise OutOfRange(f"after_seq {after_seq} is beyond the session's head {self._head}")
        gap = None
        if after_seq + 1 < self._base_seq:
            gap = pb.ReplayGap(after_seq=after_seq, first_seq=self._base_seq)
            after_seq = self._base_seq - 1
        first = self._start + (after_seq + 1 - self._base_seq)
        last = len(self._buf) if limit is None else min(len(self._buf), first + limit)
        return Replay(gap=gap, events=self._buf[first:last])

    def retained(self) -> list[pb.SessionEvent]:
        """Every visible event still in the window, oldest first."""
        return self._buf[self._start :]

    def retained_after(self, seq: int) -> list[pb.SessionEvent]:
        """The visible events still in the window with a seq above `seq`, oldest first."""
        first = self._start + max(seq + 1 - self._base_seq, 0)
        return self._buf[first:]
