"""One WebSocket: its frames in, through validation, limits and auth, to the hub; frames out
through its bounded send queue.

Calling rule: `receive_frame` is called by the socket's read loop for every text or
binary frame, in order; `send` is called by the hub (never awaits: it queues, and a
writer task exists only while the queue is non-empty, so an idle socket owns no
task of its own); `close` may be called from anywhere, once or many times.

Expiry holds on delivery too: once the token's `exp` has passed, the socket gets
no more frames of its sessions. It is told with one `unauthenticated` notice per
joined session (which it leaves, so nothing it missed is skipped): after an
`auth` with a fresh token it joins again from its last `seq`.

The socket speaks the wire format chosen at the handshake (`wire`, ws_edge/wire.py):
its frames in are decoded for it, and frames out are written as text (JSON) or
binary (proto) frames; nothing else here knows which.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from agent_relay.v1 import agent_pb2 as pb
from ws_edge.auth import Claims, TokenAuthority, TokenError
from ws_edge.errors import CloseCode, EdgeError, ErrorCode
from ws_edge.frames import (
    Auth,
    ChatCancel,
    ChatMessage,
    ClientFrame,
    Join,
    Leave,
    Ping,
    ToolCancel,
    ack_frame,
    decode_for,
    error_frame,
    frame_size,
    pong_frame,
    ref_for,
)
from ws_edge.hub import Hub
from ws_edge.limits import AbuseCounter, FrameLimiter, admit
from ws_edge.room import DeltaInfo, Preferences
from ws_edge.send_queue import SendQueue
from ws_edge.wire import OutFrame, Wire

log = logging.getLogger(__name__)

_socket_ids = itertools.count(1)

BUSY_POLICIES = {
    None: pb.BUSY_POLICY_UNSPECIFIED,
    "queue": pb.BUSY_POLICY_QUEUE,
    "reject": pb.BUSY_POLICY_REJECT,
    "interrupt": pb.BUSY_POLICY_INTERRUPT,
}


# The four possible preferences, shared by every joined socket (they are frozen).
_PREFERENCES = {
    (deltas, tool_output): Preferences(deltas=deltas, tool_output=tool_output)
    for deltas in (True, False)
    for tool_output in (True, False)
}


class Connection:
    """The edge's side of one socket; see the module docstring for the calling rule."""

    # Slots: thousands of idle sockets each hold one (PERFORMANCE.md: memory per idle socket).
    __slots__ = (
        "_abuse",
        "_authority",
        "_closer",
        "_drain_waiters",
        "_expiry_told",
        "_limiter",
        "_ping_sent_at",
        "_seen_at",
        "_transport",
        "_wall",
        "_writer",
        "claims",
        "close_code",
        "closing",
        "hub",
        "joined",
        "last_frame_at",
        "opened_at",
        "queue",
        "socket_id",
        "wire",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hub: Hub,
        authority: TokenAuthority,
        *,
        transport: asyncio.BaseTransport | None = None,
        wall_clock: Callable[[], float] = time.time,
        wire: Wire = Wire.JSON,
    ) -> None:
        self.wire = wire
        # An int (28 B) rather than a name like "w12" (52 B): the hub and the rooms key by it.
        self.socket_id = next(_socket_ids)
        self.ws = ws
        self._transport = transport
        self.hub = hub
        self._authority = authority
        self._wall = wall_clock
        self.opened_at = self.last_frame_at = self._seen_at = hub.clock()
        self._ping_sent_at: float | None = None  # a WebSocket ping awaits its answer
        self.claims: Claims | None = None
        self._expiry_told = False
        # The sessions joined, in join order: a tuple (a dict of one entry costs 230 B; the
        # room keeps the socket's preferences).
        self.joined: tuple[str, ...] = ()
        # Made at a frame, let go by the sweeper once full again (FrameLimiter.full): an
        # idle socket holds none. Its user's is the hub's (Hub.user_limiter).
        self._limiter: FrameLimiter | None = None
        self._abuse: AbuseCounter | None = None  # made at the first refused frame
        # Made at the first frame out, let go by the sweeper once empty with no writer
        # (check_timers): an idle socket holds none (96 B).
        self.queue: SendQueue | None = None
        self._writer: asyncio.Task[None] | None = None
        self._drain_waiters: list[str] | None = None  # sessions catching up, made at first use
        self._closer: asyncio.Task[None] | None = None
        self.closing = False
        self.close_code: int | None = None

    @property
    def user_id(self) -> str | None:
        return self.claims.user_id if self.claims is not None else None

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the send queue."""
        return len(self.queue) if self.queue is not None else 0

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the send queue."""
        return self.queue.bytes if self.queue is not None else 0

    # -- out -------------------------------------------------------------------------------

    def send(
        self,
        frame: OutFrame,
        delta: DeltaInfo | None = None,
        session_id: str | None = None,
        pass_id: int = 0,
    ) -> None:
        """Queue one frame. A queue past its bound (counting what the transport still holds)
        closes the socket with 1013; the frames of one `pass_id` are judged as one
        (ws_edge/send_queue.py). A frame of a session (`session_id`) is dropped once the
        token has expired."""
        if self.closing:
            return
        if session_id is not None and self.token_expired():
            return
        transport = self._transport
        held = (
            transport.get_write_buffer_size()
            if isinstance(transport, asyncio.WriteTransport)
            else 0
        )
        queue = self.queue
        if queue is None:
            settings = self.hub.settings
            queue = self.queue = SendQueue(
                max_bytes=settings.send_queue_max_bytes,
                max_frames=settings.send_queue_max_frames,
                coalesce_after_frames=settings.send_queue_coalesce_frames,
                wire=self.wire,
            )
        if not queue.push(frame, delta, session_id, held_bytes=held, pass_id=pass_id):
            log.warning(
                "socket %s: send queue over its bound (%d frames, %d bytes, %d in the transport):"
                " closing 1013",
                self.socket_id,
                len(queue),
                queue.bytes,
                held,
            )
            self.close_slow()
            return
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def close_slow(self) -> None:
        """Close 1013: the socket fell behind; it resumes from its last seq."""
        self.close(
            CloseCode.TRY_AGAIN_LATER,
            "send queue full: reconnect later and resume from your last seq",
            flush=False,
        )

    def when_drained(self, session_id: str) -> None:
        """Tell the hub (`Hub.drained`) once everything queued now is written: the socket's
        catch-up of that session goes on then (ws_edge/room.py)."""
        waiters = self._drain_waiters
        if waiters is None:
            waiters = self._drain_waiters = []
        waiters.append(session_id)
        if self._writer is None and not self.closing:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _held_bytes(self) -> int:
        transport = self._transport
        if isinstance(transport, asyncio.WriteTransport):
            return transport.get_write_buffer_size()
        return 0

    async def _write(self) -> None:
        try:
            sent = self.hub.telemetry.sent
            kind = WSMsgType.BINARY if self.wire is Wire.PROTO else WSMsgType.TEXT
            while True:
                queue = self.queue
                data = queue.pop() if queue is not None else None
                if data is None:
                    waiters = self._drain_waiters
                    if not waiters or self.closing:
                        break
                    # Drained (send_frame waited for the transport): the catch-ups go on,
                    # each with what the queue's bound leaves, and the loop writes them.
                    self._drain_waiters = None
                    room = self.hub.settings.send_queue_max_bytes - self._held_bytes()
                    budget = max(room // (2 * len(waiters)), 1024)
                    for session_id in waiters:
                        self.hub.drained(self, session_id, budget)
                    continue
                await self.ws.send_frame(data, kind)
                sent(len(data))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("socket %s: write failed: %s", self.socket_id, exc)
            self.close(CloseCode.GOING_AWAY, "write failed", flush=False)
        finally:
            self._writer = None

    def token_expired(self) -> bool:
        """Whether the socket's token has expired; the first time, its sessions are left and
        the client told (soon after, not inside the fan-out that noticed)."""
        claims = self.claims
        if claims is None or claims.expires_at > self._wall():
            return False
        if not self._expiry_told:
            self._expiry_told = True
            asyncio.get_running_loop().call_soon(self._leave_on_expiry)
        return True

    def _leave_on_expiry(self) -> None:
        if self.closing or self.hub.connections.get(self.socket_id) is not self:
            return
        error = EdgeError(
            ErrorCode.UNAUTHENTICATED,
            "the token has expired: send auth with a fresh one, then join again",
        )
        for session_id in list(self.joined):
            self.hub.leave(self, session_id)
            self.reply_error(None, error, session_id=session_id)

    def now_joined(self, session_id: str) -> None:
        """The hub joined the socket to session_id (again: no change)."""
        if session_id not in self.joined:
            joined = (*self.joined, session_id)
            claims = self.claims
            # A socket that follows just what its token names (one session, most often)
            # holds the token's tuple rather than a copy (48 B per socket).
            self.joined = (
                claims.sessions if claims is not None and claims.sessions == joined else joined
            )

    def now_left(self, session_id: str) -> None:
        """The socket no longer follows session_id (if it did)."""
        if session_id in self.joined:
            self.joined = tuple(joined for joined in self.joined if joined != session_id)

    def reply_error(self, ref: str | None, error: EdgeError, **extra: Any) -> None:
        self.send(error_frame(error, ref, **extra))

    def join_acked(self, session_id: str, ref: str | None, head_seq: int) -> None:
        self.send(ack_frame(ref, session_id=session_id, head_seq=head_seq), None, session_id)

    def close(self, code: CloseCode, reason: str, *, flush: bool = True) -> None:
        """Close the socket with code (the first call wins). With flush, frames already
        queued (the error that explains the close) go out first; without, they are dropped
        (a slow consumer resumes by seq instead)."""
        if self.closing:
            return
        self.closing = True
        self.close_code = int(code)
        writer = self._writer
        if not flush:
            self.queue = None
            self._writer = None
            if writer is not None:
                writer.cancel()
                writer = None
        self._closer = self.hub.spawn(self._close(code, reason, writer))

    async def wait_closed(self) -> None:
        """Wait for a closing handshake the edge began (bounded by `_close`'s timeouts).

        The socket's handler must not return before it: aiohttp would then close the
        transport while the peer's frames sit unread, the kernel would answer with a
        reset, and the peer would lose the close frame (and see 1006, not the code)."""
        closer = self._closer
        if closer is not None:
            await asyncio.wait({closer})

    def detach(self) -> None:
        """The socket is gone: send nothing more."""
        self.closing = True
        self.queue = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()

    async def _close(self, code: CloseCode, reason: str, writer: asyncio.Task[None] | None) -> None:
        message = reason.encode()[:123]
        try:
            if writer is not None:
                # Let the frames already queued (the error explaining the close) go first;
                # asyncio.wait neither raises the writer's failure nor cancels it on timeout.
                await asyncio.wait({writer}, timeout=2.0)
            await asyncio.wait_for(
                self.ws.close(code=int(code), message=message, drain=False), timeout=5.0
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()  # the peer does not read: drop it

    # -- in --------------------------------------------------------------------------------

    def receive_frame(self, data: str | bytes) -> None:
        """One frame from the client: text (str) or binary (bytes)."""
        now = self.hub.clock()
        # A frame is also a sign of life: both times hold the one float (24 B per socket).
        self.last_frame_at = self._seen_at = now
        size = frame_size(data)
        self.hub.telemetry.received(size)
        limiter = self._limiter
        if limiter is None:
            limiter = self._limiter = FrameLimiter(self.hub.connection_budget, now)
        claims = self.claims  # set once the socket counts against its user (_auth)
        limiters = (
            [limiter] if claims is None else [limiter, self.hub.user_limiter(claims.user_id, now)]
        )
        wait_ms = admit(limiters, size, now)
        if wait_ms:
            self.hub.telemetry.rate_limited("frames")
            self._refuse(
                ref_for(self.wire, data),
                EdgeError(ErrorCode.RATE_LIMITED, "too many frames or bytes", wait_ms),
                now,
            )
            return
        frame, error, ref = decode_for(self.wire, data, max_bytes=self.hub.settings.max_frame_bytes)
        if frame is None:
            assert error is not None
            self._refuse(ref, error, now)
            return
        try:
            self._dispatch(frame, now)
        except EdgeError as error:
            self._refuse(frame.id, error, now, frame)

    def _refuse(
        self, ref: str | None, error: EdgeError, now: float, frame: ClientFrame | None = None
    ) -> None:
        self.hub.telemetry.refused(str(error.code), frame)  # a span with error.type = the code
        self.reply_error(ref, error)
        abuse = self._abuse
        if abuse is None:
            settings = self.hub.settings
            abuse = self._abuse = AbuseCounter(settings.abuse_strikes, settings.abuse_window_s)
        if abuse.strike(now):
            self.close(CloseCode.POLICY_VIOLATION, "too many rejected frames")

    def _dispatch(self, frame: ClientFrame, now: float) -> None:
        if isinstance(frame, Ping):
            self.send(pong_frame(frame.id, frame.ts))
            return
        if isinstance(frame, Auth):
            self._auth(frame)
            return
        claims = self._require_auth()
        if isinstance(frame, Join):
            session_id = claims.granted(frame.session_id)
            if session_id is None:
                raise EdgeError(
                    ErrorCode.FORBIDDEN, f"the token does not name session {frame.session_id!r}"
                )
            prefs = _PREFERENCES[frame.deltas == "stream", frame.tool_output == "stream"]
            self.hub.join(self, session_id, frame.id, frame.after_seq, prefs)
        elif isinstance(frame, Leave):
            if frame.session_id not in self.joined:
                raise EdgeError(ErrorCode.NOT_JOINED, f"session {frame.session_id!r} not joined")
            self.hub.leave(self, frame.session_id)
            self.send(ack_frame(frame.id, session_id=frame.session_id))
        elif isinstance(frame, ChatMessage):
            self._require_joined(frame.session_id)
            wait_ms = self.hub.runs.check(claims.user_id, now)
            if wait_ms:
                self.hub.telemetry.rate_limited("runs")
                raise EdgeError(
                    ErrorCode.RATE_LIMITED,
                    f"at most {self.hub.settings.max_runs_per_user} runs at once",
                    wait_ms,
                )
            self.hub.runs.reserve(claims.user_id)
            self.hub.spawn(self._send_message(claims.user_id, frame))
        elif isinstance(frame, ChatCancel):
            self._require_joined(frame.session_id)
            request = pb.ChatRequest(
                cancel_run=pb.CancelRun(session_id=frame.session_id, run_id=frame.run_id)
            )
            self.hub.spawn(self._cancel(frame.id, frame.session_id, request))
        elif isinstance(frame, ToolCancel):
            self._require_joined(frame.session_id)
            request = pb.ChatRequest(
                cancel_tool_call=pb.CancelToolCall(
                    session_id=frame.session_id, call_id=frame.call_id
                )
            )
            self.hub.spawn(self._cancel(frame.id, frame.session_id, request))

    def _require_auth(self) -> Claims:
        claims = self.claims
        if claims is None:
            raise EdgeError(ErrorCode.UNAUTHENTICATED, "send an auth frame first")
        if claims.expires_at <= self._wall():
            raise EdgeError(
                ErrorCode.UNAUTHENTICATED, "the token has expired; send auth with a fresh one"
            )
        return claims

    def _require_joined(self, session_id: str) -> None:
        if session_id not in self.joined:
            raise EdgeError(ErrorCode.NOT_JOINED, f"join session {session_id!r} first")

    def _auth(self, frame: Auth) -> None:
        try:
            claims = self._authority.verify(frame.token, self._wall())
        except TokenError as exc:
            self.hub.telemetry.refused(str(ErrorCode.UNAUTHENTICATED), frame)
            self.reply_error(frame.id, EdgeError(ErrorCode.UNAUTHENTICATED, str(exc)))
            if self.claims is None:
                self.close(CloseCode.TOKEN_INVALID, str(exc))
            return
        if self.claims is not None and claims.user_id != self.claims.user_id:
            raise EdgeError(ErrorCode.FORBIDDEN, "a refreshed token must name the same user")
        if self.claims is None:
            if (
                self.hub.user_connection_count(claims.user_id)
                >= self.hub.settings.max_connections_per_user
            ):
                self.hub.telemetry.rate_limited("connections")
                self.hub.telemetry.refused(str(ErrorCode.RATE_LIMITED), frame)
                self.reply_error(
                    frame.id,
                    EdgeError(ErrorCode.RATE_LIMITED, "too many connections for this user"),
                )
                self.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this user")
                return
            self.hub.register_user(self, claims.user_id)
        self.claims = claims
        self._expiry_told = False
        for session_id in list(self.joined):
            if not claims.may_join(session_id):  # a narrower token: leave what it drops
                self.hub.leave(self, session_id)
        self.send(ack_frame(frame.id, user_id=claims.user_id, expires_at=claims.expires_at))

    async def _send_message(self, user_id: str, frame: ChatMessage) -> None:
        """Carry out a chat:message whose run the limiter has reserved; releases it."""
        try:
            await self._forward_message(user_id, frame)
        finally:
            self.hub.runs.release(user_id)

    async def _forward_message(self, user_id: str, frame: ChatMessage) -> None:
        with self.hub.telemetry.message(
            frame.traceparent,
            frame.tracestate,
            session_id=frame.session_id,
            message_id=frame.message_id,
            text=frame.text,
        ) as traced:
            request = pb.ChatRequest(
                send=pb.SendMessage(
                    session_id=frame.session_id,
                    message_id=frame.message_id,
                    text=frame.text,
                    busy_policy=BUSY_POLICIES[frame.busy_policy],
                    trace_context=traced.trace_context,
                )
            )
            try:
                reply = await self.hub.command(frame.session_id, request)
            except EdgeError as error:
                traced.refused(str(error.code), error.message)
                self.reply_error(frame.id, error)
                return
            accepted = reply.accepted
            traced.accepted(accepted.run_id, accepted.duplicate)
        if not accepted.duplicate:
            self.hub.runs.start(user_id, accepted.run_id, self.hub.clock())
        self.send(
            ack_frame(
                frame.id,
                session_id=frame.session_id,
                message_id=accepted.message_id,
                seq=accepted.seq,
                run_id=accepted.run_id,
                queued=accepted.queued,
                duplicate=accepted.duplicate,
            )
        )

    async def _cancel(self, ref: str | None, session_id: str, request: pb.ChatRequest) -> None:
        try:
            reply = await self.hub.command(session_id, request)
        except EdgeError as error:
            self.reply_error(ref, error)
            return
        self.send(ack_frame(ref, session_id=session_id, cancelled=reply.cancelled.cancelled))

    # -- timers (checked by the app's sweeper) ------------------------------------------------

    def peer_seen(self) -> None:
        """Something came from the peer (a frame of any kind, a ping or a pong): it is alive."""
        self._seen_at = self.hub.clock()
        self._ping_sent_at = None

    def check_timers(self, now: float) -> None:
        settings = self.hub.settings
        if self.closing:
            return
        limiter = self._limiter
        if limiter is not None and limiter.full(now):
            self._limiter = None  # the same as a new one: made again at the next frame
        queue = self.queue
        if queue is not None and self._writer is None and not len(queue):
            self.queue = None  # the same as a new one: made again at the next frame out
        if self._heartbeat_due(now, settings.ping_interval_s):
            return
        if self.claims is None and now - self.opened_at > settings.auth_timeout_s:
            self.close(CloseCode.AUTH_TIMEOUT, "no auth frame in time")
        elif not self.joined and now - self.last_frame_at > settings.idle_timeout_s:
            self.close(CloseCode.IDLE_TIMEOUT, "idle: no session joined and no frames")
        elif self.joined:
            self.token_expired()  # tell a socket whose sessions are quiet, too

    def _heartbeat_due(self, now: float, interval_s: float) -> bool:
        """The WebSocket heartbeat, checked by the sweeper rather than a timer per socket
        (PERFORMANCE.md: memory per idle socket): a ping once the peer has been silent for
        interval_s, and a close (4001) when its answer has not come interval_s / 2 later.
        True when the socket is now closing."""
        if interval_s <= 0:
            return False
        sent = self._ping_sent_at
        if sent is not None:
            if now - sent > interval_s / 2:
                log.info("socket %s: no pong in %.1f s: closing", self.socket_id, now - sent)
                self.close(
                    CloseCode.HEARTBEAT_TIMEOUT, "no answer to the heartbeat ping", flush=False
                )
                return True
        elif now - self._seen_at >= interval_s:
            self._ping_sent_at = now
            self.hub.spawn(self._ping())
        return False

    async def _ping(self) -> None:
        try:
            await self.ws.ping()
        except (ConnectionError, RuntimeError) as exc:
            log.debug("socket %s: ping failed: %s", self.socket_id, exc)
