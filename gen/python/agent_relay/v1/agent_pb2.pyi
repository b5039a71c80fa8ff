from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BusyPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUSY_POLICY_UNSPECIFIED: _ClassVar[BusyPolicy]
    BUSY_POLICY_QUEUE: _ClassVar[BusyPolicy]
    BUSY_POLICY_REJECT: _ClassVar[BusyPolicy]
    BUSY_POLICY_INTERRUPT: _ClassVar[BusyPolicy]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_ERROR: _ClassVar[FinishReason]
    FINISH_REASON_INTERRUPTED: _ClassVar[FinishReason]
    FINISH_REASON_MAX_STEPS: _ClassVar[FinishReason]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_IDLE: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_TOOL: _ClassVar[Role]

class MessageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATUS_UNSPECIFIED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_COMPLETE: _ClassVar[MessageStatus]
    MESSAGE_STATUS_STREAMING: _ClassVar[MessageStatus]
    MESSAGE_STATUS_CANCELLED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_FAILED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_INTERRUPTED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_QUEUED: _ClassVar[MessageStatus]
BUSY_POLICY_UNSPECIFIED: BusyPolicy
BUSY_POLICY_QUEUE: BusyPolicy
BUSY_POLICY_REJECT: BusyPolicy
BUSY_POLICY_INTERRUPT: BusyPolicy
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_ERROR: FinishReason
FINISH_REASON_INTERRUPTED: FinishReason
FINISH_REASON_MAX_STEPS: FinishReason
RUN_STATE_IDLE: RunState
RUN_STATE_RUNNING: RunState
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_TOOL: Role
MESSAGE_STATUS_UNSPECIFIED: MessageStatus
MESSAGE_STATUS_COMPLETE: MessageStatus
MESSAGE_STATUS_STREAMING: MessageStatus
MESSAGE_STATUS_CANCELLED: MessageStatus
MESSAGE_STATUS_FAILED: MessageStatus
MESSAGE_STATUS_INTERRUPTED: MessageStatus
MESSAGE_STATUS_QUEUED: MessageStatus

class ChatRequest(_message.Message):
    __slots__ = ("request_id", "join", "leave", "send", "cancel_run", "cancel_tool_call")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    CANCEL_RUN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    join: JoinSession
    leave: LeaveSession
    send: SendMessage
    cancel_run: CancelRun
    cancel_tool_call: CancelToolCall
    def __init__(self, request_id: _Optional[str] = ..., join: _Optional[_Union[JoinSession, _Mapping]] = ..., leave: _Optional[_Union[LeaveSession, _Mapping]] = ..., send: _Optional[_Union[SendMessage, _Mapping]] = ..., cancel_run: _Optional[_Union[CancelRun, _Mapping]] = ..., cancel_tool_call: _Optional[_Union[CancelToolCall, _Mapping]] = ...) -> None: ...

class JoinSession(_message.Message):
    __slots__ = ("session_id", "after_seq", "live_only")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    after_seq: int
    live_only: bool
    def __init__(self, session_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., live_only: _Optional[bool] = ...) -> None: ...

