"""Client frames in, reply frames out: validation and encoding, no I/O.

`decode_client_frame` is the only way a client's text becomes a frame object:
msgspec decodes and validates in one pass against a tagged union of Structs
(the tag is the frame's `type`), so a frame that reaches the connection logic
is well-formed. A bad frame raises `EdgeError` whose message names the field;
`frame_ref` salvages the frame's `id` so the error can name it in `ref`.

JSON nested deeper than the decoder's recursion limit (about 1,000 levels, which
fits in a 64 KiB frame) raises RecursionError inside msgspec; both functions turn
it into `bad_frame` like any other unreadable frame, so a hostile frame earns a
reply and a strike, never a dropped socket or a traceback in the log.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ws_edge.errors import EdgeError, ErrorCode

PROTOCOL = "agent-relay.v1"
SUPPORTED_PROTOCOLS = (PROTOCOL,)

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


KNOWN_TYPES = ", ".join(
    str(cls.__struct_config__.tag)
    for cls in (Auth, Join, Leave, ChatMessage, ChatCancel, ToolCancel, Ping)
)


def encode(frame: dict[str, Any]) -> bytes:
    """Encode one server frame as UTF-8 JSON bytes."""
    return _ENCODER.encode(frame)


def welcome_frame(
    *, heartbeat_ms: int, auth_timeout_ms: int, max_frame_bytes: int, batch_ms: float
) -> bytes:
    """The first frame the edge sends on every socket."""
    return encode(
        {
            "type": "welcome",
            "protocol": PROTOCOL,
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


def ack_frame(ref: str | None, **fields: Any) -> bytes:
    """The success reply to a client frame."""
    return encode({**_with_ref({"type": "ack"}, ref), **fields})


def error_frame(error: EdgeError, ref: str | None = None, **extra: Any) -> bytes:
    """The failure reply to a client frame (or, without ref, a notice about the socket)."""
    frame = _with_ref({"type": "error"}, ref)
    frame.update(code=str(error.code), message=error.message, retryable=error.retryable)
    if error.retry_after_ms is not None:
        frame["retry_after_ms"] = error.retry_after_ms
    frame.update(extra)
    return encode(frame)


def upstream_frame(session_id: str, state: str) -> bytes:
    """A notice that the agent service behind a joined session went away (`unavailable`)
    or is back and the session followed again (`available`)."""
    return encode({"type": "upstream", "session_id": session_id, "state": state})


def pong_frame(ref: str | None, ts: int | float | None) -> bytes:
    """The reply to an application ping."""
    return encode({**_with_ref({"type": "pong"}, ref), "ts": ts})
