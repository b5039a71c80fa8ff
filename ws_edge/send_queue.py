"""One socket's bounded send queue and its slow-consumer policy. Pure: no I/O.

Frames wait here while the socket's transport is busy. Past
`coalesce_after_frames` queued frames the socket is falling behind: a new delta
frame is merged into the last queued frame of its session when that one is a
delta of the same run and step that it continues (the client sees fewer,
longer `chat:response` frames and loses nothing). When the queue already held
more than `max_bytes` before a push (so one large frame, such as a long
`chat:complete`, always fits), or holds more than `max_frames`, `push` returns
False: the socket must be closed with 1013 and will resume by seq, so one slow
consumer never holds back the room.

The frames one pass of the edge gives a socket (`pass_id`: the frames a room made
of one upstream response, which a live batch cuts at `batch_max_chars`) are
admitted as one: each against the backlog before the first of them, as one large
frame would be. The socket has had no chance to read any of them, so a fast
reader is not closed for a backlog the service sent at once; and the frames past
the first still wait here, not in the transport, so a reader that does stall
gets no more than the bound (they are dropped with the queue at the close).

The bound covers the bytes the socket's transport still holds, too (`held_bytes`,
from `transport.get_write_buffer_size()`): a frame written to the transport has
left the queue but not the process, and a peer that does not read must not get a
second, unbounded buffer beside this one.

Frames are pushed as `OutFrame`s and queued as bytes of the socket's wire format
(`wire`): the frame shared by a room's sockets is encoded once per format.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ws_edge.room import DeltaInfo
from ws_edge.wire import OutFrame, Wire


@dataclass(slots=True)
class QueuedFrame:
    data: bytes
    session_id: str | None
    delta: DeltaInfo | None


class SendQueue:
    """Bounded FIFO of frames for one socket; see the module docstring."""

    __slots__ = (
        "_coalesce_after",
        "_frames",
        "_last_of_session",
        "_max_bytes",
        "_max_frames",
        "_pass_backlog",
        "_pass_id",
        "_wire",
        "bytes",
        "coalesced",
    )

    def __init__(
        self,
        *,
        max_bytes: int,
        max_frames: int,
        coalesce_after_frames: int,
        wire: Wire = Wire.JSON,
    ) -> None:
        self._wire = wire
        self._max_bytes = max_bytes
        self._max_frames = max_frames
        self._coalesce_after = coalesce_after_frames
        # Made at the first frame and dropped when the queue empties: most sockets are idle
        # with nothing queued, and an empty deque costs 600 bytes.
        self._frames: deque[QueuedFrame] | None = None
        self._last_of_session: dict[str, QueuedFrame] | None = None
        self.bytes = 0
        self.coalesced = 0  # frames merged into earlier ones, for metrics and tests
        self._pass_id = 0  # the pass the last push belonged to (0: none)
        self._pass_backlog = 0  # the backlog (queue and transport) before that pass's first

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else 0

    def push(
        self,
        frame: OutFrame,
        delta: DeltaInfo | None = None,
        session_id: str | None = None,
        *,
        held_bytes: int = 0,
        pass_id: int = 0,
    ) -> bool:
        """Queue a frame. False: the queue (with the `held_bytes` its transport still holds)
        is over its bound and the socket must close 1013. Frames pushed with the same
        nonzero `pass_id`, one after the other, are judged by the backlog before the first
        of them."""
        session = delta.session_id if delta is not None else session_id
        if not pass_id or pass_id != self._pass_id:
            self._pass_id, self._pass_backlog = pass_id, self.bytes + held_bytes
        before = self._pass_backlog
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
            self._last_of_session = {}
        last_of_session = self._last_of_session
        assert last_of_session is not None
        if delta is not None and len(frames) >= self._coalesce_after:
            last = last_of_session.get(delta.session_id)
            if last is not None and last.delta is not None and last.delta.can_merge(delta):
                merged = last.delta.merged(delta)
                new_data = merged.encode().data(self._wire)
                self.bytes += len(new_data) - len(last.data)
                last.data, last.delta = new_data, merged
                self.coalesced += 1
                return before <= self._max_bytes
        data = frame.data(self._wire)
        item = QueuedFrame(data, session, delta)
        frames.append(item)
        if session is not None:
            last_of_session[session] = item
        self.bytes += len(data)
        return before <= self._max_bytes and len(frames) <= self._max_frames

    def pop(self) -> bytes | None:
        """The next frame to write, or None when the queue is empty."""
        frames = self._frames
        if frames is None:
            return None
        item = frames.popleft()
        self.bytes -= len(item.data)
        self._pass_id = 0  # a write ends the pass: the next push measures the backlog anew
        if not frames:  # every queued frame is out: nothing is the last of its session
            self._frames = self._last_of_session = None
        elif item.session_id is not None:
            last_of_session = self._last_of_session
            assert last_of_session is not None
            if last_of_session.get(item.session_id) is item:
                del last_of_session[item.session_id]
        return item.data

    def clear(self) -> None:
        self._frames = self._last_of_session = None
        self.bytes = 0
        self._pass_id = self._pass_backlog = 0
