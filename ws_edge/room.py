"""A room: the sockets on this node following one session. Pure: no I/O, no clock of its own.

The room is fed what happened (`join`, `leave`, `receive_events`, `receive_joined`,
`receive_flush_due`, `receive_upstream_lost`, ...) with the current time, and
returns a list of effects for the I/O layer to carry out, in order:

- `Deliver(socket_ids, data, delta)`: send the same frame to each socket (an `OutFrame`,
  encoded once per wire format in use, ws_edge/wire.py);
- `AckJoin` / `RejectJoin`: answer a socket's join frame;
- `SubscribeUpstream(after_seq)` / `UnsubscribeUpstream`: (re)join or leave the
  session on the upstream Chat stream;
- `FlushAt(at)`: call `receive_flush_due` at that time (the delta batch window);
- `ExpireAt(at)`: call `receive_expired` at that time (None: cancel); the grace period;
- `RunFinished(run_id)`: a run ended (the per-user run limiter listens);
- `CatchUpWhenDrained(socket_id)`: call `receive_drained` once that socket has sent
  what it has queued (its catch-up goes on);
- `CloseSlow(socket_id)`: close the socket 1013: it fell behind what the room keeps;
- `RoomClosed`: forget the room.

Delivery rules. The room accepts an upstream event only if its seq is the next
one expected, so a replay overlapping live events, or events of an old
subscription still in flight, are dropped rather than repeated. Each socket has
an `after_seq`: the last seq it was sent or chose to skip; it is sent only
events after that, so a resuming socket gets exactly the events it missed.
A join whose `after_seq` is beyond the session's head (as the live room knows
it, or as the upstream join reply says) is refused with `invalid_field`. A join
whose `after_seq` is inside the room's buffer of recent events is replayed from
the buffer; an older one rewinds the upstream subscription, and
the other sockets skip what they already have.

Deltas of one run and step are batched: the first after a quiet window goes out
at once, later ones within `batch_window_s` of the last delta frame share one
frame (`from_seq`..`seq`), up to `batch_max_chars` of text: a backlog the service
sends at once (a fast reply, or the events after a stall) goes out as frames of a
bounded size, never as one frame larger than a socket's send queue may hold.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent_relay.v1 import agent_pb2 as pb
from ws_edge.errors import EdgeError, ErrorCode
from ws_edge.events import FINAL_TOOL_STATUSES, delta_frame, encode_event, event_kind, tool_status
from ws_edge.frames import error_frame, upstream_frame
from ws_edge.wire import FieldsFrame, OutFrame

_FRAME_OVERHEAD_BYTES = 160  # about what a frame's fields add to its text, in JSON


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """What every room of an edge is configured with: one object the rooms share (each
    room holding these values itself would cost it four more slots)."""

    batch_window_s: float  # deltas of a run within this long of the last delta frame share one
    grace_s: float  # an empty room lingers this long
    buffer_events: int  # recent events kept to replay a resuming socket
    max_linger_s: float = 900.0  # at most this long after the last socket left, open runs or not
    catch_up_bytes: int = 32_768  # about this much in a join's first chunk of catch-up
    batch_max_chars: int = 32_768  # a live delta frame goes out once its text holds this much


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a socket wants live: every delta or only completions; every tool update or finals."""

    deltas: bool = True
    tool_output: bool = True


@dataclass(frozen=True)
class DeltaInfo:
    """What a delta frame says, so a send queue can merge adjacent ones."""

    session_id: str
    run_id: str
    step: int
    from_seq: int
    seq: int
    time_unix_ms: int
    text: str

    def merged(self, later: DeltaInfo) -> DeltaInfo:
        return DeltaInfo(
            self.session_id,
            self.run_id,
            self.step,
            self.from_seq,
            later.seq,
            later.time_unix_ms,
            self.text + later.text,
        )

    def can_merge(self, later: DeltaInfo) -> bool:
        return (self.session_id, self.run_id, self.step) == (
            later.session_id,
            later.run_id,
            later.step,
        ) and later.from_seq == self.seq + 1

    def encode(self) -> OutFrame:
        return delta_frame(
            session_id=self.session_id,
            run_id=self.run_id,
            from_seq=self.from_seq,
            seq=self.seq,
            time_unix_ms=self.time_unix_ms,
            text=self.text,
            step=self.step,
        )


