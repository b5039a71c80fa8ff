"""The AgentService gRPC servicer: thin handlers over the Hub.

Handlers translate between protobuf and the Hub and nothing else. Refused
requests raise ServiceError, which `_unary` maps to a rich gRPC status once, at
this boundary; on the Chat stream a refused command gets an error reply
instead and the stream goes on (see chat_stream.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service import access
from agent_service.auth_interceptor import current_caller
from agent_service.chat_stream import ChatStream
from agent_service.errors import (
    AlreadyExists,
    InvalidArgument,
    ServiceError,
    Unavailable,
    is_backend_outage,
    require,
)
from agent_service.forward import FORWARDED, remember_credentials
from agent_service.hub import Hub
from agent_service.ids import is_valid_client_id, new_id
from agent_service.store import MessageRecord
from agent_service.tools.executor import ToolCallRunner
from relay_shared.agent_telemetry import AgentTelemetry

log = logging.getLogger(__name__)

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

ROLES = {"user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT, "tool": pb.ROLE_TOOL}
STATUSES = {
    "complete": pb.MESSAGE_STATUS_COMPLETE,
    "streaming": pb.MESSAGE_STATUS_STREAMING,
    "cancelled": pb.MESSAGE_STATUS_CANCELLED,
    "failed": pb.MESSAGE_STATUS_FAILED,
    "interrupted": pb.MESSAGE_STATUS_INTERRUPTED,
}
FINAL_TOOL_UPDATES = frozenset({"completed", "failed", "cancelled"})
MAX_PAGE_TOKEN = 2**63  # tokens are times or offsets, stored as SQLite's signed 64-bit INTEGER


def _unary(
    handler: Callable[[Any, Any, Context], Awaitable[T]],
) -> Callable[[Any, Any, Context], Awaitable[T]]:
    """Map a ServiceError to the RPC's status with rich details."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: Context) -> T:
        try:
            return await handler(self, request, context)
        except ServiceError as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises
        except Exception as exc:
            if not is_backend_outage(exc):
                raise
            log.warning("%s failed: a backend does not answer: %s", handler.__name__, exc)
            await _abort(
                context,
                Unavailable(
                    f"a backend does not answer ({type(exc).__name__}); retry",
                    reason="BACKEND_UNAVAILABLE",
                ),
            )
            raise  # unreachable: abort raises

    return wrapper


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """Serves agent_relay.v1.AgentService from a Hub."""

    def __init__(self, hub: Hub, telemetry: AgentTelemetry | None = None) -> None:
        self.hub = hub
        self.telemetry = telemetry or AgentTelemetry(None)

    async def Chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: Context
    ) -> AsyncIterator[pb.ChatResponse]:
        remember_credentials(context.invocation_metadata())
        stream = ChatStream(self.hub, forwarded=_forwarded(context))
        reader = asyncio.create_task(stream.read(request_iterator))
        try:
            while True:
                stream.subscriber.wake.clear()  # before collect(): no wake-up is lost
                response = stream.collect()
                if response is not None:
                    yield response
                    continue
                if reader.done() and (reader.exception() is not None or stream.done()):
                    if (failure := reader.exception()) is not None:
                        await _end_for_failed_read(context, failure)
                    return
                await stream.subscriber.wake.wait()
        finally:
            reader.cancel()
            stream.close()

    async def ExecuteTool(
        self,
        request_iterator: AsyncIterator[pb.ExecuteToolRequest],
        context: Context,
    ) -> AsyncIterator[pb.ExecuteToolResponse]:
        requests = aiter(request_iterator)
        try:
            first = await anext(requests, None)
        except DecodeError as exc:
            await _abort(context, _undecodable(exc))
            return
        if first is None or first.WhichOneof("command") != "start":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "start: the first request must start a tool call"
            )
            return
        start = first.start
        call_id = start.call_id or new_id("call")
        try:
            require(bool(start.tool_name), "start.tool_name", "is required")
            require(
                is_valid_client_id(call_id),
                "start.call_id",
                "must be 1-128 characters of letters, digits and ._:-",
            )
            if call_id in self.hub.direct_calls:
                raise AlreadyExists(f"start.call_id: {call_id!r} is running", field="start.call_id")
        except ServiceError as exc:
            await _abort(context, exc)
            return
        events: asyncio.Queue[pb.ToolExecution] = asyncio.Queue()
        runner = ToolCallRunner(
            self.hub.tools,
            call_id=call_id,
            tool_name=start.tool_name,
            arguments_json=start.arguments_json,
            emit=events.put_nowait,
        )
        self.hub.direct_calls[call_id] = runner
        traced = self.telemetry.tool_call(
            tool_name=start.tool_name,
            call_id=call_id,
            run=runner.run(),
            arguments_json=start.arguments_json,
        )
        task = asyncio.create_task(traced, name=f"tool {call_id}")
        reader = asyncio.create_task(_read_tool_cancels(requests, runner))
        try:
            while True:
                execution = await events.get()
                yield pb.ExecuteToolResponse(execution=execution)
                if execution.WhichOneof("update") in FINAL_TOOL_UPDATES:
                    return
        finally:
            reader.cancel()
            if not task.done():
                runner.cancel("requested")  # the caller went away: nobody wants the result
            self.hub.direct_calls.pop(call_id, None)

    @_unary
    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.CancelResponse:
        target = request.WhichOneof("target")
        require(target is not None, "target", "run_id or call_id is required")
        await access.authorize_cancel(current_caller(), self.hub, request)
        remember_credentials(context.invocation_metadata())
        if target == "run_id":
            require(bool(request.session_id), "session_id", "is required")
            cancelled = await self.hub.cancel_run(
                request.session_id, request.run_id, forwarded=_forwarded(context)
            )
        else:
            cancelled = await self.hub.cancel_tool_call(
                request.session_id, request.call_id, forwarded=_forwarded(context)
            )
        return pb.CancelResponse(cancelled=cancelled)

    @_unary
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.Session:
        require(len(request.user_id) <= 128, "user_id", "at most 128 characters")
        require(len(request.title) <= 200, "title", "at most 200 characters")
        user_id = access.own_user(current_caller(), request.user_id, "user_id")
        return await self.hub.create_session(user_id, request.title)

    @_unary
    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.Session:
        require(bool(request.session_id), "session_id", "is required")
        await access.authorize_session(current_caller(), self.hub, request.session_id)
        return (await self.hub.session(request.session_id)).to_proto()

    @_unary
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        limit = min(request.page_size or 50, 500)
        before = _page_token(request.page_token) or None
        user_id = access.own_user(current_caller(), request.user_id, "user_id")
        records = await self.hub.store.list_sessions(user_id, limit + 1, before)
        response = pb.ListSessionsResponse()
        for record in records[:limit]:
            rt = self.hub.loaded_session(record.session_id)
            if rt is not None:
                response.sessions.append(rt.to_proto())
            else:
                response.sessions.add(
                    session_id=record.session_id,
                    title=record.title,
                    user_id=record.user_id,
                    created_unix_ms=record.created_ms,
                    head_seq=await self.hub.event_log.head(record.session_id),
                )
        if len(records) > limit:
            response.next_page_token = str(records[limit - 1].created_ms)
        return response

    @_unary
    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        require(bool(request.session_id), "session_id", "is required")
        await access.authorize_session(current_caller(), self.hub, request.session_id)
        rt = await self.hub.session(request.session_id)
        limit = min(request.page_size or 200, 1000)
        offset = _page_token(request.page_token)
        # The seq these messages reflect, and the live text of replies still
        # streaming, are read together before the store: a client that resumes
        # after as_of_seq gets exactly the deltas the text does not have yet. The
        # answer waits until as_of_seq is durable, so that resume can start at once.
        as_of_seq = rt.log.next_seq - 1
        live = {
            r.message_id: (r.run_id, r.text)
            for r in self.hub.live_replies(rt.session_id, as_of_seq)
        }
        records = await self.hub.store.list_messages(rt.session_id, limit + 1, offset)
        await rt.durable(as_of_seq)
        response = pb.ListMessagesResponse(as_of_seq=as_of_seq)
        for record in records[:limit]:
            response.messages.append(_message(record, live))
        if len(records) > limit:
            response.next_page_token = str(offset + limit)
            return response
        stored = {record.message_id for record in records}
        for message_id, (run_id, text) in live.items():
            if message_id not in stored:  # streaming, not flushed to the store yet
                response.messages.add(
                    message_id=message_id,
                    role=pb.ROLE_ASSISTANT,
                    text=text,
                    run_id=run_id,
                    status=pb.MESSAGE_STATUS_STREAMING,
                )
        return response

    async def ListTools(
        self, request: pb.ListToolsRequest, context: Context
    ) -> pb.ListToolsResponse:
        return pb.ListToolsResponse(
            tools=[
                pb.ToolSpec(
                    name=s.name,
                    description=s.description,
                    parameters_json_schema=s.parameters_json,
                    timeout_s=s.timeout_s,
                )
                for s in self.hub.tools.specs()
            ]
        )


