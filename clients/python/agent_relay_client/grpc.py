"""A thin async client of the agent's gRPC service, for backend code.

::

    async with AgentClient("127.0.0.1:50051") as agent:
        session = await agent.create_session(title="report")
        run = agent.chat(session.session_id, "What is 6 * 7?")
        async for event in run:
            if isinstance(event, ResponseDelta):
                print(event.text, end="", flush=True)
        print(run.completed.finish_reason)

Every RPC failure is raised as one of `agent_relay_client.errors`; results are
dataclasses or the typed events of `agent_relay_client.events`. `chat()` runs
over a `ResilientChat`: if the stream drops mid-reply it reopens it, resumes
after the last seq it processed, and sends the message again under the same id
if its acceptance was lost, so the reply arrives whole and exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import code_pb2

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_relay_client import errors
from agent_relay_client.conversation import Conversation, HistoryMessage
from agent_relay_client.events import (
    FINAL_TOOL_STATUSES,
    MessageAccepted,
    RunCompleted,
    SessionEvent,
    ToolExecution,
)
from agent_relay_client.outbox import OutboxEntry
from agent_relay_client.proto_convert import (
    error_from_rpc,
    error_from_status,
    event_from_proto,
    history_message_from_proto,
    tool_event_from_proto,
)
from agent_relay_client.resilient import (
    Accepted,
    ClientError,
    EventApplied,
    History,
    HistoryLoaded,
    MessageRejected,
    MessageSent,
    ResilientChat,
    Update,
)

_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session's summary."""

    session_id: str
    title: str
    user_id: str
    created_unix_ms: int
    head_seq: int
    running: bool
    active_run_id: str

    @classmethod
    def from_proto(cls, s: pb.Session) -> SessionInfo:
        """From the protobuf Session."""
        return cls(
            session_id=s.session_id,
            title=s.title,
            user_id=s.user_id,
            created_unix_ms=s.created_unix_ms,
            head_seq=s.head_seq,
            running=s.run_state == pb.RUN_STATE_RUNNING,
            active_run_id=s.active_run_id,
        )


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A tool the agent can call."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments
    timeout_s: float


