"""Everything this package raises, in one small tree.

::

    AgentRelayError                  base: catch this to catch everything below
    ├── TransportError               the connection failed or dropped; a retry may work
    │   └── ConnectionClosed         closed for good (close code says so, or close() was
    │                                called): reconnecting will not help (.code, .reason)
    ├── ProtocolError                the peer sent something this client cannot read
    └── RequestError                 one command or RPC was refused; the connection stays
        │                            (.code, .message, .retryable, .retry_after_ms)
        ├── InvalidRequest           bad_frame, invalid_field, frame_too_large /
        │   │                        INVALID_ARGUMENT
        │   ├── OutOfRange           out_of_range / OUT_OF_RANGE: the log restarted below the
        │   │                        position asked for: reload history and join after it
        │   └── AlreadyExists        already_exists / ALREADY_EXISTS
        ├── Unauthenticated          unauthenticated / UNAUTHENTICATED: get a new token
        ├── PermissionDenied         forbidden / PERMISSION_DENIED
        ├── NotFound                 not_found, not_joined / NOT_FOUND
        ├── Busy                     busy / FAILED_PRECONDITION (a run is active): not retried
        ├── RateLimited              rate_limited: a budget is spent: wait retry_after_ms
        ├── Overloaded               overloaded / RESOURCE_EXHAUSTED: refused before it was
        │                            accepted (nothing stored, nothing runs): send it again,
        │                            same message id, after retry_after_ms
        └── Unavailable              upstream_unavailable, internal / UNAVAILABLE, INTERNAL,
                                     DEADLINE_EXCEEDED, ABORTED, UNKNOWN...: retry later (a
                                     message's outcome is unknown: resend the same id)

Both transports map to the same tree: `error_from_code()` takes an edge error
code (docs/protocol.md), `grpc.error_from_rpc()` a gRPC status. `.code` always
holds the edge's snake_case code, so callers branch on one vocabulary. Which
status gives which code, which codes are retryable and which class each code
raises are generated from proto/agent_relay/v1/codes.json (`codes_gen`), the
source the edge's tables come from too.
"""

from __future__ import annotations

from agent_relay_client import codes_gen


class AgentRelayError(Exception):
    """Base of every error this package raises."""


class TransportError(AgentRelayError):
    """The connection could not be opened or dropped. Retrying may succeed.

    `code` is the WebSocket close code when there was one (1006: dropped without one).
    """

    def __init__(self, message: str = "connection lost", *, code: int = 1006) -> None:
        super().__init__(message)
        self.code = code


class ConnectionClosed(TransportError):
    """The connection is closed for good: by close(), or by a close code that says not to retry.

    `code` is the WebSocket close code (1000 for a local close(), 0 when there was none).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})", code=code)
        self.reason = reason


class ProtocolError(AgentRelayError):
    """The peer sent a frame or message this client cannot interpret."""


class RequestError(AgentRelayError):
    """A command or RPC was refused. The connection (and the stream) goes on."""

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        retryable: bool = False,
        retry_after_ms: int = 0,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms


class InvalidRequest(RequestError):
    """The request was malformed or a field was out of range; do not retry it unchanged."""


class OutOfRange(InvalidRequest):
    """A join asked for a position beyond the session's log: reload history, join after it."""


class AlreadyExists(InvalidRequest):
    """The thing to create exists already."""


class Unauthenticated(RequestError):
    """No valid credentials, or they expired. Authenticate again."""


class PermissionDenied(RequestError):
    """The credentials do not allow this (for example, the token does not name the session)."""


class NotFound(RequestError):
    """No such session, run or tool call (or the session was not joined first)."""


class Busy(RequestError):
    """A run is active and the message's busy policy refused to queue behind it."""


class RateLimited(RequestError):
    """A budget is spent: wait `retry_after_ms` and retry."""


class Overloaded(RequestError):
    """Refused before acceptance: the service had too much waiting, or could not accept the
    message before its deadline. Nothing was stored and nothing runs: send it again, with the
    same message id, after `retry_after_ms`."""


class Unavailable(RequestError):
    """The service did not answer, or failed inside. Retry later. For a message the outcome
    is unknown: send it again with the same message id (accepted once per session)."""


_CLASSES: dict[str, type[RequestError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        OutOfRange,
        AlreadyExists,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        Busy,
        RateLimited,
        Overloaded,
        Unavailable,
    )
}
_BY_CODE: dict[str, type[RequestError]] = {
    code: _CLASSES[name] for code, name in codes_gen.CLIENT_ERROR_CLASS.items()
}


def is_retryable(code: str) -> bool:
    """Whether a refusal with this code may succeed when sent again later (one table for the
    edge and both clients: `busy` is an answer for the user, never retried)."""
    return code in codes_gen.RETRYABLE_ERROR_CODES


def error_from_code(
    code: str, message: str = "", *, retryable: bool | None = None, retry_after_ms: int = 0
) -> RequestError:
    """The exception for an edge error code (an `error` frame). Unknown codes give Unavailable.

    `retryable` is the spec's (`is_retryable`); the argument is accepted for callers that pass
    the frame's flag, and ignored, so one rule decides in every client.
    """
    del retryable
    cls = _BY_CODE.get(code, Unavailable)
    return cls(code, message, retryable=is_retryable(code), retry_after_ms=retry_after_ms)
