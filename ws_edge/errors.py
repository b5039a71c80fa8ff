"""Every way the edge says no, in two families, mapped once here.

    EdgeError                       the frame failed; the socket stays open
    |                               -> {"type": "error", "code": ..., "ref": ...}
    +-- code bad_frame              not JSON, not an object, no or unknown `type`
    +-- code invalid_field          a field missing, of the wrong type or out of range
    +-- code out_of_range           a join after the session's log head (reload history)
    +-- code already_exists         the thing to create exists already
    +-- code frame_too_large        over max_frame_bytes (the soft, per-frame limit)
    +-- code unauthenticated        no valid auth yet, or the token expired
    +-- code forbidden              the token does not name that session
    +-- code not_joined             the session must be joined first
    +-- code not_found              no such session, run or tool call
    +-- code busy                   a run is active and busy_policy is reject (not retryable)
    +-- code rate_limited           a frame, byte or run budget is spent (retryable, retry_after_ms)
    +-- code overloaded             refused before acceptance: too much waiting at the service or
    |                               the edge, or the message's deadline passed; nothing stored
    |                               (retryable, retry_after_ms: resend the same message_id)
    +-- code upstream_unavailable   the agent service does not answer (retryable; a message's
    |                               outcome is unknown: resend the same message_id)
    +-- code internal               a fault in the edge or the service (retryable)

    Disconnect                      the socket is closed; the code's range says whether to reconnect
    +-- 1000 normal, 1001 going away, 1008 policy (abuse), 1009 too big, 1011 internal,
    |   1012 service restart (drain), 1013 try again later (slow consumer)
    +-- 4000-4499 reconnecting may succeed: 4000 idle, 4001 heartbeat
    +-- 4500-4999 reconnecting with the same credentials fails: 4501 token (renew it,
        then reconnect), 4503 auth timeout, 4509 too many connections for this user

The codes, which are retryable, the gRPC status each maps from and what a client does
after each close code are declared once, in proto/agent_relay/v1/codes.json, and
generated into ws_edge/codes_gen.py (and into both clients): edit the spec, run
`make proto`.

`error_from_grpc` is the one place a gRPC status from the agent service becomes
an `EdgeError`; `should_reconnect` is the one place a close code is classified.
docs/protocol.md carries the same tables for clients.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

from ws_edge import codes_gen
from ws_edge.codes_gen import CloseCode, ErrorCode

__all__ = [
    "RETRYABLE",
    "CloseCode",
    "Disconnect",
    "EdgeError",
    "ErrorCode",
    "error_from_grpc",
    "error_from_status",
    "should_reconnect",
]


RETRYABLE: frozenset[ErrorCode] = frozenset(ErrorCode(c) for c in codes_gen.RETRYABLE_ERROR_CODES)


def should_reconnect(code: int) -> bool:
    """Whether a client that saw this close code should reconnect (at once, after backoff, or
    with a renewed token): the spec's table, then its ranges (codes.json, "close_ranges")."""
    return codes_gen.close_action(code) != "stop"


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
    grpc.StatusCode[name]: ErrorCode(code)
    for name, code in codes_gen.GRPC_STATUS_TO_ERROR_CODE.items()
}


def error_from_grpc(
    code: int | grpc.StatusCode, message: str, retry_after_ms: int = 0
) -> EdgeError:
    """Map a gRPC status (an enum, or the integer of a google.rpc.Status) to a reply error;
    a retryable one waits `retry_after_ms` (the service's RetryInfo), 1000 when not given."""
    status = code if isinstance(code, grpc.StatusCode) else _status_from_int(code)
    default = ErrorCode(codes_gen.DEFAULT_ERROR_CODE)
    edge_code = _GRPC_TO_EDGE.get(status, default) if status else default
    retry_after = (retry_after_ms or 1000) if edge_code in RETRYABLE else None
    text = message or (status.name.lower() if status else "error")
    return EdgeError(edge_code, text, retry_after)


def error_from_status(status: status_pb2.Status) -> EdgeError:
    """The reply error a Chat command's failed google.rpc.Status stands for, with the wait
    its RetryInfo asks for."""
    retry_after_ms = 0
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            retry_after_ms = int(info.retry_delay.ToMilliseconds())
    return error_from_grpc(status.code, status.message, retry_after_ms)


def _status_from_int(value: int) -> grpc.StatusCode | None:
    for status in grpc.StatusCode:
        if status.value[0] == value:
            return status
    return None
