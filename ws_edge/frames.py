"""Client frames in, reply frames out: validation and encoding, no I/O.

`decode_client_frame` is the only way a client's text becomes a frame object:
msgspec decodes and validates in one pass against a tagged union of Structs
(the tag is the frame's `type`), so a frame that reaches the connection logic
is well-formed. A bad frame raises `EdgeError` whose message names the field;
`frame_ref` salvages the frame's `id` so the error can name it in `ref`.

`decode_client_binary` does the same for a binary frame of the `agent-relay.v1+proto`
subprotocol: it parses the proto `Frame`, maps it to the fields the JSON frame would
have, and validates those with the same Structs, so both wires give the same frame
objects and the same `invalid_field` messages. Bytes that are no `Frame`, or a
`Frame` that is no client frame, are `bad_frame` as unreadable JSON is.

The reply builders return `OutFrame`s (ws_edge/wire.py), which encode for the wire
of the socket they are sent on.

JSON nested deeper than the decoder's recursion limit (about 1,000 levels, which
fits in a 64 KiB frame) raises RecursionError inside msgspec; both functions turn
it into `bad_frame` like any other unreadable frame, so a hostile frame earns a
reply and a strike, never a dropped socket or a traceback in the log.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from google.protobuf.message import DecodeError as ProtoDecodeError

from agent_relay.v1 import edge_pb2 as epb
from ws_edge.errors import EdgeError, ErrorCode
from ws_edge.wire import FieldsFrame, OutFrame, Wire

PROTOCOL = Wire.JSON.value

FrameId = Annotated[str, msgspec.Meta(max_length=64)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Delivery = Literal["stream", "final"]
BusyPolicyName = Literal["queue", "reject", "interrupt"]
# A text of up to 32 KiB characters; the frame size limit is checked before decoding.
MessageText = Annotated[str, msgspec.Meta(min_length=1, max_length=32_768)]
TraceHeader = Annotated[str, msgspec.Meta(max_length=512)]


class Auth(msgspec.Struct, tag_field="type", tag="auth", frozen=True):
    """Authenticate, or refresh the token in-band."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]
    id: FrameId | None = None


class Join(msgspec.Struct, tag_field="type", tag="join", frozen=True):
    """Follow a session from `after_seq` on, with the streaming preferences given."""

    session_id: SessionId
    after_seq: Seq = 0
    deltas: Delivery = "stream"
    tool_output: Delivery = "stream"
    id: FrameId | None = None


class Leave(msgspec.Struct, tag_field="type", tag="leave", frozen=True):
    """Stop following a session."""

    session_id: SessionId
    id: FrameId | None = None


class ChatMessage(msgspec.Struct, tag_field="type", tag="chat:message", frozen=True):
    """A user message; `message_id` makes retries safe."""

    session_id: SessionId
    message_id: ClientId
    text: MessageText
    busy_policy: BusyPolicyName | None = None
    traceparent: TraceHeader | None = None
    tracestate: TraceHeader | None = None
    id: FrameId | None = None


class ChatCancel(msgspec.Struct, tag_field="type", tag="chat:cancel", frozen=True):
    """Cancel a run (the active one when `run_id` is empty)."""

    session_id: SessionId
    run_id: Annotated[str, msgspec.Meta(max_length=128)] = ""
    id: FrameId | None = None


class ToolCancel(msgspec.Struct, tag_field="type", tag="tool:cancel", frozen=True):
    """Cancel one tool call of a run."""

    session_id: SessionId
    call_id: ClientId
    id: FrameId | None = None


class Ping(msgspec.Struct, tag_field="type", tag="ping", frozen=True):
    """Application heartbeat; answered with `pong` echoing `ts`."""

    ts: int | float | None = None
    id: FrameId | None = None


ClientFrame = Auth | Join | Leave | ChatMessage | ChatCancel | ToolCancel | Ping

_DECODER = msgspec.json.Decoder(ClientFrame)
_ENCODER = msgspec.json.Encoder()


