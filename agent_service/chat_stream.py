"""One Chat stream: the commands it receives and the responses it owes.

A ChatStream reads commands, carries each out through the Hub and queues its
reply. Commands of one session run in order; commands of different sessions run
side by side, so a slow session load never delays the other sessions
multiplexed on the stream (replies carry their request_id; they may overtake
each other across sessions). `collect()` drains what the stream owes now (new events of every joined
session after its cursor, and the queued replies) into one ChatResponse. The
servicer sends that, waits for the Subscriber's wake-up, and collects again: so
events that pile up while a send is in flight travel together in the next
message, and an idle stream sends the first event at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from google.rpc import code_pb2, status_pb2

from agent_relay.v1 import agent_pb2 as pb
from agent_service import access
from agent_service.auth_interceptor import current_caller
from agent_service.errors import (
    InvalidArgument,
    OutOfRangeError,
    ServiceError,
    Unavailable,
    is_backend_outage,
    ok_status,
    require,
)
from agent_service.eventlog import OutOfRange
from agent_service.hub import Hub
from agent_service.ids import is_valid_client_id
from agent_service.runs import BusyPolicy
from agent_service.session import Subscriber

log = logging.getLogger(__name__)

MAX_EVENTS_PER_RESPONSE = 512
MAX_BYTES_PER_RESPONSE = 2 * 1024 * 1024
MAX_MESSAGE_CHARS = 100_000
MAX_TRACE_ENTRIES = 8
MAX_COMMANDS_IN_FLIGHT = 256  # per stream; past it the stream reads no more until one ends

POLICIES = {
    pb.BUSY_POLICY_UNSPECIFIED: None,
    pb.BUSY_POLICY_QUEUE: BusyPolicy.QUEUE,
    pb.BUSY_POLICY_REJECT: BusyPolicy.REJECT,
    pb.BUSY_POLICY_INTERRUPT: BusyPolicy.INTERRUPT,
}


class ChatStream:
    """The state of one Chat stream. See the module docstring for the calling rule."""

    def __init__(self, hub: Hub, *, forwarded: bool = False) -> None:
        self.hub = hub
        self.forwarded = forwarded  # another replica sent these commands to their owner
        self.subscriber = Subscriber()
        self.replies: list[pb.CommandReply] = []
        self.half_closed = False
        self._last_of_session: dict[str, asyncio.Task[None]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self.caller = current_caller()  # read here, in the RPC's own task
        # named once: asyncio.create_task() asks get_running_loop(), a getpid() system call
        self._loop = asyncio.get_running_loop()

    async def read(self, requests: AsyncIterator[pb.ChatRequest]) -> None:
        """Carry out commands until the client half-closes its side and every command
        has its reply. Cancelling it cancels the commands still in flight."""
        try:
            async for request in requests:
                if len(self._in_flight) >= MAX_COMMANDS_IN_FLIGHT:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                self._dispatch(request)
            if self._in_flight:
                await asyncio.wait(set(self._in_flight))
        finally:
            for task in self._in_flight:
                task.cancel()
            self.half_closed = True
            self.subscriber.notify()

    def _dispatch(self, request: pb.ChatRequest) -> None:
        """Run the command after the previous command of its session."""
        key = _session_of(request)
        before = self._last_of_session.get(key)
        task = self._loop.create_task(self._run_after(before, request))
        self._last_of_session[key] = task
        self._in_flight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.discard(finished)
            if self._last_of_session.get(key) is finished:
                del self._last_of_session[key]

        task.add_done_callback(done)

    async def _run_after(self, before: asyncio.Task[None] | None, request: pb.ChatRequest) -> None:
        if before is not None:
            await asyncio.wait({before})  # its outcome is its own reply's business
        self.replies.append(await self.handle(request))
        self.subscriber.notify()

    async def handle(self, request: pb.ChatRequest) -> pb.CommandReply:
        """One command's reply; a failure is an error reply, never an exception."""
        reply = pb.CommandReply(request_id=request.request_id)
        try:
            self._fill(reply, await self._carry_out(request))
            reply.status.CopyFrom(ok_status())
        except ServiceError as exc:
            reply.status.CopyFrom(exc.to_status())
        except Exception as exc:
            if is_backend_outage(exc):
                log.warning("chat command failed: a backend does not answer: %s", exc)
                reply.status.CopyFrom(
                    Unavailable(
                        f"a backend does not answer ({type(exc).__name__}); retry",
                        reason="BACKEND_UNAVAILABLE",
                    ).to_status()
                )
                return reply
            log.exception("chat command failed")
            reply.status.CopyFrom(status_pb2.Status(code=code_pb2.INTERNAL, message=str(exc)))
        return reply

    @staticmethod
    def _fill(reply: pb.CommandReply, result: object) -> None:
        if isinstance(result, pb.Joined):
            reply.joined.CopyFrom(result)
        elif isinstance(result, pb.MessageAccepted):
            reply.accepted.CopyFrom(result)
        elif isinstance(result, pb.CancelResponse):
            reply.cancelled.CopyFrom(result)
        elif isinstance(result, pb.Left):
            reply.left.CopyFrom(result)

    async def _carry_out(self, request: pb.ChatRequest) -> object:
        await access.authorize_command(self.caller, self.hub, request)
        which = request.WhichOneof("command")
        if which == "join":
            return await self._join(request.join)
        if which == "leave":
            return self._leave(request.leave.session_id)
        if which == "send":
            return await self._send(request.send)
        if which == "cancel_run":
            command = request.cancel_run
            require(bool(command.session_id), "cancel_run.session_id", "is required")
            cancelled = await self.hub.cancel_run(
                command.session_id, command.run_id, forwarded=self.forwarded
            )
            return pb.CancelResponse(cancelled=cancelled)
        if which == "cancel_tool_call":
            tool = request.cancel_tool_call
            require(bool(tool.session_id), "cancel_tool_call.session_id", "is required")
            require(bool(tool.call_id), "cancel_tool_call.call_id", "is required")
            cancelled = await self.hub.cancel_tool_call(
                tool.session_id, tool.call_id, forwarded=self.forwarded
            )
            return pb.CancelResponse(cancelled=cancelled)
        raise InvalidArgument(
            "command: one of join, leave, send, cancel_run, cancel_tool_call is required",
            field="command",
        )

    async def _join(self, join: pb.JoinSession) -> pb.Joined:
        require(bool(join.session_id), "join.session_id", "is required")
        rt = await self.hub.session(join.session_id)
        if join.after_seq > rt.log.head_seq and not rt.owner:
            await self.hub.catch_up(rt)  # the client saw more, through the owner
            rt = await self.hub.session(join.session_id)  # it may have become the owner
        head = rt.log.head_seq
        if join.live_only:
            cursor = head
        elif join.after_seq > head and not await self.hub.may_come_back(rt, join.after_seq):
            raise OutOfRangeError(
                f"join.after_seq: {join.after_seq} is beyond the session's head {head}",
                field="join.after_seq",
            )
        else:
            cursor = join.after_seq
        self.subscriber.cursors[rt.session_id] = cursor
        rt.subscribers.add(self.subscriber)
        self.subscriber.notify(rt.session_id)  # the replay, if any, goes out now
        return pb.Joined(session_id=rt.session_id, head_seq=head)

    def _leave(self, session_id: str) -> pb.Left:
        require(bool(session_id), "leave.session_id", "is required")
        self.subscriber.cursors.pop(session_id, None)
        self.subscriber.dirty.pop(session_id, None)
        rt = self.hub.loaded_session(session_id)
        if rt is not None:
            rt.subscribers.discard(self.subscriber)
        return pb.Left(session_id=session_id)

    async def _send(self, send: pb.SendMessage) -> pb.MessageAccepted:
        require(bool(send.session_id), "send.session_id", "is required")
        require(
            is_valid_client_id(send.message_id),
            "send.message_id",
            "must be 1-128 characters of letters, digits and ._:-",
        )
        require(bool(send.text.strip()), "send.text", "must not be empty")
        require(
            len(send.text) <= MAX_MESSAGE_CHARS,
            "send.text",
            f"must be at most {MAX_MESSAGE_CHARS} characters",
        )
        require(send.busy_policy in POLICIES, "send.busy_policy", "unknown policy")
        require(
            len(send.trace_context) <= MAX_TRACE_ENTRIES,
            "send.trace_context",
            f"at most {MAX_TRACE_ENTRIES} entries",
        )
        require(
            send.accept_by_unix_ms >= 0,
            "send.accept_by_unix_ms",
            "must be 0 (no deadline) or a time in ms since the Unix epoch",
        )
        return await self.hub.send_message(
            send.session_id,
            send.message_id,
            send.text,
            POLICIES[send.busy_policy],
            dict(send.trace_context),
            forwarded=self.forwarded,
            accept_by_ms=send.accept_by_unix_ms,
        )

    def collect(self) -> pb.ChatResponse | None:
        """What this stream owes now, as one response; None when nothing."""
        response = pb.ChatResponse()
        size = 0
        dirty = self.subscriber.dirty
        while dirty:
            session_id = next(iter(dirty))
            del dirty[session_id]
            cursor = self.subscriber.cursors.get(session_id)
            rt = self.hub.loaded_session(session_id)
            if cursor is None or rt is None or rt.log.head_seq <= cursor:
                continue
            room = MAX_EVENTS_PER_RESPONSE - len(response.events)
            try:
                replay = rt.log.read_after(cursor, limit=room)
            except OutOfRange:
                continue
            if replay.gap is not None:  # said once: the cursor moves to the window's start
                response.events.add(session_id=session_id, replay_gap=replay.gap)
                self.subscriber.cursors[session_id] = replay.gap.first_seq - 1
            if replay.events:  # one extend: a copy per event in C, not a call per event
                response.events.extend(replay.events)
                size += sum(map(pb.SessionEvent.ByteSize, replay.events))
                self.subscriber.cursors[session_id] = replay.events[-1].seq
            if len(response.events) >= MAX_EVENTS_PER_RESPONSE or size >= MAX_BYTES_PER_RESPONSE:
                self.subscriber.notify(session_id)  # more may wait: collect again at once
                break
        if self.replies:
            response.replies.extend(self.replies)
            self.replies.clear()
        return response if response.events or response.replies else None

    def done(self) -> bool:
        """After a half-close: True once every joined session is idle and fully sent."""
        if not self.half_closed or self.replies:
            return False
        for session_id, cursor in self.subscriber.cursors.items():
            rt = self.hub.loaded_session(session_id)
            if rt is not None and (rt.busy or rt.log.next_seq - 1 > cursor):
                return False
        return True

    def close(self) -> None:
        """Stop following every session."""
        for session_id in self.subscriber.cursors:
            rt = self.hub.loaded_session(session_id)
            if rt is not None:
                rt.subscribers.discard(self.subscriber)
        self.subscriber.cursors.clear()


def _session_of(request: pb.ChatRequest) -> str:
    """The session a command is about ("" when it names none)."""
    which = request.WhichOneof("command")
    if which is None:
        return ""
    return str(getattr(request, which).session_id)