@dataclass(frozen=True)
class Deliver:
    socket_ids: tuple[int, ...]
    data: OutFrame
    delta: DeltaInfo | None = None


@dataclass(frozen=True)
class AckJoin:
    socket_id: int
    ref: str | None
    head_seq: int


@dataclass(frozen=True)
class RejectJoin:
    socket_id: int
    ref: str | None
    error: EdgeError


@dataclass(frozen=True)
class SubscribeUpstream:
    session_id: str
    after_seq: int


@dataclass(frozen=True)
class UnsubscribeUpstream:
    session_id: str


@dataclass(frozen=True)
class FlushAt:
    at: float


@dataclass(frozen=True)
class ExpireAt:
    at: float | None


@dataclass(frozen=True)
class RunFinished:
    run_id: str


@dataclass(frozen=True)
class CatchUpWhenDrained:
    socket_id: int


@dataclass(frozen=True)
class CloseSlow:
    socket_id: int


@dataclass(frozen=True)
class RoomClosed:
    session_id: str
    socket_ids: tuple[int, ...] = ()  # the sockets it still had, dropped with it


Effect = (
    Deliver
    | AckJoin
    | RejectJoin
    | SubscribeUpstream
    | UnsubscribeUpstream
    | FlushAt
    | ExpireAt
    | RunFinished
    | CatchUpWhenDrained
    | CloseSlow
    | RoomClosed
)


class RoomState(enum.Enum):
    NEW = "new"  # no upstream subscription yet
    SUBSCRIBING = "subscribing"  # a join was sent upstream; its reply has not come
    LIVE = "live"  # following the session upstream
    UPSTREAM_LOST = "lost"  # the upstream stream broke; waiting for it to come back
    CLOSED = "closed"


@dataclass(slots=True)
class _Subscriber:
    socket_id: int
    after_seq: int
    prefs: Preferences
    catching_up: bool = False  # fed from the buffer as it drains, not by live fan-out
    draining: bool = False  # a chunk is out: the next when the socket drains


@dataclass(slots=True)
class _Buffered:
    event: pb.SessionEvent
    data: OutFrame | None = None

    def frame(self) -> OutFrame:
        if self.data is None:
            self.data = encode_event(self.event)
        return self.data


@dataclass(slots=True)
class _Batch:
    run_id: str
    step: int
    parts: list[tuple[int, str]] = field(default_factory=list)
    time_unix_ms: int = 0
    chars: int = 0


