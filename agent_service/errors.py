"""The agent service's errors, and the one place they become gRPC statuses.

    ServiceError                      a request the service refuses (the caller's fault
    |                                 or the session's state); never a server fault
    +-- InvalidArgument               INVALID_ARGUMENT, with the offending field
    +-- NotFound                      NOT_FOUND
    +-- AlreadyExists                 ALREADY_EXISTS
    +-- FailedPrecondition            FAILED_PRECONDITION (busy session, gone run)
    +-- OutOfRangeError               OUT_OF_RANGE (resume beyond the head)
    +-- Overloaded                    RESOURCE_EXHAUSTED, with a RetryInfo: refused before
    |                                 acceptance (too much waiting, or past the message's
    |                                 accept_by deadline); nothing stored; retry after it
    +-- Unavailable                   UNAVAILABLE (shutting down; retry elsewhere)
    +-- Unauthenticated               UNAUTHENTICATED (no, a bad or an expired credential)
    +-- PermissionDenied              PERMISSION_DENIED (a scope or a user the credential lacks)

Failures inside a run (model errors, tool failures) are not exceptions at this
boundary: they are events in the stream (RunError, ToolFailed), so the stream
survives them. `to_status()` builds the google.rpc.Status (with BadRequest or
ErrorInfo details) that both unary aborts and Chat's CommandReply carry.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "agent-relay"


class ServiceError(Exception):
    """A refused request. `reason` is a short UPPER_SNAKE machine-readable cause."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        field: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or type(self).__name__.upper()
        self.field = field
        self.metadata = metadata or {}  # ErrorInfo.metadata: e.g. the scope that was missing

    def to_status(self) -> status_pb2.Status:
        """The rich status: code, message and one detail (BadRequest or ErrorInfo)."""
        detail = any_pb2.Any()
        if self.field:
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=self.field, description=self.message
                        )
                    ]
                )
            )
        else:
            detail.Pack(
                error_details_pb2.ErrorInfo(
                    reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
                )
            )
        details = [detail, *self._more_details()]
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)

    def _more_details(self) -> list[any_pb2.Any]:
        return []


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRangeError(ServiceError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Overloaded(ServiceError):
    """Refused before acceptance; the status carries a RetryInfo of `retry_after_ms`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_ms: int, reason: str = "OVERLOADED") -> None:
        super().__init__(message, reason=reason)
        self.retry_after_ms = retry_after_ms

    def _more_details(self) -> list[any_pb2.Any]:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(self.retry_after_ms)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [detail]


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


def ok_status() -> status_pb2.Status:
    """The status of a command that succeeded."""
    return status_pb2.Status(code=code_pb2.OK)


def require(condition: bool, field: str, message: str) -> None:
    """Raise InvalidArgument naming `field` unless condition holds."""
    if not condition:
        raise InvalidArgument(f"{field}: {message}", field=field)


def error_from_status(status: status_pb2.Status) -> ServiceError:
    """The ServiceError a google.rpc.Status carries (an answer another replica gave),
    with its reason or field; an unknown code becomes Unavailable (retryable)."""
    kinds: dict[int, type[ServiceError]] = {
        cls.code.value[0]: cls
        for cls in (
            InvalidArgument,
            NotFound,
            AlreadyExists,
            FailedPrecondition,
            OutOfRangeError,
            Unavailable,
            Unauthenticated,
            PermissionDenied,
        )
    }
    kind = kinds.get(status.code, Unavailable)
    reason, field_name, metadata = "", "", {}
    retry_after_ms = retry_after_ms_of(status)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad) and bad.field_violations:
            field_name = bad.field_violations[0].field
    if status.code == Overloaded.code.value[0]:
        return Overloaded(
            status.message, retry_after_ms=retry_after_ms, reason=reason or "OVERLOADED"
        )
    return kind(status.message, reason=reason, field=field_name, metadata=metadata)


def retry_after_ms_of(status: status_pb2.Status) -> int:
    """The wait a status's RetryInfo asks for, in milliseconds (0 without one)."""
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return int(info.retry_delay.ToMilliseconds())
    return 0


def is_backend_outage(error: BaseException) -> bool:
    """Whether `error` says a backend (PostgreSQL, Redis, a SQLite file) did not answer:
    a command that meets one fails with UNAVAILABLE (retryable), not INTERNAL."""
    if isinstance(error, (OSError, TimeoutError, ConnectionError)):
        return True
    names = {cls.__module__.split(".")[0] + "." + cls.__name__ for cls in type(error).__mro__}
    return bool(
        names
        & {
            "redis.ConnectionError",
            "redis.TimeoutError",
            "asyncpg.InterfaceError",
            "asyncpg.PostgresConnectionError",
            "asyncpg.CannotConnectNowError",
            "asyncpg.AdminShutdownError",
            "asyncpg.ConnectionDoesNotExistError",
            "asyncpg.TooManyConnectionsError",
        }
    )
