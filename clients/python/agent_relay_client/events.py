"""Typed session events and edge frames, the same for both transports.

A session event is one entry of a session's log (or a ReplayGap). The WebSocket
edge sends them as JSON frames (docs/protocol.md); `decode_frame()` parses and
validates one frame into these types. The gRPC client converts protobuf
`SessionEvent`s into the same types, so the core that assembles messages does
not know which transport fed it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from agent_relay_client.errors import ProtocolError

ToolStatus = Literal["started", "progress", "output", "completed", "failed", "cancelled"]
FINAL_TOOL_STATUSES: frozenset[ToolStatus] = frozenset({"completed", "failed", "cancelled"})
FinishReason = Literal["stop", "cancelled", "error", "interrupted", "max_steps", "unspecified"]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    session_id: str
    seq: int = 0
    run_id: str = ""
    time_unix_ms: int = 0


class MessageAccepted(_Event, frozen=True, kw_only=True, tag="chat:accepted"):
    """A user message was accepted and stored (`queued`: behind an active run)."""

    message_id: str = ""
    text: str = ""
    queued: bool = False
    duplicate: bool = False  # only ever true in a command reply, never in the log


class RunStarted(_Event, frozen=True, kw_only=True, tag="chat:run_started"):
    """A run started for the user message `message_id`."""

    message_id: str = ""
    assistant_message_id: str = ""
    model: str = ""


class ResponseDelta(_Event, frozen=True, kw_only=True, tag="chat:response"):
    """Assistant text. A batch covers seqs `from_seq`..`seq` (from_seq 0: just `seq`)."""

    text: str = ""
    step: int = 0
    from_seq: int = 0

    @property
    def first_seq(self) -> int:
        """The first sequence number this event covers."""
        return self.from_seq or self.seq


class ToolExecution(_Event, frozen=True, kw_only=True, tag="chat:tool_execution"):
    """A tool call changed state; which fields are set depends on `status`."""

    call_id: str
    tool_name: str = ""
    status: ToolStatus
    arguments_json: str = ""  # started
    fraction: float = 0.0  # progress
    note: str = ""  # progress
    text: str = ""  # output
    stream: str = ""  # output
    result: str = ""  # completed
    duration_ms: float = 0.0  # completed, failed
    code: str = ""  # failed
    message: str = ""  # failed
    reason: str = ""  # cancelled


class RunError(_Event, frozen=True, kw_only=True, tag="chat:run_error"):
    """A run hit an error; a RunCompleted follows."""

    code: str = ""
    message: str = ""
    retryable: bool = False
    retry_after_ms: int = 0


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts of a run."""

    input_tokens: int = 0
    output_tokens: int = 0


class RunCompleted(_Event, frozen=True, kw_only=True, tag="chat:complete"):
    """A run ended; always its last event. `text` is the whole assistant text."""

    finish_reason: str = "unspecified"  # one of FinishReason; unknown names pass through
    usage: Usage = Usage()
    assistant_message_id: str = ""
    text: str = ""
    duration_ms: float = 0.0


class ReplayGap(_Event, frozen=True, kw_only=True, tag="chat:gap"):
    """Events after `after_seq` and before `first_seq` are gone: reload history, rejoin."""

    after_seq: int = 0
    first_seq: int = 0


SessionEvent = (
    MessageAccepted
    | RunStarted
    | ResponseDelta
    | ToolExecution
    | RunError
    | RunCompleted
    | ReplayGap
)


# ----- replies and control frames of the edge -------------------------------------------------


class Welcome(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="welcome"):
    """The edge's first frame: its limits and timings."""

    protocol: str = ""
    heartbeat_ms: int = 15000
    auth_timeout_ms: int = 10000
    max_frame_bytes: int = 65536
    batch_ms: int = 0


class Ack(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="ack"):
    """A command succeeded. Which fields are set depends on the command."""

    ref: str = ""
    user_id: str = ""  # auth
    expires_at: int = 0  # auth
    session_id: str = ""  # join
    head_seq: int = 0  # join
    message_id: str = ""  # chat:message
    seq: int = 0  # chat:message
    run_id: str = ""  # chat:message
    queued: bool = False  # chat:message
    duplicate: bool = False  # chat:message
    cancelled: bool = False  # chat:cancel, tool:cancel


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="error"):
    """A command failed; the socket stays open."""

    ref: str = ""
    code: str = "internal"
    message: str = ""
    retryable: bool = False
    retry_after_ms: int = 0


class Pong(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="pong"):
    """The reply to an application ping."""

    ref: str = ""
    ts: int = 0


class UpstreamChanged(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="upstream"):
    """The agent service behind a joined session went away (`unavailable`; the edge
    retries and resumes on its own) or is back (`available`)."""

    session_id: str = ""
    state: str = ""


ServerFrame = Welcome | Ack | ErrorReply | Pong | UpstreamChanged | SessionEvent

# strict=False: proto's JSON mapping writes 64-bit integers as strings; accept both.
_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame, strict=False)


def decode_frame(data: str | bytes) -> ServerFrame:
    """Parse one server frame. Raises ProtocolError naming what was wrong."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad frame from the edge: {exc}") from exc