@dataclass(slots=True)
class ToolResult:
    """How a directly executed tool call ended."""

    call_id: str
    tool_name: str
    status: str  # completed, failed or cancelled
    result: str = ""
    output: str = ""  # every output event's text, concatenated
    error_code: str = ""
    error_message: str = ""
    duration_ms: float = 0.0
    events: list[ToolExecution] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the call completed."""
        return self.status == "completed"


_BUSY = {
    "": pb.BUSY_POLICY_UNSPECIFIED,
    "queue": pb.BUSY_POLICY_QUEUE,
    "reject": pb.BUSY_POLICY_REJECT,
    "interrupt": pb.BUSY_POLICY_INTERRUPT,
}


# ----- the Chat stream as a Link ----------------------------------------------------------------


class ChatStream:
    """One open Chat stream: commands with awaited replies, and the events of joined sessions.

    Implements `resilient.Link`. Events wait in a bounded queue (`max_buffered_events`):
    a consumer that stops reading slows the stream (gRPC flow control) rather than
    growing memory.
    """

    def __init__(
        self,
        stub: agent_pb2_grpc.AgentServiceStub,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        max_buffered_events: int = 4096,
    ) -> None:
        self._call = stub.Chat(metadata=tuple(metadata))
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[pb.CommandReply]] = {}
        self._events: asyncio.Queue[SessionEvent | errors.AgentRelayError] = asyncio.Queue(
            max_buffered_events
        )
        self._failure: errors.AgentRelayError | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        failure: errors.AgentRelayError
        try:
            while True:
                response = await self._call.read()
                if response is _EOF:
                    failure = errors.TransportError("the service ended the chat stream")
                    break
                for ev in response.events:
                    try:
                        await self._events.put(event_from_proto(ev))
                    except errors.ProtocolError as exc:
                        await self._events.put(exc)
                for reply in response.replies:
                    future = self._pending.pop(reply.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
        except grpc.aio.AioRpcError as exc:
            failure = error_from_rpc(exc)
            if not isinstance(failure, errors.TransportError):
                failure = errors.TransportError(str(failure))
        except asyncio.CancelledError:
            failure = errors.TransportError("chat stream closed")
        self._failure = failure
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        self._pending.clear()
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(failure)

    async def _command(self, request: pb.ChatRequest) -> pb.CommandReply:
        if self._failure is not None:
            raise self._failure
        request.request_id = str(next(self._ids))
        future: asyncio.Future[pb.CommandReply] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            await self._call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            self._pending.pop(request.request_id, None)
            raise errors.TransportError(f"chat stream write failed: {exc}") from exc
        reply = await future
        if reply.status.code != code_pb2.OK:
            raise error_from_status(reply.status)
        return reply

    async def join(self, session_id: str, after_seq: int, *, live_only: bool = False) -> int:
        """Follow a session after `after_seq` (or from its head); returns the head seq."""
        join = pb.JoinSession(session_id=session_id, after_seq=after_seq, live_only=live_only)
        reply = await self._command(pb.ChatRequest(join=join))
        return int(reply.joined.head_seq)

    async def leave(self, session_id: str) -> None:
        """Stop following a session."""
        await self._command(pb.ChatRequest(leave=pb.LeaveSession(session_id=session_id)))

    async def send(self, entry: OutboxEntry) -> Accepted:
        """Send a user message; returns its acceptance."""
        send = pb.SendMessage(
            session_id=entry.session_id,
            message_id=entry.message_id,
            text=entry.text,
            busy_policy=_BUSY.get(entry.busy_policy, pb.BUSY_POLICY_UNSPECIFIED),
            trace_context=entry.trace_context,
        )
        a = (await self._command(pb.ChatRequest(send=send))).accepted
        return Accepted(a.message_id, a.seq, a.run_id, a.queued, a.duplicate)

    async def cancel_run(self, session_id: str, run_id: str) -> bool:
        """Cancel a run ("": the active run)."""
        command = pb.CancelRun(session_id=session_id, run_id=run_id)
        return bool((await self._command(pb.ChatRequest(cancel_run=command))).cancelled.cancelled)

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        """Cancel one tool call."""
        command = pb.CancelToolCall(session_id=session_id, call_id=call_id)
        reply = await self._command(pb.ChatRequest(cancel_tool_call=command))
        return bool(reply.cancelled.cancelled)

    async def next_event(self) -> SessionEvent:
        """The next event; raises TransportError once the stream is over."""
        item = await self._events.get()
        if isinstance(item, errors.AgentRelayError):
            if isinstance(item, errors.TransportError):
                self._events.put_nowait(item)  # keep raising it for later callers
            raise item
        return item

    async def close(self) -> None:
        """Close the stream (idempotent)."""
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


# ----- the client ------------------------------------------------------------------------------


class AgentClient:
    """An async client of AgentService. Use as `async with AgentClient(target) as agent:`.

    `target` is `host:port`. `metadata` goes with every call. `timeout_s` bounds every
    unary RPC (streams are unbounded: a run may take long). `token` is a bearer token
    for a service that requires credentials (`agent-relay token` mints one); it goes
    with every call as `authorization: Bearer <token>`. `credentials` are the channel's
    TLS credentials (with a client certificate for mTLS: grpc.ssl_channel_credentials).
    """

    def __init__(
        self,
        target: str,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout_s: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        self.target = target
        self.metadata = tuple(metadata)
        if token:
            self.metadata += (("authorization", f"Bearer {token}"),)
        self.timeout_s = timeout_s
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials)
        self.stub = agent_pb2_grpc.AgentServiceStub(self._channel)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    # sessions and history

    async def create_session(self, *, title: str = "", user_id: str = "") -> SessionInfo:
        """Create an empty session."""
        request = pb.CreateSessionRequest(title=title, user_id=user_id)
        return SessionInfo.from_proto(await self._unary(self.stub.CreateSession, request))

    async def get_session(self, session_id: str) -> SessionInfo:
        """One session's summary (NotFound when there is none)."""
        request = pb.GetSessionRequest(session_id=session_id)
        return SessionInfo.from_proto(await self._unary(self.stub.GetSession, request))

    async def list_sessions(self, *, user_id: str = "", limit: int = 50) -> list[SessionInfo]:
        """Sessions, newest first, at most `limit`."""
        sessions: list[SessionInfo] = []
        token = ""
        while len(sessions) < limit:
            request = pb.ListSessionsRequest(
                user_id=user_id, page_size=min(limit - len(sessions), 500), page_token=token
            )
            page = await self._unary(self.stub.ListSessions, request)
            sessions += [SessionInfo.from_proto(s) for s in page.sessions]
            token = page.next_page_token
            if not token:
                break
        return sessions

    async def history(self, session_id: str) -> History:
        """A session's whole durable conversation, oldest first, and the seq it reflects."""
        messages: list[HistoryMessage] = []
        token, as_of_seq = "", 0
        while True:
            request = pb.ListMessagesRequest(
                session_id=session_id, page_size=1000, page_token=token
            )
            page = await self._unary(self.stub.ListMessages, request)
            messages += [history_message_from_proto(m) for m in page.messages]
            as_of_seq = page.as_of_seq
            token = page.next_page_token
            if not token:
                return History(messages, as_of_seq)

    async def list_tools(self) -> list[ToolInfo]:
        """The tools the agent can call, by name."""
        response = await self._unary(self.stub.ListTools, pb.ListToolsRequest())
        return [
            ToolInfo(
                name=t.name,
                description=t.description,
                parameters=json.loads(t.parameters_json_schema or "{}"),
                timeout_s=t.timeout_s,
            )
            for t in response.tools
        ]

    # cancel

    async def cancel_run(self, session_id: str, run_id: str = "") -> bool:
        """Cancel a run ("": the session's active run). True when it was running."""
        request = pb.CancelRequest(session_id=session_id, run_id=run_id)
        return bool((await self._unary(self.stub.Cancel, request)).cancelled)

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        """Cancel one tool call by id. True when it was running."""
        request = pb.CancelRequest(session_id=session_id, call_id=call_id)
        return bool((await self._unary(self.stub.Cancel, request)).cancelled)

    # streams

    async def open_chat_stream(self) -> ChatStream:
        """One raw Chat stream (several sessions, no reconnection): the low-level door.

        Waits until the channel is connected (at most `timeout_s`): a stream is opened
        lazily by gRPC, and a reconnecting client must not count an unanswered one as a
        success (that would reset its backoff).
        """
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self.timeout_s)
        except TimeoutError as exc:
            raise errors.TransportError(
                f"the agent service at {self.target} did not answer"
            ) from exc
        return ChatStream(self.stub, metadata=self.metadata)

    def resilient_chat(self, **kwargs: Any) -> ResilientChat:
        """A Chat connection that reconnects and resumes on its own (see `resilient`)."""
        return ResilientChat(self.open_chat_stream, self.history, **kwargs)

    def chat(
        self,
        session_id: str,
        text: str,
        *,
        message_id: str = "",
        busy_policy: str = "",
        trace_context: dict[str, str] | None = None,
    ) -> ChatRun:
        """Send a user message and iterate its run's events until the run completes."""
        return ChatRun(self, session_id, text, message_id, busy_policy, trace_context or {})

    def execute_tool(
        self, tool_name: str, arguments: Mapping[str, Any] | str, *, call_id: str = ""
    ) -> ToolRun:
        """Run one tool directly; iterate its events, `cancel()` it, or `await .result()`."""
        args = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
        return ToolRun(self, tool_name, args, call_id or f"call_{uuid.uuid4().hex[:16]}")