class Room:
    """Sockets joined to one session on this node. Does no I/O; see the module docstring."""

    # Slots, shared settings, and the event buffer, open-run set and waiting joins made at
    # first use: an edge holds one room per session its sockets follow, most of them idle
    # (PERFORMANCE.md: memory per idle socket; an empty deque alone costs 600 bytes, an
    # empty dict 64). Most rooms have one subscriber: it is kept as it is, and a dict of
    # the subscribers made only when a second one joins (a dict of one costs 184 bytes).
    __slots__ = (
        "_base_seq",
        "_batch",
        "_buffer",
        "_catching_up",
        "_empty_since",
        "_flush_scheduled",
        "_head_seq",
        "_last_flush_at",
        "_next_seq",
        "_open_runs",
        "_settings",
        "_subs",
        "_told_lost",
        "_waiting",
        "session_id",
        "state",
    )

    def __init__(self, session_id: str, settings: RoomSettings) -> None:
        self.session_id = session_id
        self.state = RoomState.NEW
        self._settings = settings
        self._buffer: deque[_Buffered] | None = None
        self._catching_up = 0  # subscribers fed from the buffer as they drain
        # The subscribers: None, the only one, or a dict by socket id of two or more (the
        # _members section below is all that reads or changes it).
        self._subs: _Subscriber | dict[int, _Subscriber] | None = None
        # socket id -> join ref awaiting the upstream reply; None while none waits
        self._waiting: dict[int, str | None] | None = None
        self._told_lost = False  # sockets were told the upstream is gone: tell them it is back
        self._next_seq = 1
        self._base_seq = 0  # the buffer holds (base_seq, next_seq)
        self._head_seq = 0
        self._batch: _Batch | None = None
        self._last_flush_at = _NEVER
        self._flush_scheduled = False
        # Runs accepted and not yet completed: while there are some, an empty room lingers
        # (up to max_linger_s) so their completion is seen and the run limit released.
        self._open_runs: set[str] | None = None
        self._empty_since: float | None = None

    # -- what the room knows -------------------------------------------------------------

    @property
    def socket_ids(self) -> tuple[int, ...]:
        return tuple(sub.socket_id for sub in self._members())

    @property
    def last_seq(self) -> int:
        """The last seq accepted from upstream (the resume point for a resubscription)."""
        return self._next_seq - 1

    def after_seq_of(self, socket_id: int) -> int:
        sub = self._member(socket_id)
        if sub is None:
            raise KeyError(socket_id)
        return sub.after_seq

    # -- the subscribers ---------------------------------------------------------------------

    def _members(self) -> Iterable[_Subscriber]:
        """The subscribers, in join order (do not join or leave while iterating)."""
        subs = self._subs
        if isinstance(subs, dict):
            return subs.values()
        return () if subs is None else (subs,)

    def _member(self, socket_id: int) -> _Subscriber | None:
        subs = self._subs
        if isinstance(subs, dict):
            return subs.get(socket_id)
        return subs if subs is not None and subs.socket_id == socket_id else None

    def _add_member(self, sub: _Subscriber) -> None:
        """Add a subscriber whose socket is not one yet."""
        subs = self._subs
        if subs is None:
            self._subs = sub
        elif isinstance(subs, dict):
            subs[sub.socket_id] = sub
        else:
            self._subs = {subs.socket_id: subs, sub.socket_id: sub}

    def _remove_member(self, socket_id: int) -> _Subscriber | None:
        """Remove the socket's subscriber and return it (None if it had none); the last one
        of a dict is kept inline again."""
        subs = self._subs
        if isinstance(subs, dict):
            sub = subs.pop(socket_id, None)
            if len(subs) == 1:
                (self._subs,) = subs.values()
            return sub
        if subs is not None and subs.socket_id == socket_id:
            self._subs = None
            return subs
        return None

    # -- sockets ---------------------------------------------------------------------------

    def join(
        self, socket_id: int, ref: str | None, after_seq: int, prefs: Preferences, now: float
    ) -> list[Effect]:
        """A socket follows the session from after_seq on (a repeated join replaces the first)."""
        if self.state is RoomState.CLOSED:
            raise RuntimeError("join on a closed room")
        if self.state is RoomState.LIVE and after_seq > self._head_seq:
            # The socket claims events this session does not have yet (a stale client, or a
            # service that lost its log): acked, it would wait in silence for seqs that may
            # never come, or drop every event up to there as seen. Refused as the service
            # refuses it (OUT_OF_RANGE); a previous join of the socket is dropped.
            rejected = RejectJoin(socket_id, ref, self._beyond_head(after_seq))
            return [rejected, *self.leave(socket_id, now)]
        replaced = self._remove_member(socket_id)
        if replaced is not None and replaced.catching_up:
            self._catching_up -= 1
        effects: list[Effect] = [ExpireAt(None)]
        if self.state is RoomState.NEW:
            self.state = RoomState.SUBSCRIBING
            self._next_seq = self._base_seq = self._head_seq = after_seq
            self._next_seq += 1
            effects.append(SubscribeUpstream(self.session_id, after_seq))
        self._flush(now, effects)
        last = self.last_seq
        sub = _Subscriber(socket_id, after_seq, prefs)
        replay: list[Effect] = []
        if after_seq < last and after_seq >= self._base_seq:
            sub.catching_up = True
            self._catching_up += 1
            replay = self._catch_up(sub, self._settings.catch_up_bytes)
        elif after_seq < last:
            self._rewind(after_seq, effects)
            sub.catching_up = True  # the replay comes into the buffer, and out as it drains
            self._catching_up += 1
        self._add_member(sub)
        if self.state is RoomState.LIVE:
            effects.append(AckJoin(socket_id, ref, self._head_seq))
        elif self.state is RoomState.UPSTREAM_LOST:
            effects.append(AckJoin(socket_id, ref, self._head_seq))
            effects.append(Deliver((socket_id,), self._lost_frame()))
            effects.append(Deliver((socket_id,), upstream_frame(self.session_id, "unavailable")))
            self._told_lost = True
        else:
            waiting = self._waiting
            if waiting is None:
                waiting = self._waiting = {}
            waiting[socket_id] = ref
        effects.extend(replay)
        return effects

    def leave(self, socket_id: int, now: float) -> list[Effect]:
        """A socket stops following; the last one out starts the grace period."""
        sub = self._remove_member(socket_id)
        if sub is None:
            return []
        if sub.catching_up:
            self._catching_up -= 1
        waiting = self._waiting
        if waiting is not None:
            waiting.pop(socket_id, None)
            if not waiting:
                self._waiting = None
        if self._subs is not None or self.state is RoomState.CLOSED:
            return []
        self._empty_since = now
        return [ExpireAt(now + self._settings.grace_s)]

    def receive_expired(self, now: float) -> list[Effect]:
        """The grace period ended: close unless a socket came back, or a run is still open
        (then wait another grace period, up to max_linger_s after the last socket left)."""
        if self._subs is not None or self.state is RoomState.CLOSED:
            return []
        since = now if self._empty_since is None else self._empty_since
        settings = self._settings
        if self._open_runs and now - since < settings.max_linger_s:
            return [ExpireAt(now + settings.grace_s)]
        subscribed = self.state in (RoomState.SUBSCRIBING, RoomState.LIVE)
        self.state = RoomState.CLOSED
        effects: list[Effect] = [UnsubscribeUpstream(self.session_id)] if subscribed else []
        effects.append(RoomClosed(self.session_id))
        return effects

    # -- upstream --------------------------------------------------------------------------

    def receive_joined(self, head_seq: int, now: float) -> list[Effect]:
        """The upstream join succeeded: answer the joins that waited for it."""
        if self.state is not RoomState.SUBSCRIBING:
            return []
        self.state = RoomState.LIVE
        self._head_seq = max(self._head_seq, head_seq)
        waiting, self._waiting = self._waiting or {}, None
        effects: list[Effect] = []
        for sid, ref in waiting.items():
            sub = self._member(sid)
            if sub is not None and sub.after_seq > self._head_seq:
                self._remove_member(sid)  # joined while subscribing, claiming beyond the head
                effects.append(RejectJoin(sid, ref, self._beyond_head(sub.after_seq)))
            else:
                effects.append(AckJoin(sid, ref, self._head_seq))
        if self._told_lost and self._subs is not None:
            effects.append(Deliver(self.socket_ids, upstream_frame(self.session_id, "available")))
        self._told_lost = False
        if self._catching_up:
            self._wake_catch_ups(effects)
        if self._subs is None and len(effects) > 0:
            self._empty_since = now
            effects.append(ExpireAt(now + self._settings.grace_s))
        return effects

    def receive_join_failed(self, error: EdgeError, now: float) -> list[Effect]:
        """The upstream join failed: refuse the waiting joins; a retryable failure waits for
        the stream to come back, any other closes the room (its sockets are told)."""
        if self.state is not RoomState.SUBSCRIBING:
            return []
        effects: list[Effect] = []
        for sid, ref in (self._waiting or {}).items():
            self._remove_member(sid)
            effects.append(RejectJoin(sid, ref, error))
        self._waiting = None
        if error.retryable and self._subs is not None:
            self.state = RoomState.UPSTREAM_LOST
            return effects
        dropped = self.socket_ids
        if dropped:
            effects.append(Deliver(dropped, error_frame(error, None, session_id=self.session_id)))
        self._subs = None
        self.state = RoomState.CLOSED
        effects.append(RoomClosed(self.session_id, dropped))
        return effects

    def receive_upstream_lost(self, now: float) -> list[Effect]:
        """The stream carrying this room broke: tell the sockets, wait for it to come back."""
        if self.state in (RoomState.CLOSED, RoomState.NEW):
            return []
        effects: list[Effect] = []
        self._flush(now, effects)
        self.state = RoomState.UPSTREAM_LOST
        error = _upstream_error()
        for sid, ref in (self._waiting or {}).items():
            self._remove_member(sid)
            effects.append(RejectJoin(sid, ref, error))
        self._waiting = None
        if self._subs is not None:
            effects.append(Deliver(self.socket_ids, self._lost_frame()))
            effects.append(Deliver(self.socket_ids, upstream_frame(self.session_id, "unavailable")))
            self._told_lost = True
        else:
            self.state = RoomState.CLOSED
            effects.append(RoomClosed(self.session_id))
        return effects

    def receive_upstream_restored(self, now: float) -> list[Effect]:
        """The stream is back: resubscribe at the last seq the room accepted."""
        if self.state is not RoomState.UPSTREAM_LOST:
            return []
        self.state = RoomState.SUBSCRIBING
        return [SubscribeUpstream(self.session_id, self.last_seq)]

    def receive_events(self, events: list[pb.SessionEvent], now: float) -> list[Effect]:
        """Events of this session from upstream, in log order."""
        effects: list[Effect] = []
        if self.state is RoomState.CLOSED:
            return effects
        for event in events:
            kind = event_kind(event)
            if kind == "replay_gap":
                self._gap(event, now, effects)
                continue
            if event.seq < self._next_seq:
                continue  # already accepted: a replay overlapping what the room has
            if event.seq > self._next_seq:
                # Events went missing between the service and us: never skip ahead.
                if self.state is not RoomState.SUBSCRIBING:
                    self.state = RoomState.SUBSCRIBING
                    effects.append(SubscribeUpstream(self.session_id, self.last_seq))
                continue
            self._accept(event, kind, now, effects)
        if self._batch is not None:
            window_s = self._settings.batch_window_s
            if now - self._last_flush_at >= window_s:
                self._flush(now, effects)
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                effects.append(FlushAt(self._last_flush_at + window_s))
        if self._catching_up:
            self._wake_catch_ups(effects)
        return effects

    def receive_drained(self, socket_id: int, budget_bytes: int, now: float) -> list[Effect]:
        """A catching-up socket sent what it had queued: its next chunk, of about
        `budget_bytes` (what its send queue has room for)."""
        sub = self._member(socket_id)
        if sub is None or not sub.catching_up:
            return []
        sub.draining = False
        effects: list[Effect] = []
        self._continue_catch_up(sub, budget_bytes, effects)
        return effects

    def _continue_catch_up(
        self, sub: _Subscriber, budget_bytes: int, effects: list[Effect]
    ) -> None:
        if sub.after_seq < self._base_seq:
            # The buffer dropped events the socket has yet to get (the upstream replay
            # outran it): fetch them again from its after_seq; the others skip the overlap.
            self._rewind(sub.after_seq, effects)
        else:
            effects.extend(self._catch_up(sub, budget_bytes))

    def _wake_catch_ups(self, effects: list[Effect], before_seq: int | None = None) -> None:
        """Catching-up sockets that waited for the buffer to reach past them go on (only
        those still short of `before_seq`, when given)."""
        for sub in list(self._members()):
            if sub.catching_up and not sub.draining:
                if before_seq is None or sub.after_seq < before_seq:
                    self._continue_catch_up(sub, self._settings.catch_up_bytes, effects)

    def receive_flush_due(self, now: float) -> list[Effect]:
        """The batch window of the pending deltas ended."""
        self._flush_scheduled = False
        effects: list[Effect] = []
        self._flush(now, effects)
        return effects

    # -- inside ----------------------------------------------------------------------------

    def _accept(
        self, event: pb.SessionEvent, kind: str | None, now: float, effects: list[Effect]
    ) -> None:
        self._next_seq = event.seq + 1
        self._head_seq = max(self._head_seq, event.seq)
        buffered = _Buffered(event)
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = deque(maxlen=self._settings.buffer_events)
        elif len(buffer) == buffer.maxlen:
            if self._catching_up:  # a waiting catch-up takes its next chunk before the drop
                self._wake_catch_ups(effects, before_seq=buffer[0].event.seq)
            self._base_seq = buffer[0].event.seq
        buffer.append(buffered)
        if kind == "response_delta":
            delta = event.response_delta
            batch = self._batch
            if batch is not None and (batch.run_id, batch.step) != (event.run_id, delta.step):
                self._flush(now, effects)
                batch = None
            if batch is None:
                batch = self._batch = _Batch(event.run_id, delta.step)
            batch.parts.append((event.seq, delta.text))
            batch.time_unix_ms = event.time_unix_ms
            batch.chars += len(delta.text)
            if batch.chars >= self._settings.batch_max_chars:
                self._flush(now, effects)
            return
        self._flush(now, effects)
        targets = [
            sub for sub in self._members() if sub.after_seq < event.seq and not sub.catching_up
        ]
        wanted = tuple(sub.socket_id for sub in targets if _wants(sub.prefs, event))
        if wanted:
            effects.append(Deliver(wanted, buffered.frame()))
        for sub in targets:
            sub.after_seq = event.seq
        if kind == "message_accepted" and event.run_id:
            if self._open_runs is None:
                self._open_runs = set()
            self._open_runs.add(event.run_id)
        elif kind == "run_completed":
            if self._open_runs is not None:
                self._open_runs.discard(event.run_id)
            effects.append(RunFinished(event.run_id))

    def _flush(self, now: float, effects: list[Effect]) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        self._last_flush_at = now
        last = batch.parts[-1][0]
        whole: list[int] = []
        for sub in self._members():
            if sub.after_seq >= last or sub.catching_up:
                continue
            if sub.prefs.deltas:
                if sub.after_seq < batch.parts[0][0]:
                    whole.append(sub.socket_id)
                else:  # the socket has the head of this batch already (after a rewind)
                    info = self._delta_info(batch, sub.after_seq)
                    effects.append(Deliver((sub.socket_id,), info.encode(), info))
            sub.after_seq = last
        if whole:
            info = self._delta_info(batch, -1)
            effects.append(Deliver(tuple(whole), info.encode(), info))

    def _delta_info(self, batch: _Batch, after_seq: int) -> DeltaInfo:
        parts = [(seq, text) for seq, text in batch.parts if seq > after_seq]
        return DeltaInfo(
            self.session_id,
            batch.run_id,
            batch.step,
            parts[0][0],
            parts[-1][0],
            batch.time_unix_ms,
            "".join(text for _, text in parts),
        )

    def _catch_up(self, sub: _Subscriber, budget_bytes: int) -> list[Effect]:
        """Frames of the buffered events after the socket's after_seq, deltas of a step
        batched, until about `budget_bytes` are out; then wait for the socket to drain,
        or, at the newest event, the socket is live again."""
        socket_id = sub.socket_id
        effects: list[Effect] = []
        batch: _Batch | None = None
        batch_chars = 0
        spent = 0

        def flush_replay() -> None:
            if batch is not None and sub.prefs.deltas:
                info = self._delta_info(batch, -1)
                effects.append(Deliver((socket_id,), info.encode(), info))

        buffer = self._buffer or ()
        first = sub.after_seq + 1 - buffer[0].event.seq if buffer else 0
        for item in itertools.islice(buffer, max(first, 0), None):
            if spent + batch_chars >= budget_bytes:
                break
            event = item.event
            if event_kind(event) == "response_delta":
                step = event.response_delta.step
                if batch is None or (batch.run_id, batch.step) != (event.run_id, step):
                    flush_replay()
                    spent += batch_chars + _FRAME_OVERHEAD_BYTES
                    batch, batch_chars = _Batch(event.run_id, step), 0
                text = event.response_delta.text
                batch.parts.append((event.seq, text))
                batch.time_unix_ms = event.time_unix_ms
                batch_chars += len(text)
            else:
                flush_replay()
                spent += batch_chars
                batch, batch_chars = None, 0
                if _wants(sub.prefs, event):
                    effects.append(Deliver((socket_id,), item.frame()))
                    spent += event.ByteSize() + _FRAME_OVERHEAD_BYTES
            sub.after_seq = event.seq
        flush_replay()
        caught_up = sub.after_seq >= self.last_seq and sub.after_seq >= self._head_seq
        if caught_up and self.state is RoomState.LIVE:
            sub.catching_up = False  # live from here on
            self._catching_up -= 1
        elif effects:
            sub.draining = True
            effects.append(CatchUpWhenDrained(socket_id))
        # else: nothing buffered past it yet (a replay on its way): receive_events wakes it
        return effects

    def _close_catching_up(self, now: float, effects: list[Effect]) -> None:
        """Close 1013 the catching-up sockets (a gap would skip what they have yet to get
        from the buffer): they resume by seq."""
        slow = [sub.socket_id for sub in self._members() if sub.catching_up]
        for sid in slow:
            effects.append(CloseSlow(sid))
            effects.extend(self.leave(sid, now))

    def _rewind(self, after_seq: int, effects: list[Effect]) -> None:
        """Resubscribe upstream from an older seq; sockets ahead of it skip the overlap
        (catching-up ones go on from the buffer as the replay refills it)."""
        self._buffer = None
        self._next_seq = after_seq + 1
        self._base_seq = after_seq
        if self.state in (RoomState.LIVE, RoomState.SUBSCRIBING):
            self.state = RoomState.SUBSCRIBING
            effects.append(SubscribeUpstream(self.session_id, after_seq))

    def _gap(self, event: pb.SessionEvent, now: float, effects: list[Effect]) -> None:
        first_seq = event.replay_gap.first_seq
        self._flush(now, effects)
        if self._catching_up:  # the gap would skip what they have yet to get from the buffer
            self._close_catching_up(now, effects)
        for sub in self._members():
            if sub.after_seq < first_seq - 1:
                frame = {
                    "type": "chat:gap",
                    "session_id": self.session_id,
                    "run_id": "",
                    "time_unix_ms": event.time_unix_ms,
                    "after_seq": sub.after_seq,
                    "first_seq": first_seq,
                }
                effects.append(Deliver((sub.socket_id,), FieldsFrame(frame)))
                sub.after_seq = first_seq - 1
        if first_seq > self._next_seq:
            self._buffer = None
            self._next_seq = first_seq
            self._base_seq = first_seq - 1

    def _beyond_head(self, after_seq: int) -> EdgeError:
        return EdgeError(
            ErrorCode.OUT_OF_RANGE,
            f"after_seq: {after_seq} is beyond the session's head {self._head_seq}",
        )

    def _lost_frame(self) -> OutFrame:
        return error_frame(_upstream_error(), None, session_id=self.session_id)


_NEVER = float("-inf")  # one float for every room that has not flushed yet


def _upstream_error() -> EdgeError:
    return EdgeError(
        ErrorCode.UPSTREAM_UNAVAILABLE,
        "the agent service does not answer; the edge reconnects and resumes",
        1000,
    )


def _wants(prefs: Preferences, event: pb.SessionEvent) -> bool:
    if prefs.tool_output:
        return True
    status = tool_status(event)
    return status is None or status in FINAL_TOOL_STATUSES