class _IdOnly(msgspec.Struct):
    id: FrameId | None = None


_ID_DECODER = msgspec.json.Decoder(_IdOnly)

TOO_DEEP = "JSON nested too deep; client frames are flat objects"


def frame_size(data: str | bytes) -> int:
    """The frame's size in bytes (UTF-8), computed only when it could matter."""
    if isinstance(data, bytes):
        return len(data)
    return len(data.encode("utf-8")) if not data.isascii() else len(data)


def decode_client_frame(data: str | bytes, *, max_bytes: int) -> ClientFrame:
    """Decode and validate one client frame. Raises EdgeError naming what is wrong."""
    size = frame_size(data)
    if size > max_bytes:
        raise EdgeError(
            ErrorCode.FRAME_TOO_LARGE, f"frame is {size} bytes; the limit is {max_bytes}"
        )
    try:
        frame: ClientFrame = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "`$.type`" in text or "field `type`" in text or "Expected `object`" in text:
            raise EdgeError(ErrorCode.BAD_FRAME, f"{text} (known types: {KNOWN_TYPES})") from None
        raise EdgeError(ErrorCode.INVALID_FIELD, text) from None
    except msgspec.DecodeError as exc:
        raise EdgeError(ErrorCode.BAD_FRAME, f"not JSON: {exc}") from None
    except RecursionError:
        raise EdgeError(ErrorCode.BAD_FRAME, TOO_DEEP) from None
    return frame


def frame_ref(data: str | bytes) -> str | None:
    """The `id` of a frame that failed validation, when it can be read at all."""
    try:
        return _ID_DECODER.decode(data).id
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


# The JSON `type` of each client case of the proto Frame's `kind`.
_CLIENT_CASES = {
    "auth": "auth",
    "join": "join",
    "leave": "leave",
    "chat_message": "chat:message",
    "chat_cancel": "chat:cancel",
    "tool_cancel": "tool:cancel",
    "ping": "ping",
}


def _parse_binary(data: bytes) -> epb.Frame:
    try:
        return epb.Frame.FromString(data)
    except ProtoDecodeError as exc:
        raise EdgeError(ErrorCode.BAD_FRAME, f"not a protobuf Frame: {exc}") from None
    except RecursionError:  # a message nested past the parser's limit
        raise EdgeError(ErrorCode.BAD_FRAME, "protobuf nested too deep") from None


def decode_client_binary(data: bytes, *, max_bytes: int) -> ClientFrame:
    """Decode and validate one binary (proto) client frame. Raises EdgeError as
    `decode_client_frame` does."""
    if len(data) > max_bytes:
        raise EdgeError(
            ErrorCode.FRAME_TOO_LARGE, f"frame is {len(data)} bytes; the limit is {max_bytes}"
        )
    parsed = _parse_binary(data)
    case = parsed.WhichOneof("kind")
    frame_type = _CLIENT_CASES.get(case or "")
    if frame_type is None:
        what = f"`{case}` is not a client frame" if case else "a Frame with no kind"
        raise EdgeError(ErrorCode.BAD_FRAME, f"{what} (known kinds: {', '.join(_CLIENT_CASES)})")
    fields: dict[str, Any] = {"type": frame_type}
    if parsed.HasField("id"):
        fields["id"] = parsed.id
    # ListFields: the fields set (a scalar not at its default, an optional one present),
    # so an absent field takes the Struct's default just as a missing JSON key does.
    for fd, value in getattr(parsed, case or "").ListFields():
        fields[fd.name] = value
    try:
        frame: ClientFrame = msgspec.convert(fields, ClientFrame)
    except msgspec.ValidationError as exc:
        raise EdgeError(ErrorCode.INVALID_FIELD, str(exc)) from None
    return frame


def binary_frame_ref(data: bytes) -> str | None:
    """The `id` of a binary frame that failed validation, when it parses at all."""
    try:
        parsed = epb.Frame.FromString(data)
    except (ProtoDecodeError, RecursionError):
        return None
    if not parsed.HasField("id") or len(parsed.id) > 64:
        return None
    ref: str = parsed.id
    return ref