class LeaveSession(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SendMessage(_message.Message):
    __slots__ = ("session_id", "message_id", "text", "busy_policy", "trace_context", "accept_by_unix_ms")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BUSY_POLICY_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_BY_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    message_id: str
    text: str
    busy_policy: BusyPolicy
    trace_context: _containers.ScalarMap[str, str]
    accept_by_unix_ms: int
    def __init__(self, session_id: _Optional[str] = ..., message_id: _Optional[str] = ..., text: _Optional[str] = ..., busy_policy: _Optional[_Union[BusyPolicy, str]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., accept_by_unix_ms: _Optional[int] = ...) -> None: ...

class CancelRun(_message.Message):
    __slots__ = ("session_id", "run_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class CancelToolCall(_message.Message):
    __slots__ = ("session_id", "call_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    call_id: str
    def __init__(self, session_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("events", "replies")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[SessionEvent]
    replies: _containers.RepeatedCompositeFieldContainer[CommandReply]
    def __init__(self, events: _Optional[_Iterable[_Union[SessionEvent, _Mapping]]] = ..., replies: _Optional[_Iterable[_Union[CommandReply, _Mapping]]] = ...) -> None: ...

class CommandReply(_message.Message):
    __slots__ = ("request_id", "status", "joined", "accepted", "cancelled", "left")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: _status_pb2.Status
    joined: Joined
    accepted: MessageAccepted
    cancelled: CancelResponse
    left: Left
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., joined: _Optional[_Union[Joined, _Mapping]] = ..., accepted: _Optional[_Union[MessageAccepted, _Mapping]] = ..., cancelled: _Optional[_Union[CancelResponse, _Mapping]] = ..., left: _Optional[_Union[Left, _Mapping]] = ...) -> None: ...

class Joined(_message.Message):
    __slots__ = ("session_id", "head_seq")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    head_seq: int
    def __init__(self, session_id: _Optional[str] = ..., head_seq: _Optional[int] = ...) -> None: ...

class Left(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("session_id", "seq", "time_unix_ms", "run_id", "message_accepted", "run_started", "response_delta", "tool_execution", "run_completed", "run_error", "replay_gap")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_EXECUTION_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    RUN_ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLAY_GAP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    time_unix_ms: int
    run_id: str
    message_accepted: MessageAccepted
    run_started: RunStarted
    response_delta: ResponseDelta
    tool_execution: ToolExecution
    run_completed: RunCompleted
    run_error: RunError
    replay_gap: ReplayGap
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., time_unix_ms: _Optional[int] = ..., run_id: _Optional[str] = ..., message_accepted: _Optional[_Union[MessageAccepted, _Mapping]] = ..., run_started: _Optional[_Union[RunStarted, _Mapping]] = ..., response_delta: _Optional[_Union[ResponseDelta, _Mapping]] = ..., tool_execution: _Optional[_Union[ToolExecution, _Mapping]] = ..., run_completed: _Optional[_Union[RunCompleted, _Mapping]] = ..., run_error: _Optional[_Union[RunError, _Mapping]] = ..., replay_gap: _Optional[_Union[ReplayGap, _Mapping]] = ...) -> None: ...

class MessageAccepted(_message.Message):
    __slots__ = ("message_id", "text", "run_id", "queued", "seq", "duplicate")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    text: str
    run_id: str
    queued: bool
    seq: int
    duplicate: bool
    def __init__(self, message_id: _Optional[str] = ..., text: _Optional[str] = ..., run_id: _Optional[str] = ..., queued: _Optional[bool] = ..., seq: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class RunStarted(_message.Message):
    __slots__ = ("message_id", "assistant_message_id", "model")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    assistant_message_id: str
    model: str
    def __init__(self, message_id: _Optional[str] = ..., assistant_message_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ResponseDelta(_message.Message):
    __slots__ = ("text", "step")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    text: str
    step: int
    def __init__(self, text: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class ToolExecution(_message.Message):
    __slots__ = ("call_id", "tool_name", "started", "progress", "output", "completed", "failed", "cancelled")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool_name: str
    started: ToolStarted
    progress: ToolProgress
    output: ToolOutput
    completed: ToolCompleted
    failed: ToolFailed
    cancelled: ToolCancelled
    def __init__(self, call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., started: _Optional[_Union[ToolStarted, _Mapping]] = ..., progress: _Optional[_Union[ToolProgress, _Mapping]] = ..., output: _Optional[_Union[ToolOutput, _Mapping]] = ..., completed: _Optional[_Union[ToolCompleted, _Mapping]] = ..., failed: _Optional[_Union[ToolFailed, _Mapping]] = ..., cancelled: _Optional[_Union[ToolCancelled, _Mapping]] = ...) -> None: ...

class ToolStarted(_message.Message):
    __slots__ = ("arguments_json",)
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    arguments_json: str
    def __init__(self, arguments_json: _Optional[str] = ...) -> None: ...

class ToolProgress(_message.Message):
    __slots__ = ("fraction", "note")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    note: str
    def __init__(self, fraction: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class ToolOutput(_message.Message):
    __slots__ = ("text", "stream")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    text: str
    stream: str
    def __init__(self, text: _Optional[str] = ..., stream: _Optional[str] = ...) -> None: ...

class ToolCompleted(_message.Message):
    __slots__ = ("result", "duration_ms")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    result: str
    duration_ms: float
    def __init__(self, result: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class ToolFailed(_message.Message):
    __slots__ = ("code", "message", "duration_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    duration_ms: float
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class ToolCancelled(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ...) -> None: ...

class RunCompleted(_message.Message):
    __slots__ = ("finish_reason", "usage", "assistant_message_id", "text", "duration_ms")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    usage: Usage
    assistant_message_id: str
    text: str
    duration_ms: float
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., assistant_message_id: _Optional[str] = ..., text: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class RunError(_message.Message):
    __slots__ = ("code", "message", "retryable", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retryable: bool
    retry_after_ms: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class ReplayGap(_message.Message):
    __slots__ = ("after_seq", "first_seq")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    first_seq: int
    def __init__(self, after_seq: _Optional[int] = ..., first_seq: _Optional[int] = ...) -> None: ...

class ExecuteToolRequest(_message.Message):
    __slots__ = ("start", "cancel")
    START_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    start: StartTool
    cancel: CancelToolCall
    def __init__(self, start: _Optional[_Union[StartTool, _Mapping]] = ..., cancel: _Optional[_Union[CancelToolCall, _Mapping]] = ...) -> None: ...

class StartTool(_message.Message):
    __slots__ = ("tool_name", "arguments_json", "call_id")
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    arguments_json: str
    call_id: str
    def __init__(self, tool_name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class ExecuteToolResponse(_message.Message):
    __slots__ = ("execution",)
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    execution: ToolExecution
    def __init__(self, execution: _Optional[_Union[ToolExecution, _Mapping]] = ...) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("name", "description", "parameters_json_schema", "timeout_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json_schema: str
    timeout_s: float
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json_schema: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    def __init__(self, tools: _Optional[_Iterable[_Union[ToolSpec, _Mapping]]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("session_id", "run_id", "call_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    call_id: str
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "title", "user_id", "created_unix_ms", "head_seq", "run_state", "active_run_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    title: str
    user_id: str
    created_unix_ms: int
    head_seq: int
    run_state: RunState
    active_run_id: str
    def __init__(self, session_id: _Optional[str] = ..., title: _Optional[str] = ..., user_id: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., head_seq: _Optional[int] = ..., run_state: _Optional[_Union[RunState, str]] = ..., active_run_id: _Optional[str] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("user_id", "title")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    title: str
    def __init__(self, user_id: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("call_id", "tool_name", "arguments_json")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool_name: str
    arguments_json: str
    def __init__(self, call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "role", "text", "tool_calls", "call_id", "run_id", "status", "created_unix_ms", "duration_ms")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    role: Role
    text: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    call_id: str
    run_id: str
    status: MessageStatus
    created_unix_ms: int
    duration_ms: float
    def __init__(self, message_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., text: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., call_id: _Optional[str] = ..., run_id: _Optional[str] = ..., status: _Optional[_Union[MessageStatus, str]] = ..., created_unix_ms: _Optional[int] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("session_id", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token", "as_of_seq")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AS_OF_SEQ_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    as_of_seq: int
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., as_of_seq: _Optional[int] = ...) -> None: ...