class ChatRun:
    """One user message and the run it starts. Iterate it for the run's events (each once,
    in order); afterwards `text` is the assistant's reply and `completed` the last event."""

    def __init__(
        self,
        client: AgentClient,
        session_id: str,
        text: str,
        message_id: str,
        busy_policy: str,
        trace_context: dict[str, str],
    ) -> None:
        self._client = client
        self.session_id = session_id
        self.message_id = message_id or str(uuid.uuid4())
        self._text = text
        self._busy_policy = busy_policy
        self._trace_context = trace_context
        self.run_id = ""
        self.accepted: Accepted | None = None
        self.completed: RunCompleted | None = None
        self.conversation: Conversation | None = None
        self._chat: ResilientChat | None = None

    @property
    def text(self) -> str:
        """The assistant text assembled so far."""
        if self.conversation is None or not self.run_id:
            return ""
        item = self.conversation.assistant_for_run(self.run_id)
        return item.text if item is not None else ""

    async def __aiter__(self) -> AsyncIterator[SessionEvent]:
        info = await self._client.get_session(self.session_id)
        chat = self._chat = self._client.resilient_chat(max_attempts=8)
        queue: asyncio.Queue[Update | None] = asyncio.Queue()
        chat.add_listener(queue)
        # Start after the head: only this message's run matters, not the session's past.
        chat.core.receive_history(self.session_id, [], info.head_seq)
        self.conversation = chat.conversation(self.session_id)
        try:
            await chat.start()
            await chat.send(
                self.session_id,
                self._text,
                message_id=self.message_id,
                busy_policy=self._busy_policy,
                trace_context=self._trace_context,
            )
            while (update := await queue.get()) is not None:
                events = self._events_of_this_run(update, chat)
                if not events and isinstance(update, HistoryLoaded):
                    events = await self._ended_out_of_reach(update.conversation)
                for event in events:
                    yield event
                    if isinstance(event, RunCompleted):
                        self.completed = event
                        return
            assert chat.closed_by is not None
            raise errors.ConnectionClosed(chat.closed_by.code, chat.closed_by.reason)
        finally:
            await chat.close()
            self._chat = None

    def _events_of_this_run(self, update: Update, chat: ResilientChat) -> list[SessionEvent]:
        if isinstance(update, MessageRejected) and update.message_id == self.message_id:
            raise update.error
        if isinstance(update, ClientError) and update.session_id == self.session_id:
            raise update.error  # for example the session can no longer be joined
        if isinstance(update, MessageSent) and update.accepted.message_id == self.message_id:
            self.accepted = update.accepted
            self.run_id = update.accepted.run_id
            conv = chat.conversation(self.session_id)
            if update.accepted.duplicate and update.accepted.seq <= conv.last_seq:
                # Accepted before this client looked: replay the run from its acceptance.
                chat.rewind(self.session_id, update.accepted.seq - 1)
            return []
        if isinstance(update, HistoryLoaded) and self.run_id:
            # A gap: history may show the run ended while its last events were out of reach.
            item = update.conversation.run_finished(self.run_id)
            if item is not None and update.conversation.session_id == self.session_id:
                status_to_reason = {"complete": "stop", "failed": "error"}
                return [
                    RunCompleted(
                        session_id=self.session_id,
                        seq=update.conversation.last_seq,
                        run_id=self.run_id,
                        finish_reason=status_to_reason.get(item.status, item.status),
                        assistant_message_id=item.message_id,
                        text=item.text,
                    )
                ]
            return []
        if not isinstance(update, EventApplied) or update.event.session_id != self.session_id:
            return []
        event = update.event
        if isinstance(event, MessageAccepted) and event.message_id == self.message_id:
            self.run_id = event.run_id
            return [event]
        return [event] if self.run_id and event.run_id == self.run_id else []

    async def _ended_out_of_reach(self, conv: Conversation) -> list[SessionEvent]:
        """After a gap that history does not settle: ask the service whether the run still
        goes on. A run that is neither active nor queued ended unseen (for example the
        service restarted mid-run): it is reported as interrupted."""
        if not self.run_id or conv.session_id != self.session_id:
            return []
        if any(m.run_id == self.run_id and m.status == "queued" for m in conv.messages):
            return []
        try:
            info = await self._client.get_session(self.session_id)
        except errors.AgentRelayError:
            return []  # cannot tell now; the rejoin will bring the run's events if it goes on
        if info.active_run_id == self.run_id:
            return []
        return [
            RunCompleted(
                session_id=self.session_id,
                seq=conv.last_seq,
                run_id=self.run_id,
                finish_reason="interrupted",
                text=self.text,
            )
        ]

    async def wait(self) -> RunCompleted:
        """Consume the run to its end; returns its completion."""
        async for _ in self:
            pass
        assert self.completed is not None
        return self.completed

    async def cancel(self) -> bool:
        """Cancel this run (once its id is known). True when it was running."""
        if not self.run_id:
            return False
        return await self._client.cancel_run(self.session_id, self.run_id)


