from agent_relay.v1 import agent_pb2 as _agent_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("id", "ref", "auth", "join", "leave", "chat_message", "chat_cancel", "tool_cancel", "ping", "welcome", "ack", "error", "pong", "upstream", "event", "response")
    ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    CHAT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHAT_CANCEL_FIELD_NUMBER: _ClassVar[int]
    TOOL_CANCEL_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    id: str
    ref: str
    auth: AuthFrame
    join: JoinFrame
    leave: LeaveFrame
    chat_message: ChatMessageFrame
    chat_cancel: ChatCancelFrame
    tool_cancel: ToolCancelFrame
    ping: PingFrame
    welcome: WelcomeFrame
    ack: AckFrame
    error: ErrorFrame
    pong: PongFrame
    upstream: UpstreamFrame
    event: _agent_pb2.SessionEvent
    response: ResponseFrame
    def __init__(self, id: _Optional[str] = ..., ref: _Optional[str] = ..., auth: _Optional[_Union[AuthFrame, _Mapping]] = ..., join: _Optional[_Union[JoinFrame, _Mapping]] = ..., leave: _Optional[_Union[LeaveFrame, _Mapping]] = ..., chat_message: _Optional[_Union[ChatMessageFrame, _Mapping]] = ..., chat_cancel: _Optional[_Union[ChatCancelFrame, _Mapping]] = ..., tool_cancel: _Optional[_Union[ToolCancelFrame, _Mapping]] = ..., ping: _Optional[_Union[PingFrame, _Mapping]] = ..., welcome: _Optional[_Union[WelcomeFrame, _Mapping]] = ..., ack: _Optional[_Union[AckFrame, _Mapping]] = ..., error: _Optional[_Union[ErrorFrame, _Mapping]] = ..., pong: _Optional[_Union[PongFrame, _Mapping]] = ..., upstream: _Optional[_Union[UpstreamFrame, _Mapping]] = ..., event: _Optional[_Union[_agent_pb2.SessionEvent, _Mapping]] = ..., response: _Optional[_Union[ResponseFrame, _Mapping]] = ...) -> None: ...

class AuthFrame(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class JoinFrame(_message.Message):
    __slots__ = ("session_id", "after_seq", "deltas", "tool_output")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    TOOL_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    after_seq: int
    deltas: str
    tool_output: str
    def __init__(self, session_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., deltas: _Optional[str] = ..., tool_output: _Optional[str] = ...) -> None: ...

class LeaveFrame(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ChatMessageFrame(_message.Message):
    __slots__ = ("session_id", "message_id", "text", "busy_policy", "traceparent", "tracestate")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BUSY_POLICY_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    message_id: str
    text: str
    busy_policy: str
    traceparent: str
    tracestate: str
    def __init__(self, session_id: _Optional[str] = ..., message_id: _Optional[str] = ..., text: _Optional[str] = ..., busy_policy: _Optional[str] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class ChatCancelFrame(_message.Message):
    __slots__ = ("session_id", "run_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ToolCancelFrame(_message.Message):
    __slots__ = ("session_id", "call_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    call_id: str
    def __init__(self, session_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class PingFrame(_message.Message):
    __slots__ = ("ts",)
    TS_FIELD_NUMBER: _ClassVar[int]
    ts: float
    def __init__(self, ts: _Optional[float] = ...) -> None: ...

class WelcomeFrame(_message.Message):
    __slots__ = ("protocol", "heartbeat_ms", "auth_timeout_ms", "max_frame_bytes", "batch_ms")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    AUTH_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_MS_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    heartbeat_ms: int
    auth_timeout_ms: int
    max_frame_bytes: int
    batch_ms: float
    def __init__(self, protocol: _Optional[str] = ..., heartbeat_ms: _Optional[int] = ..., auth_timeout_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., batch_ms: _Optional[float] = ...) -> None: ...

class AckFrame(_message.Message):
    __slots__ = ("user_id", "expires_at", "session_id", "head_seq", "message_id", "seq", "run_id", "queued", "duplicate", "cancelled")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    expires_at: int
    session_id: str
    head_seq: int
    message_id: str
    seq: int
    run_id: str
    queued: bool
    duplicate: bool
    cancelled: bool
    def __init__(self, user_id: _Optional[str] = ..., expires_at: _Optional[int] = ..., session_id: _Optional[str] = ..., head_seq: _Optional[int] = ..., message_id: _Optional[str] = ..., seq: _Optional[int] = ..., run_id: _Optional[str] = ..., queued: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class ErrorFrame(_message.Message):
    __slots__ = ("code", "message", "retryable", "retry_after_ms", "session_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retryable: bool
    retry_after_ms: int
    session_id: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class PongFrame(_message.Message):
    __slots__ = ("ts",)
    TS_FIELD_NUMBER: _ClassVar[int]
    ts: float
    def __init__(self, ts: _Optional[float] = ...) -> None: ...

class UpstreamFrame(_message.Message):
    __slots__ = ("session_id", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: str
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ResponseFrame(_message.Message):
    __slots__ = ("session_id", "seq", "from_seq", "run_id", "time_unix_ms", "text", "step")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    from_seq: int
    run_id: str
    time_unix_ms: int
    text: str
    step: int
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., from_seq: _Optional[int] = ..., run_id: _Optional[str] = ..., time_unix_ms: _Optional[int] = ..., text: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...
