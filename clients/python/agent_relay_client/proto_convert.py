"""Conversions at the gRPC boundary: status codes to the error tree, protobuf to typed events.

The one place where `agent_relay.v1` messages become this package's types, so
the rest of the client (and its users) never touch protobuf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import message as _pb_message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agent_relay.v1 import agent_pb2 as pb
from agent_relay_client import codes_gen, errors
from agent_relay_client.conversation import HistoryMessage
from agent_relay_client.events import (
    MessageAccepted,
    ReplayGap,
    ResponseDelta,
    RunCompleted,
    RunError,
    RunStarted,
    SessionEvent,
    ToolExecution,
    Usage,
)

# ----- errors: gRPC status -> the package's tree ----------------------------------------------

_STATUS_NAMES = {s.value[0]: s.name for s in grpc.StatusCode}


def _code_for_status(status_code: int) -> str:
    """The edge's error code for a gRPC status number (the spec's table, as at the edge)."""
    name = _STATUS_NAMES.get(status_code)
    return codes_gen.error_code_for_grpc(name) if name else codes_gen.DEFAULT_ERROR_CODE


def error_from_status(status: status_pb2.Status) -> errors.RequestError:
    """The exception for a google.rpc.Status (a Chat command's error reply, or an RPC's)."""
    code = _code_for_status(status.code)
    retry_after_ms = 0
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_after_ms = info.retry_delay.seconds * 1000 + info.retry_delay.nanos // 1_000_000
    return errors.error_from_code(code, status.message, retry_after_ms=retry_after_ms)


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.AgentRelayError:
    """The exception for a failed RPC. A service that cannot be reached is a TransportError."""
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return errors.TransportError(f"{code.name}: {exc.details() or ''}".strip(": "))
    status = None
    with contextlib.suppress(ValueError, _pb_message.DecodeError):
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]  # an AioRpcError is a Call
    if status is None:
        status = status_pb2.Status(code=code.value[0], message=exc.details() or "")
    return error_from_status(status)


# ----- protobuf -> typed results ----------------------------------------------------------------


def _enum_name(value: str, prefix: str) -> str:
    return value.removeprefix(prefix).lower()


def event_from_proto(ev: pb.SessionEvent) -> SessionEvent:
    """The typed event for one protobuf SessionEvent. Raises ProtocolError for an empty one."""
    head: dict[str, Any] = {
        "session_id": ev.session_id,
        "seq": ev.seq,
        "run_id": ev.run_id,
        "time_unix_ms": ev.time_unix_ms,
    }
    kind = ev.WhichOneof("kind")
    if kind == "message_accepted":
        m = ev.message_accepted
        return MessageAccepted(**head, message_id=m.message_id, text=m.text, queued=m.queued)
    if kind == "run_started":
        r = ev.run_started
        return RunStarted(
            **head,
            message_id=r.message_id,
            assistant_message_id=r.assistant_message_id,
            model=r.model,
        )
    if kind == "response_delta":
        return ResponseDelta(**head, text=ev.response_delta.text, step=ev.response_delta.step)
    if kind == "tool_execution":
        return tool_event_from_proto(ev.tool_execution, head)
    if kind == "run_error":
        e = ev.run_error
        return RunError(
            **head,
            code=e.code,
            message=e.message,
            retryable=e.retryable,
            retry_after_ms=e.retry_after_ms,
        )
    if kind == "run_completed":
        c = ev.run_completed
        return RunCompleted(
            **head,
            finish_reason=_enum_name(pb.FinishReason.Name(c.finish_reason), "FINISH_REASON_"),
            usage=Usage(input_tokens=c.usage.input_tokens, output_tokens=c.usage.output_tokens),
            assistant_message_id=c.assistant_message_id,
            text=c.text,
            duration_ms=c.duration_ms,
        )
    if kind == "replay_gap":
        g = ev.replay_gap
        return ReplayGap(**head, after_seq=g.after_seq, first_seq=g.first_seq)
    raise errors.ProtocolError(f"session event of unknown kind {kind!r}")


def tool_event_from_proto(t: pb.ToolExecution, head: Mapping[str, Any]) -> ToolExecution:
    """The typed ToolExecution for a protobuf one (`head`: session_id, seq, run_id, time)."""
    base: dict[str, Any] = {**head, "call_id": t.call_id, "tool_name": t.tool_name}
    update = t.WhichOneof("update")
    if update == "started":
        return ToolExecution(**base, status="started", arguments_json=t.started.arguments_json)
    if update == "progress":
        p = t.progress
        return ToolExecution(**base, status="progress", fraction=p.fraction, note=p.note)
    if update == "output":
        o = t.output
        return ToolExecution(**base, status="output", text=o.text, stream=o.stream)
    if update == "completed":
        c = t.completed
        return ToolExecution(**base, status="completed", result=c.result, duration_ms=c.duration_ms)
    if update == "failed":
        f = t.failed
        return ToolExecution(
            **base, status="failed", code=f.code, message=f.message, duration_ms=f.duration_ms
        )
    if update == "cancelled":
        return ToolExecution(**base, status="cancelled", reason=t.cancelled.reason)
    raise errors.ProtocolError(f"tool execution of unknown kind {update!r}")


def history_message_from_proto(m: pb.Message) -> HistoryMessage:
    """The transport-neutral form of one durable message."""
    return HistoryMessage(
        message_id=m.message_id,
        role=_enum_name(pb.Role.Name(m.role), "ROLE_"),
        text=m.text,
        status=_enum_name(pb.MessageStatus.Name(m.status), "MESSAGE_STATUS_"),
        run_id=m.run_id,
        call_id=m.call_id,
        tool_calls=tuple((c.call_id, c.tool_name, c.arguments_json) for c in m.tool_calls),
        created_unix_ms=m.created_unix_ms,
    )
