"""Every way the edge says no, in two families, mapped once here.

    EdgeError                       the frame failed; the socket stays open
    |                               -> {"type": "error", "code": ..., "ref": ...}
    +-- code bad_frame              not JSON, not an object, no or unknown `type`
    +-- code invalid_field          a field missing, of the wrong type or out of range
    +-- code frame_too_large        over max_frame_bytes (the soft, per-frame limit)
    +-- code unauthenticated        no valid auth yet, or the token expired
    +-- code forbidden              the token does not name that session
    +-- code not_joined             the session must be joined first
    +-- code not_found              no such session, run or tool call
    +-- code busy                   a run is active and busy_policy is reject (retryable)
    +-- code rate_limited           a frame, byte or run budget is spent (retryable, retry_after_ms)
    +-- code upstream_unavailable   the agent service does not answer (retryable)
    +-- code internal               a fault in the edge or the service (retryable)

    Disconnect                      the socket is closed; the code's range says whether to reconnect
    +-- 1000 normal, 1001 going away, 1008 policy (abuse), 1009 too big, 1011 internal,
    |   1012 service restart (drain), 1013 try again later (slow consumer)
    +-- 4000-4499 reconnecting may succeed: 4000 idle, 4001 heartbeat
    +-- 4500-4999 reconnecting with the same credentials fails: 4501 token, 4503 auth
        timeout, 4509 too many connections for this user

`error_from_grpc` is the one place a gRPC status from the agent service becomes
an `EdgeError`; `should_reconnect` is the one place a close code is classified.
docs/protocol.md carries the same tables for clients.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc


class ErrorCode(enum.StrEnum):
    """Reply error codes: the frame failed, the socket stays open."""

    BAD_FRAME = "bad_frame"
    INVALID_FIELD = "invalid_field"
    FRAME_TOO_LARGE = "frame_too_large"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_JOINED = "not_joined"
    NOT_FOUND = "not_found"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    INTERNAL = "internal"


RETRYABLE: frozenset[ErrorCode] = frozenset(
    {ErrorCode.BUSY, ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM_UNAVAILABLE, ErrorCode.INTERNAL}
)


class CloseCode(enum.IntEnum):
    """WebSocket close codes the edge sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    IDLE_TIMEOUT = 4000
    HEARTBEAT_TIMEOUT = 4001
    TOKEN_INVALID = 4501
    AUTH_TIMEOUT = 4503
    TOO_MANY_CONNECTIONS = 4509


def should_reconnect(code: int) -> bool:
    """Whether a client that saw this close code should reconnect (with backoff)."""
    if code in (CloseCode.GOING_AWAY, 1006, CloseCode.INTERNAL_ERROR):
        return True
    if code in (CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER):
        return True
    return 4000 <= code <= 4499


@dataclass(frozen=True)
class EdgeError(Exception):
    """A reply error: sent as an `error` frame naming the client frame's `id` in `ref`."""

    code: ErrorCode
    message: str
    retry_after_ms: int | None = None

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Disconnect(Exception):
    """Close the socket with this code and reason (the reason at most 123 bytes)."""

    code: CloseCode
    reason: str

    def __str__(self) -> str:
        return f"{int(self.code)}: {self.reason}"


_GRPC_TO_EDGE: dict[grpc.StatusCode, ErrorCode] = {
    grpc.StatusCode.INVALID_ARGUMENT: ErrorCode.INVALID_FIELD,
    grpc.StatusCode.OUT_OF_RANGE: ErrorCode.INVALID_FIELD,
    grpc.StatusCode.NOT_FOUND: ErrorCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorCode.BUSY,
    grpc.StatusCode.ABORTED: ErrorCode.BUSY,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorCode.RATE_LIMITED,
    grpc.StatusCode.PERMISSION_DENIED: ErrorCode.FORBIDDEN,
    grpc.StatusCode.UNAUTHENTICATED: ErrorCode.UNAUTHENTICATED,
    grpc.StatusCode.UNAVAILABLE: ErrorCode.UPSTREAM_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorCode.UPSTREAM_UNAVAILABLE,
    grpc.StatusCode.CANCELLED: ErrorCode.UPSTREAM_UNAVAILABLE,
}


def error_from_grpc(code: int | grpc.StatusCode, message: str) -> EdgeError:
    """Map a gRPC status (an enum, or the integer of a google.rpc.Status) to a reply error."""
    status = code if isinstance(code, grpc.StatusCode) else _status_from_int(code)
    edge_code = _GRPC_TO_EDGE.get(status, ErrorCode.INTERNAL) if status else ErrorCode.INTERNAL
    retry_after = 1000 if edge_code in RETRYABLE else None
    text = message or (status.name.lower() if status else "error")
    return EdgeError(edge_code, text, retry_after)


def _status_from_int(value: int) -> grpc.StatusCode | None:
    for status in grpc.StatusCode:
        if status.value[0] == value:
            return status
    return None
