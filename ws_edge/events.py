"""The JSON mapping of the agent's SessionEvent, derived from the proto descriptors.

A frame is the event's envelope (`session_id`, `seq`, `run_id`, `time_unix_ms`)
plus every field of the message in its `kind` oneof, under the proto's field
names; a `ToolExecution`'s `update` oneof becomes `status` (the case's name)
plus that case's fields. Enums become the value's name without the type's
prefix, lower-cased (FINISH_REASON_STOP -> "stop"). Because the mapping walks
the descriptors, a field added to the proto appears in the frames without an
edit here; tests/unit/edge/test_events.py checks every field of every kind.

Classification helpers tell the room which events are deltas and which tool
updates are "final" for selective streaming.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from agent_relay.v1 import agent_pb2 as pb
from ws_edge.frames import encode
from ws_edge.wire import DeltaFrame, EventFrame, OutFrame

# The frame `type` of each SessionEvent.kind case.
FRAME_TYPES: dict[str, str] = {
    "message_accepted": "chat:accepted",
    "run_started": "chat:run_started",
    "response_delta": "chat:response",
    "tool_execution": "chat:tool_execution",
    "run_error": "chat:run_error",
    "run_completed": "chat:complete",
    "replay_gap": "chat:gap",
}

# Tool updates sent to a socket that asked for tool_output "final".
FINAL_TOOL_STATUSES = frozenset({"started", "completed", "failed", "cancelled"})

_ENVELOPE = ("session_id", "seq", "run_id", "time_unix_ms")
_enum_prefixes: dict[str, str] = {}


def _enum_name(enum: EnumDescriptor, number: int) -> str | int:
    value = enum.values_by_number.get(number)
    if value is None:
        return number
    prefix = _enum_prefixes.get(enum.full_name)
    if prefix is None:
        prefix = "".join("_" + c if c.isupper() else c.upper() for c in enum.name).lstrip("_") + "_"
        _enum_prefixes[enum.full_name] = prefix
    name = value.name
    return (name[len(prefix) :] if name.startswith(prefix) else name).lower()


def _value(fd: Any, value: Any) -> Any:  # a pure-Python or upb FieldDescriptor
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_dict(value)
    if fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None:
        return _enum_name(fd.enum_type, value)
    return value


def message_to_dict(msg: Message, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every field of msg (defaults included) under its proto name; oneofs flattened.

    A oneof case holding a message contributes `status` (for ToolExecution's
    `update`) or its own name, plus the case message's fields at the same level.
    """
    out = {} if out is None else out
    desc = msg.DESCRIPTOR
    for fd in desc.fields:
        if fd.containing_oneof is not None:
            continue
        value = getattr(msg, fd.name)
        if fd.is_repeated:
            out[fd.name] = [_value(fd, v) for v in value]
        else:
            out[fd.name] = _value(fd, value)
    for oneof in desc.oneofs:
        case = msg.WhichOneof(oneof.name)
        if case is None:
            continue
        fd = desc.fields_by_name[case]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            out["status" if oneof.name == "update" else oneof.name] = case
            message_to_dict(getattr(msg, case), out)
        else:
            out[case] = _value(fd, getattr(msg, case))
    return out


def event_kind(event: pb.SessionEvent) -> str | None:
    """The `kind` oneof case of an event (None for an empty event)."""
    kind: str | None = event.WhichOneof("kind")
    return kind


def event_to_dict(event: pb.SessionEvent) -> dict[str, Any]:
    """The frame of one event, as a dict (see the module docstring for the mapping)."""
    kind = event_kind(event)
    frame: dict[str, Any] = {"type": FRAME_TYPES.get(kind or "", "chat:unknown")}
    for name in _ENVELOPE:
        frame[name] = getattr(event, name)
    if kind is not None:
        body = message_to_dict(getattr(event, kind))
        for key, value in body.items():
            # The envelope wins: MessageAccepted's run_id and seq repeat it.
            frame.setdefault(key, value)
    if kind == "replay_gap":
        del frame["seq"]
    return frame


def event_json(event: pb.SessionEvent) -> bytes:
    """The JSON frame bytes of one event."""
    return encode(event_to_dict(event))


def encode_event(event: pb.SessionEvent) -> OutFrame:
    """The frame of one event, for either wire (the proto wire sends the event as is)."""
    return EventFrame(event, event_json)


def tool_status(event: pb.SessionEvent) -> str | None:
    """The `update` case of a tool_execution event, else None."""
    if event_kind(event) != "tool_execution":
        return None
    status: str | None = event.tool_execution.WhichOneof("update")
    return status


def delta_frame(
    *,
    session_id: str,
    run_id: str,
    from_seq: int,
    seq: int,
    time_unix_ms: int,
    text: str,
    step: int,
) -> OutFrame:
    """The frame of a batch of deltas of one run and step: `from_seq`..`seq`, texts joined."""
    return DeltaFrame(
        session_id=session_id,
        run_id=run_id,
        from_seq=from_seq,
        seq=seq,
        time_unix_ms=time_unix_ms,
        text=text,
        step=step,
    )
