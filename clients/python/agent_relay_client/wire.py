"""The edge protocol's two wire formats, for the client: one codec each.

- `"json"`, subprotocol `agent-relay.v1`: text frames, one JSON object each.
- `"proto"`, subprotocol `agent-relay.v1+proto`: binary frames, each one serialized
  `agent_relay.v1.Frame` (proto/agent_relay/v1/edge.proto).

A codec turns the client's frames (the JSON mapping, a dict with `type`) into what the
socket sends, and what the socket received into the typed frames of `events.py`. Both
give the same objects, so nothing above the codec knows which wire is in use.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from google.protobuf.message import DecodeError as ProtoDecodeError

from agent_relay.v1 import edge_pb2 as epb
from agent_relay_client.errors import ProtocolError
from agent_relay_client.events import ResponseDelta, ServerFrame, decode_frame
from agent_relay_client.proto_convert import event_from_proto

Wire = Literal["json", "proto"]

PROTOCOLS: dict[str, str] = {"json": "agent-relay.v1", "proto": "agent-relay.v1+proto"}

# The proto Frame.kind case of each client frame type.
_CLIENT_CASES = {
    "auth": "auth",
    "join": "join",
    "leave": "leave",
    "chat:message": "chat_message",
    "chat:cancel": "chat_cancel",
    "tool:cancel": "tool_cancel",
    "ping": "ping",
}
# The JSON type of each server case given as fields (events are converted on their own).
_SERVER_TYPES = {
    "welcome": "welcome",
    "ack": "ack",
    "error": "error",
    "pong": "pong",
    "upstream": "upstream",
}


class JsonCodec:
    """`agent-relay.v1`: JSON text frames."""

    wire: Wire = "json"
    protocol = PROTOCOLS["json"]
    binary = False

    def encode(self, frame: dict[str, Any]) -> str | bytes:
        return msgspec.json.encode(frame).decode("utf-8")

    def decode(self, data: str | bytes) -> ServerFrame:
        if isinstance(data, bytes):
            raise ProtocolError("binary frame from the edge on agent-relay.v1")
        return decode_frame(data)


class ProtoCodec:
    """`agent-relay.v1+proto`: binary protobuf frames."""

    wire: Wire = "proto"
    protocol = PROTOCOLS["proto"]
    binary = True

    def encode(self, frame: dict[str, Any]) -> str | bytes:
        fields = dict(frame)
        case = _CLIENT_CASES.get(fields.pop("type"))
        if case is None:
            raise ValueError(f"not a client frame: {frame.get('type')!r}")
        frame_id = fields.pop("id", None)
        body = {k: v for k, v in fields.items() if v is not None}
        message = epb.Frame.DESCRIPTOR.fields_by_name[case].message_type._concrete_class
        data: bytes = epb.Frame(id=frame_id, **{case: message(**body)}).SerializeToString()
        return data

    def decode(self, data: str | bytes) -> ServerFrame:
        if isinstance(data, str):
            raise ProtocolError("text frame from the edge on agent-relay.v1+proto")
        return decode_proto_frame(data)


def decode_proto_frame(data: bytes) -> ServerFrame:
    """Parse one binary server frame into the typed frame the JSON one would give."""
    try:
        frame = epb.Frame.FromString(data)
    except ProtoDecodeError as exc:
        raise ProtocolError(f"bad frame from the edge: not a protobuf Frame: {exc}") from exc
    case = frame.WhichOneof("kind")
    if case == "event":
        return event_from_proto(frame.event)
    if case == "response":
        r = frame.response
        return ResponseDelta(
            session_id=r.session_id,
            seq=r.seq,
            from_seq=r.from_seq,
            run_id=r.run_id,
            time_unix_ms=r.time_unix_ms,
            text=r.text,
            step=r.step,
        )
    frame_type = _SERVER_TYPES.get(case or "")
    if frame_type is None:
        raise ProtocolError(f"bad frame from the edge: kind {case!r}")
    fields: dict[str, Any] = {"type": frame_type}
    if frame.HasField("ref"):
        fields["ref"] = frame.ref
    for fd, value in getattr(frame, frame_type).ListFields():
        fields[fd.name] = value
    try:
        result: ServerFrame = msgspec.convert(fields, ServerFrame, strict=False)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"bad frame from the edge: {exc}") from exc
    return result


def codec_for(wire: Wire) -> JsonCodec | ProtoCodec:
    """The codec of a wire format."""
    if wire == "proto":
        return ProtoCodec()
    if wire == "json":
        return JsonCodec()
    raise ValueError(f"wire must be 'json' or 'proto', not {wire!r}")