async def _abort(context: Context, error: ServiceError) -> None:
    """End the RPC with the error's rich status (google.rpc.Status in the trailers)."""
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _end_for_failed_read(context: Context, failure: BaseException) -> None:
    """The request stream failed: bytes that are no request are the caller's INVALID_ARGUMENT;
    anything else propagates (UNKNOWN), never a silent OK."""
    if isinstance(failure, DecodeError):
        await _abort(context, _undecodable(failure))
    raise failure


def _forwarded(context: Context) -> bool:
    """Whether another replica forwarded this call to this one (forward.py)."""
    return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())


def _undecodable(error: DecodeError) -> InvalidArgument:
    return InvalidArgument(f"request: not a valid message of this RPC ({error})", field="request")


async def _read_tool_cancels(
    requests: AsyncIterator[pb.ExecuteToolRequest], runner: ToolCallRunner
) -> None:
    """After the start: a cancel request cancels the call; anything else is ignored."""
    async for request in requests:
        if request.WhichOneof("command") == "cancel":
            runner.cancel("requested")


def _page_token(token: str) -> int:
    if not token:
        return 0
    try:
        value = int(token)
    except ValueError:
        value = -1
    if not 0 <= value < MAX_PAGE_TOKEN:
        raise InvalidArgument("page_token: not a token this service issued", field="page_token")
    return value


def _message(record: MessageRecord, live: dict[str, tuple[str, str]]) -> pb.Message:
    text = record.text
    if record.status == "streaming" and record.message_id in live:
        text = live[record.message_id][1]
    return pb.Message(
        message_id=record.message_id,
        role=ROLES.get(record.role, pb.ROLE_UNSPECIFIED),
        text=text,
        tool_calls=[
            pb.ToolCall(call_id=c.call_id, tool_name=c.tool_name, arguments_json=c.arguments_json)
            for c in record.tool_calls
        ],
        call_id=record.call_id,
        run_id=record.run_id,
        status=STATUSES.get(record.status, pb.MESSAGE_STATUS_UNSPECIFIED),
        created_unix_ms=record.created_ms,
        duration_ms=record.duration_ms,
    )
