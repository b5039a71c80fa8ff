"""What a caller may do: the scope each RPC and Chat command needs, and which sessions it reaches.

    scope   grants
    read    GetSession, ListSessions, ListMessages, ListTools; Chat: the stream, join, leave
    chat    CreateSession, Cancel; Chat: send, cancel_run, cancel_tool_call
    tools   ExecuteTool (runs python!); Cancel of a direct tool call (call_id, no session_id)
    admin   acting for every user; without it a caller acts only for its token's `users`
            (default: its `sub`) or its certificate's name

`admin` does not imply the other scopes: the edge's token is `read chat admin`.

Refusals:
- a scope the RPC or command needs and the caller lacks: PERMISSION_DENIED, with
  ErrorInfo reason MISSING_SCOPE and the scope in its metadata;
- a user the caller may not act for (ListSessions, CreateSession): PERMISSION_DENIED,
  reason USER_NOT_ALLOWED;
- a session of such a user (GetSession, ListMessages, Cancel, Chat join / send /
  cancel_*): NOT_FOUND, word for word the answer for a session that does not exist,
  so a caller learns nothing about sessions it may not see.

The servicer and the Chat stream call these once per request; the interceptor
(auth_interceptor.py) checks the RPC's scope before the handler runs.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent_relay.v1 import agent_pb2 as pb
from agent_service.auth import Caller
from agent_service.errors import InvalidArgument, NotFound, PermissionDenied

SERVICE = "/agent_relay.v1.AgentService/"
METHOD_SCOPES = {
    SERVICE + "Chat": "read",
    SERVICE + "GetSession": "read",
    SERVICE + "ListSessions": "read",
    SERVICE + "ListMessages": "read",
    SERVICE + "ListTools": "read",
    SERVICE + "CreateSession": "chat",
    SERVICE + "Cancel": "chat",
    SERVICE + "ExecuteTool": "tools",
}
# Open to anyone who reaches the port: health says nothing about anyone's data.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
COMMAND_SCOPES = {
    "join": "read",
    "leave": "read",
    "send": "chat",
    "cancel_run": "chat",
    "cancel_tool_call": "chat",
}


class Sessions(Protocol):
    """What access needs of the hub: a session by id (raising NotFound when missing)."""

    async def session(self, session_id: str) -> Any: ...


def is_open(method: str) -> bool:
    """Whether a method needs no credential at all."""
    return method.startswith(OPEN_PREFIXES)


def require_scope(caller: Caller, scope: str, what: str) -> None:
    """Raise PermissionDenied unless the caller has `scope`."""
    if not caller.has(scope):
        granted = " ".join(sorted(caller.scopes)) or "none"
        raise PermissionDenied(
            f"{what} needs the {scope!r} scope; this caller ({caller.subject}) has: {granted}",
            reason="MISSING_SCOPE",
            metadata={"required_scope": scope, "granted_scopes": granted},
        )


def check_method(caller: Caller, method: str) -> None:
    """The RPC-level check: the scope the method needs (other services: authentication only)."""
    scope = METHOD_SCOPES.get(method)
    if scope is not None:
        require_scope(caller, scope, method.rsplit("/", 1)[-1])


def require_user(caller: Caller, user_id: str, field: str) -> None:
    """Raise PermissionDenied unless the caller may act for `user_id`."""
    if not caller.may_act_for(user_id):
        raise PermissionDenied(
            f"{field}: this caller ({caller.subject}) may not act for user {user_id!r}",
            reason="USER_NOT_ALLOWED",
            metadata={"user_id": user_id},
        )


def own_user(caller: Caller, requested: str, field: str) -> str:
    """The user a request is for: `requested`, or (empty, non-admin) the caller's one user."""
    if requested or caller.admin:
        if requested:
            require_user(caller, requested, field)
        return requested
    if len(caller.users) != 1:
        raise InvalidArgument(f"{field}: required, this caller acts for several users", field=field)
    return next(iter(caller.users))


def require_session_owner(caller: Caller, owner: str, session_id: str) -> None:
    """Raise NotFound (as for a missing session) unless the caller may act for the owner."""
    if not caller.may_act_for(owner):
        raise NotFound(f"no session {session_id!r}", reason="SESSION_NOT_FOUND")


async def authorize_session(caller: Caller, hub: Sessions, session_id: str) -> None:
    """The session exists and belongs to a user the caller may act for; else NotFound."""
    if caller.admin or not session_id:
        return  # an empty id is the handler's INVALID_ARGUMENT
    runtime = await hub.session(session_id)
    require_session_owner(caller, runtime.record.user_id, session_id)


async def authorize_command(caller: Caller, hub: Sessions, request: pb.ChatRequest) -> None:
    """A Chat command's scope and session; an unknown command is left to the stream."""
    which = request.WhichOneof("command")
    scope = COMMAND_SCOPES.get(which or "")
    if which is None or scope is None:
        return
    require_scope(caller, scope, which)
    if which != "leave":  # leaving a session one never joined is harmless
        await authorize_session(caller, hub, getattr(request, which).session_id)


async def authorize_cancel(caller: Caller, hub: Sessions, request: pb.CancelRequest) -> None:
    """Cancel: the session's owner, or for a direct tool call the `tools` scope."""
    if request.session_id:
        await authorize_session(caller, hub, request.session_id)
    elif request.WhichOneof("target") == "call_id":
        require_scope(caller, "tools", "cancelling a direct tool call")
