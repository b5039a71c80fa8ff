"""The edge's live state: rooms, sockets and users, wired to the upstream pool.

The hub owns no protocol decisions: it feeds the Rooms what happened (socket
joins, upstream events, timers, stream loss) and carries out the effects they
return: deliver frames to sockets' send queues, answer joins, (re)subscribe
upstream, arm timers. All of it runs on the event loop's thread; nothing here
blocks, and fan-out never awaits a socket, so a slow socket cannot slow a room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agent_relay.v1 import agent_pb2 as pb
from relay_shared.edge_telemetry import EdgeTelemetry
from ws_edge.config import EdgeSettings
from ws_edge.errors import EdgeError
from ws_edge.limits import FrameBudget, FrameLimiter, RunLimiter
from ws_edge.room import (
    AckJoin,
    CatchUpWhenDrained,
    CloseSlow,
    Deliver,
    Effect,
    ExpireAt,
    FlushAt,
    Preferences,
    RejectJoin,
    Room,
    RoomClosed,
    RoomSettings,
    RoomState,
    RunFinished,
    SubscribeUpstream,
    UnsubscribeUpstream,
)
from ws_edge.upstream import UpstreamPool, UpstreamSlot

if TYPE_CHECKING:
    from agent_relay.v1 import agent_pb2_grpc

if TYPE_CHECKING:
    from ws_edge.connection import Connection

log = logging.getLogger(__name__)


class _RoomTimers:
    """A room's armed timers; kept only while one is armed (an idle room has none)."""

    __slots__ = ("expire", "flush")

    def __init__(self) -> None:
        self.flush: asyncio.TimerHandle | None = None
        self.expire: asyncio.TimerHandle | None = None