def decode_for(
    wire: Wire, data: str | bytes, *, max_bytes: int
) -> tuple[ClientFrame | None, EdgeError | None, str | None]:
    """One client frame of a socket speaking `wire`: (frame, None, None) when it is good,
    else (None, the error, the frame's id when readable). A text frame on the proto wire
    or a binary one on the JSON wire is `bad_frame`."""
    if wire is Wire.PROTO:
        if isinstance(data, str):
            return None, EdgeError(ErrorCode.BAD_FRAME, _WRONG_KIND[wire]), None
        try:
            return decode_client_binary(data, max_bytes=max_bytes), None, None
        except EdgeError as error:
            return None, error, binary_frame_ref(data)
    if isinstance(data, bytes):
        return None, EdgeError(ErrorCode.BAD_FRAME, _WRONG_KIND[wire]), None
    try:
        return decode_client_frame(data, max_bytes=max_bytes), None, None
    except EdgeError as error:
        return None, error, frame_ref(data)


def ref_for(wire: Wire, data: str | bytes) -> str | None:
    """The id of a frame refused before decoding (over budget), when readable."""
    if isinstance(data, bytes):
        return binary_frame_ref(data) if wire is Wire.PROTO else None
    return frame_ref(data) if wire is Wire.JSON else None


_WRONG_KIND = {
    Wire.JSON: "binary frames are not accepted on agent-relay.v1; send JSON text frames"
    " (or offer agent-relay.v1+proto at the handshake)",
    Wire.PROTO: "text frames are not accepted on agent-relay.v1+proto; send binary"
    " protobuf Frame messages",
}


KNOWN_TYPES = ", ".join(
    str(cls.__struct_config__.tag)
    for cls in (Auth, Join, Leave, ChatMessage, ChatCancel, ToolCancel, Ping)
)


def encode(frame: dict[str, Any]) -> bytes:
    """Encode one server frame as UTF-8 JSON bytes."""
    return _ENCODER.encode(frame)


def welcome_frame(
    *,
    heartbeat_ms: int,
    auth_timeout_ms: int,
    max_frame_bytes: int,
    batch_ms: float,
    wire: Wire = Wire.JSON,
) -> OutFrame:
    """The first frame the edge sends on every socket; `protocol` names its subprotocol."""
    return FieldsFrame(
        {
            "type": "welcome",
            "protocol": wire.value,
            "heartbeat_ms": heartbeat_ms,
            "auth_timeout_ms": auth_timeout_ms,
            "max_frame_bytes": max_frame_bytes,
            "batch_ms": batch_ms,
        }
    )


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    # A frame without an id gets a reply without `ref` (omitted, never null).
    if ref is not None:
        frame["ref"] = ref
    return frame


def ack_frame(ref: str | None, **fields: Any) -> OutFrame:
    """The success reply to a client frame."""
    return FieldsFrame({**_with_ref({"type": "ack"}, ref), **fields})


def error_frame(error: EdgeError, ref: str | None = None, **extra: Any) -> OutFrame:
    """The failure reply to a client frame (or, without ref, a notice about the socket)."""
    frame = _with_ref({"type": "error"}, ref)
    frame.update(code=str(error.code), message=error.message, retryable=error.retryable)
    if error.retry_after_ms is not None:
        frame["retry_after_ms"] = error.retry_after_ms
    frame.update(extra)
    return FieldsFrame(frame)


def upstream_frame(session_id: str, state: str) -> OutFrame:
    """A notice that the agent service behind a joined session went away (`unavailable`)
    or is back and the session followed again (`available`)."""
    return FieldsFrame({"type": "upstream", "session_id": session_id, "state": state})


def pong_frame(ref: str | None, ts: int | float | None) -> OutFrame:
    """The reply to an application ping."""
    return FieldsFrame({**_with_ref({"type": "pong"}, ref), "ts": ts})