class ToolRun:
    """A tool call started with ExecuteTool. Iterate it for its events; `result()` for the end."""

    def __init__(self, client: AgentClient, tool_name: str, arguments_json: str, call_id: str):
        self._client = client
        self.tool_name = tool_name
        self.call_id = call_id
        self._arguments_json = arguments_json
        self._requests: asyncio.Queue[pb.ExecuteToolRequest | None] = asyncio.Queue()
        self.outcome: ToolResult | None = None

    async def _request_stream(self) -> AsyncIterator[pb.ExecuteToolRequest]:
        start = pb.StartTool(
            tool_name=self.tool_name, arguments_json=self._arguments_json, call_id=self.call_id
        )
        yield pb.ExecuteToolRequest(start=start)
        while (request := await self._requests.get()) is not None:
            yield request

    async def __aiter__(self) -> AsyncIterator[ToolExecution]:
        if self.outcome is not None:
            raise RuntimeError("a ToolRun can be iterated once")
        result = ToolResult(self.call_id, self.tool_name, status="started")
        call = self._client.stub.ExecuteTool(self._request_stream(), metadata=self._client.metadata)
        try:
            async for response in call:
                event = tool_event_from_proto(response.execution, {"session_id": ""})
                result.events.append(event)
                self.call_id = event.call_id or self.call_id
                _fold(result, event)
                yield event
                if result.status in FINAL_TOOL_STATUSES:
                    # The service ends the call here. Stop reading rather than wait for its
                    # status: a cancel written as the call ended fails on a finished call,
                    # and grpc.aio would report that write as the call's INTERNAL error.
                    break
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            self._requests.put_nowait(None)
            call.cancel()
        self.outcome = result

    async def cancel(self) -> None:
        """Ask the service to cancel the call; its `cancelled` event ends the stream."""
        command = pb.CancelToolCall(call_id=self.call_id)
        self._requests.put_nowait(pb.ExecuteToolRequest(cancel=command))

    async def result(self) -> ToolResult:
        """Run the call to its end (if not iterated yet) and return how it ended."""
        if self.outcome is None:
            async for _ in self:
                pass
        assert self.outcome is not None
        return self.outcome


def _fold(result: ToolResult, event: ToolExecution) -> None:
    result.status = event.status
    if event.status == "output":
        result.output += event.text
    elif event.status == "completed":
        result.result, result.duration_ms = event.result, event.duration_ms
    elif event.status == "failed":
        result.error_code, result.error_message = event.code, event.message
        result.duration_ms = event.duration_ms