class Hub:
    """Rooms, connections and per-user budgets of one edge process."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        telemetry: EdgeTelemetry | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.settings = settings
        self.telemetry = telemetry or EdgeTelemetry(None)
        self._loop = asyncio.get_running_loop()
        self.clock = clock or self._loop.time
        self.rooms: dict[str, Room] = {}
        self._room_slots: dict[str, UpstreamSlot] = {}  # the slot each room is subscribed on
        self._timers: dict[str, _RoomTimers] = {}  # rooms with a timer armed
        self.connections: dict[int, Connection] = {}
        # A room's members are its subscribers (Room.socket_ids): no set per session here,
        # and a count per user rather than a set (memory per idle socket, PERFORMANCE.md):
        # the count is the dict's value itself (an object per user would cost 48 B), and a
        # user's frame limiter is kept only while it is not full (Hub.user_limiter).
        self._user_sockets: dict[str, int] = {}
        self._user_limiters: dict[str, FrameLimiter] = {}
        self.runs = RunLimiter(settings.max_runs_per_user)
        # The budgets every socket's and every user's limiter refer to.
        self.connection_budget = FrameBudget(
            settings.conn_frames_per_s,
            settings.conn_frames_burst,
            settings.conn_bytes_per_s,
            settings.conn_bytes_burst,
        )
        self.user_budget = FrameBudget(
            settings.user_frames_per_s,
            settings.user_frames_burst,
            settings.user_bytes_per_s,
            settings.user_bytes_burst,
        )
        self.upstream = UpstreamPool(
            settings, on_up=self._slot_up, on_down=self._slot_down, on_response=self._slot_response
        )
        # a chunk of catch-up, or a live delta frame, is at most half a send queue
        chunk = min(32_768, settings.send_queue_max_bytes // 2)
        self._room_settings = RoomSettings(  # one for all rooms
            batch_window_s=settings.batch_ms / 1000.0,
            grace_s=settings.room_grace_s,
            buffer_events=settings.room_buffer_events,
            catch_up_bytes=chunk,
            batch_max_chars=chunk,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._passes = 0  # _apply calls so far: each one's id
        self.draining = False
        self.all_closed = asyncio.Event()  # set while no socket is open
        self.all_closed.set()

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.upstream.start()

    async def stop(self) -> None:
        for timers in self._timers.values():
            for handle in (timers.flush, timers.expire):
                if handle is not None:
                    handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.upstream.stop()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run coro in the background, keeping a reference until it ends."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- connections and users -------------------------------------------------------------

    def add_connection(self, conn: Connection) -> None:
        self.connections[conn.socket_id] = conn
        self.all_closed.clear()

    def remove_connection(self, conn: Connection) -> None:
        """The socket is gone (once or more: only the first call counts)."""
        if self.connections.pop(conn.socket_id, None) is None:
            return
        if not self.connections:
            self.all_closed.set()
        for session_id in list(conn.joined):
            self.leave(conn, session_id)
        user_id = conn.user_id
        if user_id is not None:  # registered by register_user at its first auth
            count = self._user_sockets.get(user_id)
            if count is not None:
                if count > 1:
                    self._user_sockets[user_id] = count - 1
                else:
                    del self._user_sockets[user_id]
                    self._user_limiters.pop(user_id, None)

    def user_connection_count(self, user_id: str) -> int:
        return self._user_sockets.get(user_id, 0)

    def register_user(self, conn: Connection, user_id: str) -> None:
        """Count the socket against its user (once, at its first auth: the user of a
        socket never changes)."""
        self._user_sockets[user_id] = self._user_sockets.get(user_id, 0) + 1

    def user_limiter(self, user_id: str, now: float) -> FrameLimiter:
        """The frame limiter a registered user's sockets share (made again, full, once the
        sweeper let go of a full one: the same as keeping it)."""
        limiter = self._user_limiters.get(user_id)
        if limiter is None:
            limiter = FrameLimiter(self.user_budget, now)
            if user_id in self._user_sockets:  # else not registered (any more): kept by no one
                self._user_limiters[user_id] = limiter
        return limiter

    def drop_full_limiters(self, now: float) -> None:
        """Let go of the users' limiters that are full again (FrameLimiter.full); called by
        the sweeper, as each socket's own limiter is by Connection.check_timers."""
        full = [user for user, lim in self._user_limiters.items() if lim.full(now)]
        for user_id in full:
            del self._user_limiters[user_id]

    # -- rooms -----------------------------------------------------------------------------

    def join(
        self, conn: Connection, session_id: str, ref: str | None, after_seq: int, prefs: Preferences
    ) -> None:
        room = self.rooms.get(session_id)
        if room is None:
            room = self.rooms[session_id] = Room(session_id, self._room_settings)
        conn.now_joined(session_id)
        self._apply(room, room.join(conn.socket_id, ref, after_seq, prefs, self.clock()))

    def leave(self, conn: Connection, session_id: str) -> None:
        conn.now_left(session_id)
        room = self.rooms.get(session_id)
        if room is not None:
            self._apply(room, room.leave(conn.socket_id, self.clock()))

    def _apply(self, room: Room, effects: list[Effect]) -> None:
        """Carry out a room's effects, in order. The frames they give one socket are one
        pass: its send queue admits them as one (ws_edge/send_queue.py)."""
        self._passes += 1
        pass_id = self._passes
        for effect in effects:
            if isinstance(effect, Deliver):
                for socket_id in effect.socket_ids:
                    conn = self.connections.get(socket_id)
                    if conn is not None:
                        conn.send(effect.data, effect.delta, room.session_id, pass_id)
            elif isinstance(effect, AckJoin):
                conn = self.connections.get(effect.socket_id)
                if conn is not None:
                    conn.join_acked(room.session_id, effect.ref, effect.head_seq)
            elif isinstance(effect, RejectJoin):
                self._drop_member(room.session_id, (effect.socket_id,))
                conn = self.connections.get(effect.socket_id)
                if conn is not None:
                    conn.reply_error(effect.ref, effect.error, session_id=room.session_id)
            elif isinstance(effect, SubscribeUpstream):
                self.spawn(self._subscribe(room, effect.after_seq))
            elif isinstance(effect, UnsubscribeUpstream):
                self.spawn(self._unsubscribe(effect.session_id))
            elif isinstance(effect, FlushAt):
                self._arm_flush(room, effect.at)
            elif isinstance(effect, ExpireAt):
                self._arm_expiry(room, effect.at)
            elif isinstance(effect, RunFinished):
                self.runs.finish(effect.run_id)
            elif isinstance(effect, CatchUpWhenDrained):
                conn = self.connections.get(effect.socket_id)
                if conn is not None:
                    conn.when_drained(room.session_id)
            elif isinstance(effect, CloseSlow):
                conn = self.connections.get(effect.socket_id)
                if conn is not None:
                    log.warning(
                        "socket %s: fell behind the room of %s while catching up: closing 1013",
                        effect.socket_id,
                        room.session_id,
                    )
                    self._drop_member(room.session_id, (effect.socket_id,))
                    conn.close_slow()
            elif isinstance(effect, RoomClosed):
                self._close_room(room, effect.socket_ids)

    def drained(self, conn: Connection, session_id: str, budget_bytes: int) -> None:
        """A socket sent what it had queued: its catch-up of the session goes on."""
        room = self.rooms.get(session_id)
        if room is not None and session_id in conn.joined:
            self._apply(room, room.receive_drained(conn.socket_id, budget_bytes, self.clock()))

    def _drop_member(self, session_id: str, socket_ids: tuple[int, ...]) -> None:
        """The room dropped these sockets: they no longer count it as joined."""
        for socket_id in socket_ids:
            conn = self.connections.get(socket_id)
            if conn is not None:
                conn.now_left(session_id)

    def _close_room(self, room: Room, dropped: tuple[int, ...]) -> None:
        session_id = room.session_id
        if self.rooms.get(session_id) is room:
            del self.rooms[session_id]
        timers = self._timers.pop(session_id, None)
        if timers is not None:
            for handle in (timers.flush, timers.expire):
                if handle is not None:
                    handle.cancel()
        self._drop_member(session_id, dropped)

    def _timers_of(self, session_id: str) -> _RoomTimers:
        timers = self._timers.get(session_id)
        if timers is None:
            timers = self._timers[session_id] = _RoomTimers()
        return timers

    def _timer_done(self, session_id: str, timers: _RoomTimers) -> None:
        """A timer of the room fired or was cancelled: forget the pair once both are."""
        if (
            timers.flush is None
            and timers.expire is None
            and self._timers.get(session_id) is timers
        ):
            del self._timers[session_id]

    def _arm_flush(self, room: Room, at: float) -> None:
        timers = self._timers_of(room.session_id)
        if timers.flush is not None:
            timers.flush.cancel()

        def fire() -> None:
            timers.flush = None
            self._timer_done(room.session_id, timers)
            if self.rooms.get(room.session_id) is room:
                self._apply(room, room.receive_flush_due(self.clock()))

        timers.flush = self._loop.call_at(at, fire)

    def _arm_expiry(self, room: Room, at: float | None) -> None:
        timers = self._timers.get(room.session_id)
        if timers is not None and timers.expire is not None:
            timers.expire.cancel()
            timers.expire = None
            self._timer_done(room.session_id, timers)
        if at is None:
            return
        timers = self._timers_of(room.session_id)

        def fire() -> None:
            timers.expire = None
            self._timer_done(room.session_id, timers)
            if self.rooms.get(room.session_id) is room:
                self._apply(room, room.receive_expired(self.clock()))

        timers.expire = self._loop.call_at(at, fire)

    # -- upstream --------------------------------------------------------------------------

    def _slot_of(self, session_id: str, *, assign: bool = False) -> UpstreamSlot:
        """The slot a session's room is subscribed on; when it has none (or it is down), the
        slot that ranks first for the session now, which becomes the room's with `assign`."""
        slot = self._room_slots.get(session_id)
        if slot is None or not slot.up:
            slot = self.upstream.slot_for(session_id)
            if assign:
                self._room_slots[session_id] = slot
        return slot

    async def _subscribe(self, room: Room, after_seq: int) -> None:
        slot = self._slot_of(room.session_id, assign=True)
        request = pb.ChatRequest(
            join=pb.JoinSession(session_id=room.session_id, after_seq=after_seq)
        )
        try:
            reply = await slot.command(request)
        except EdgeError as error:
            if self.rooms.get(room.session_id) is room:
                self._apply(room, room.receive_join_failed(error, self.clock()))
                if room.state is RoomState.UPSTREAM_LOST and slot.up:
                    # The stream is fine but the join failed (a timeout, say): try again
                    # later; a stream that breaks meanwhile resubscribes on its own.
                    self._loop.call_later(1.0, self._retry_subscribe, room)
            return
        if self.rooms.get(room.session_id) is room:
            self._apply(room, room.receive_joined(reply.joined.head_seq, self.clock()))

    def _retry_subscribe(self, room: Room) -> None:
        if self.rooms.get(room.session_id) is room and self._slot_of(room.session_id).up:
            self._apply(room, room.receive_upstream_restored(self.clock()))

    async def _unsubscribe(self, session_id: str) -> None:
        if session_id in self.rooms:
            return  # a new room for the session exists already: it needs the subscription
        slot = self._room_slots.pop(session_id, None)
        if slot is None:
            return
        try:
            await slot.command(pb.ChatRequest(leave=pb.LeaveSession(session_id=session_id)))
        except EdgeError:
            pass  # the stream is gone, and the subscription with it

    def _slot_up(self, slot: UpstreamSlot) -> None:
        """A stream opened: rooms that lost theirs resubscribe (on the slot that now ranks
        first for each); rooms on other live slots stay where they are."""
        for session_id, room in list(self.rooms.items()):
            if room.state is RoomState.UPSTREAM_LOST:
                self._room_slots.pop(session_id, None)
                self._apply(room, room.receive_upstream_restored(self.clock()))

    def _slot_down(self, slot: UpstreamSlot) -> None:
        """A stream broke: its rooms are told, and move at once to another live slot if any
        (another replica); otherwise they wait for one to come up."""
        moved = [sid for sid, on in self._room_slots.items() if on is slot]
        for session_id in moved:
            del self._room_slots[session_id]
            room = self.rooms.get(session_id)
            if room is None:
                continue
            self._apply(room, room.receive_upstream_lost(self.clock()))
            if any(other.up for other in self.upstream.slots):
                self._apply(room, room.receive_upstream_restored(self.clock()))

    def _slot_response(self, slot: UpstreamSlot, response: pb.ChatResponse) -> None:
        now = self.clock()
        by_session: dict[str, list[pb.SessionEvent]] = {}
        for event in response.events:
            by_session.setdefault(event.session_id, []).append(event)
        for session_id, events in by_session.items():
            room = self.rooms.get(session_id)
            if room is not None:
                self._apply(room, room.receive_events(events, now))

    async def command(self, session_id: str, request: pb.ChatRequest) -> pb.CommandReply:
        """Send a command on the session's upstream stream; raises EdgeError."""
        return await self._slot_of(session_id).command(request)

    def stub_for(self, session_id: str) -> agent_pb2_grpc.AgentServiceStub:
        """A stub for a unary call about a session: the replica its room is on."""
        return self._slot_of(session_id).stub

    def members(self, session_id: str) -> set[int]:
        room = self.rooms.get(session_id)
        return set(room.socket_ids) if room is not None else set()
