"""The aiohttp application: /ws, the HTTP API, health, metrics and the web UI's files.

`create_app(settings=...)` builds the app; its cleanup context starts the hub
(and with it the upstream streams) and, on shutdown, closes every socket with
1012 so clients reconnect to another node (or this one, restarted) and resume.

Slow clients are bounded: aiohttp's keep-alive deadline is armed when a
connection opens and is not pushed back by the bytes of a request head, so with
`keepalive_timeout = http_request_timeout_s` a connection that sends nothing, or
a head a byte at a time, is closed once that time passes without a whole head;
an API request's body has the same time (then 408). Every `/api/` answer is
JSON, errors included: a fault becomes 500 `internal`, never a plain-text page.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import WSMsgType, hdrs, web

from agent_relay.v1 import agent_pb2 as pb
from relay_shared.edge_telemetry import EdgeTelemetry
from relay_shared.telemetry import Telemetry
from ws_edge.auth import Claims, TokenAuthority, TokenError
from ws_edge.config import EdgeSettings
from ws_edge.connection import Connection
from ws_edge.errors import CloseCode, EdgeError, ErrorCode
from ws_edge.events import message_to_dict
from ws_edge.frames import PROTOCOL, welcome_frame
from ws_edge.http_tracing import handshake_failed, install_http_tracing
from ws_edge.hub import Hub
from ws_edge.layouts import prime_instance_layouts, release_request_parser
from ws_edge.limits import AddressBuckets
from ws_edge.linger import linger_on_close
from ws_edge.upstream import unary
from ws_edge.wire import SUPPORTED_PROTOCOLS, Wire, parse_offer, select_protocol

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", EdgeSettings)
AUTHORITY = web.AppKey("authority", TokenAuthority)
TELEMETRY = web.AppKey("telemetry", EdgeTelemetry)
HUB = web.AppKey("hub", Hub)
ANON_BUCKETS = web.AppKey("anon_buckets", AddressBuckets)

# History paging: the service serves at most 1,000 messages a page, and its page
# tokens are offsets (decimal, within int64).
MAX_PAGE_SIZE = 1000
_PAGE_SIZE = re.compile(r"[0-9]{1,4}")
_PAGE_TOKEN = re.compile(r"[0-9]{1,18}")

_HTTP_STATUS = {
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_JOINED: 409,
    ErrorCode.BUSY: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.UPSTREAM_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class CreateSessionBody(msgspec.Struct, forbid_unknown_fields=False):
    title: str = ""


class RefreshBody(msgspec.Struct):
    token: str


def create_app(*, settings: EdgeSettings, telemetry: Telemetry | None = None) -> web.Application:
    """The edge's application. Nothing starts until the app runs (cleanup_ctx). With
    `telemetry`, chat:message frames get spans and /metrics shows OpenTelemetry's
    instruments (relay_shared.edge_telemetry)."""
    prime_instance_layouts()  # before the first request: ws_edge/layouts.py
    app = web.Application(
        client_max_size=64 * 1024,
        handler_args={"keepalive_timeout": settings.http_request_timeout_s},
    )
    app[SETTINGS] = settings
    app[ANON_BUCKETS] = AddressBuckets(settings.anon_sessions_per_s, settings.anon_sessions_burst)
    app[TELEMETRY] = EdgeTelemetry(telemetry)
    # A span, a metric, a log line per request. Route wrappers, not middlewares: with any
    # middleware aiohttp keeps a frame of its own suspended around every handler, a
    # WebSocket's for the socket's life (PERFORMANCE.md: memory per idle socket).
    traced = install_http_tracing(app, app[TELEMETRY]).wrap
    secret = settings.jwt_secret
    if not secret:
        log.warning("no jwt_secret set: using a random one; tokens die with this process")
        secret = TokenAuthority.random_secret()
    app[AUTHORITY] = TokenAuthority(secret, settings.token_ttl_s)
    app.cleanup_ctx.append(_hub_context)
    app.on_shutdown.append(_drain)
    app.router.add_get("/ws", websocket_handler)  # traced at its 101 (http_tracing.py)
    app.router.add_post("/api/sessions", _api_errors_as_json(traced(create_session)))
    app.router.add_get("/api/sessions", _api_errors_as_json(traced(list_sessions)))
    app.router.add_post("/api/token", _api_errors_as_json(traced(refresh_token)))
    app.router.add_get(
        "/api/sessions/{session_id}/messages", _api_errors_as_json(traced(list_messages))
    )
    app.router.add_get("/healthz", traced(healthz))
    app.router.add_get("/readyz", traced(readyz))
    app.router.add_get("/metrics", traced(metrics))
    static = settings.static_dir
    if static.is_dir() and (static / "index.html").is_file():
        index = static / "index.html"

        async def serve_index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(index)

        app.router.add_get("/", traced(serve_index))
        app.router.add_static("/", static)
    return app


async def _hub_context(app: web.Application) -> AsyncIterator[None]:
    hub = Hub(app[SETTINGS], telemetry=app[TELEMETRY])
    app[HUB] = hub
    _register_gauges(app[TELEMETRY], hub)
    hub.start()
    # Open the upstream streams before the first socket can join (bounded: an edge whose
    # agent service is down still starts, and tells its clients so).
    if not await hub.upstream.wait_up(timeout_s=3.0):
        log.warning("the agent service at %s does not answer yet", app[SETTINGS].upstream)
    sweeper = asyncio.create_task(_sweep(hub))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await hub.stop()


async def _sweep(hub: Hub) -> None:
    """Auth and idle timeouts and the heartbeat: one task for all sockets, not a timer per
    socket."""
    settings = hub.settings
    timeouts = [settings.auth_timeout_s, settings.idle_timeout_s]
    if settings.ping_interval_s > 0:
        timeouts.append(settings.ping_interval_s)
    period = max(0.05, min(1.0, *(t / 4 for t in timeouts)))
    while True:
        await asyncio.sleep(period)
        now = hub.clock()
        for conn in list(hub.connections.values()):
            conn.check_timers(now)
        hub.drop_full_limiters(now)


async def _drain(app: web.Application) -> None:
    """SIGTERM: the site stopped accepting already; close every socket with 1012."""
    hub = app[HUB]
    hub.draining = True
    conns = list(hub.connections.values())
    for conn in conns:
        conn.close(CloseCode.SERVICE_RESTART, "edge restarting: reconnect and resume")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hub.all_closed.wait(), app[SETTINGS].shutdown_timeout_s)


# -- the WebSocket endpoint ------------------------------------------------------------------


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the edge's own origin, or one on the allow-list."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return (
        bool(parts.netloc) and parts.netloc == request.host and (parts.scheme in ("http", "https"))
    )


# Each wire's subprotocol as the one-name tuple a WebSocketResponse keeps for its life: one
# tuple per wire, not one per socket (48 B; PERFORMANCE.md: memory per idle socket).
_CHOSEN = {wire: (wire.value,) for wire in Wire}


@functools.cache
def _low_water(high: int) -> int:
    """asyncio's default low-water mark for a write buffer limit of `high` (a quarter), as
    one int shared by every transport: computed per socket, each would hold its own (32 B)."""
    return high // 4


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """One WebSocket, from its handshake to its close.

    Its coroutine lives as long as the socket, with a slot per local and per level of its
    stack: the setup and the handling of a frame are plain functions, so it keeps only what
    the loop needs (memory per idle socket, PERFORMANCE.md)."""
    wire = _admit(request)
    ws = _response(request.app[SETTINGS], wire)
    try:
        await ws.prepare(request)
    except web.HTTPException:
        raise  # answered with its status: the response hook ends the span
    except BaseException as exc:
        handshake_failed(request, exc)
        raise
    release_request_parser(request.protocol)  # ws_edge/layouts.py: about 1.9 KB a socket
    conn = _connect(request, ws, wire)
    try:
        async for msg in ws:  # ends when either side closes (conn.close feeds the end in)
            conn.peer_seen()
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                _receive(conn, msg.data)
            elif msg.type is WSMsgType.PING:
                await _pong(ws, msg.data)
            # The loop's variable would keep the last frame (its message and its text) for
            # as long as the socket then stays idle (memory per idle socket).
            del msg
    finally:
        conn.hub.remove_connection(conn)
        conn.detach()
    await conn.wait_closed()
    return ws


def _receive(conn: Connection, data: str | bytes) -> None:
    try:
        conn.receive_frame(data)
    except Exception:
        # A fault in the edge, not the client's: the socket and its peers go on.
        log.exception("socket %s: a frame could not be handled", conn.socket_id)
        conn.reply_error(None, EdgeError(ErrorCode.INTERNAL, "the edge failed", 1000))


async def _pong(ws: web.WebSocketResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.pong(data)


def _admit(request: web.Request) -> Wire:
    """The wire of a handshake the edge accepts; raises the HTTP error of one it refuses."""
    if request.app[HUB].draining:
        raise web.HTTPServiceUnavailable(text="edge draining")
    if not origin_allowed(request, request.app[SETTINGS].allowed_origins):
        raise web.HTTPForbidden(text=f"origin {request.headers.get(hdrs.ORIGIN)!r} not allowed")
    wire = select_protocol(parse_offer(request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")))
    if wire is None:
        raise web.HTTPBadRequest(
            text=f"offer a WebSocket subprotocol this edge speaks: {', '.join(SUPPORTED_PROTOCOLS)}"
        )
    return wire


def _response(settings: EdgeSettings, wire: Wire) -> web.WebSocketResponse:
    return web.WebSocketResponse(
        # only the one chosen: aiohttp then echoes exactly it (RFC 6455 4.2.2)
        protocols=_CHOSEN[wire],
        # The heartbeat is the sweeper's (Connection.check_timers), not a timer per socket;
        # the handler answers pings itself, and every frame of the peer counts as alive.
        autoping=False,
        compress=settings.compress,
        max_msg_size=settings.hard_max_frame_bytes,
        writer_limit=settings.socket_write_buffer_bytes,
    )


def _connect(request: web.Request, ws: web.WebSocketResponse, wire: Wire) -> Connection:
    """The socket's Connection, once its handshake is done: its transport set up, the hub
    told, the welcome frame queued."""
    settings = request.app[SETTINGS]
    hub = request.app[HUB]
    transport = request.transport
    linger_on_close(transport, settings.close_linger_s)
    if isinstance(transport, asyncio.WriteTransport):
        # The transport's own buffer (64 KiB by default) would hold frames outside the send
        # queue's bound; Connection.send counts what it holds against that bound.
        high = settings.socket_write_buffer_bytes
        transport.set_write_buffer_limits(high=high, low=_low_water(high))
    raw_socket = transport.get_extra_info("socket") if transport else None
    if raw_socket is not None and settings.socket_send_buffer_bytes > 0:
        raw_socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_send_buffer_bytes
        )
    conn = Connection(ws, hub, request.app[AUTHORITY], transport=transport, wire=wire)
    hub.add_connection(conn)
    conn.send(
        welcome_frame(
            heartbeat_ms=int(settings.ping_interval_s * 1000),
            auth_timeout_ms=int(settings.auth_timeout_s * 1000),
            max_frame_bytes=settings.max_frame_bytes,
            batch_ms=settings.batch_ms,
            wire=wire,
        )
    )
    return conn


# -- the HTTP API ----------------------------------------------------------------------------


def _api_errors_as_json(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An /api/ route's handler whose fault is a JSON 500 `internal` like every other API
    error."""

    async def api_handler(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error_response(EdgeError(ErrorCode.INTERNAL, "the edge failed", 1000))

    return api_handler


def _error_response(error: EdgeError, status: int | None = None) -> web.Response:
    body: dict[str, Any] = {
        "code": str(error.code),
        "message": error.message,
        "retryable": error.retryable,
    }
    headers = {}
    if error.retry_after_ms is not None:
        body["retry_after_ms"] = error.retry_after_ms
        headers["Retry-After"] = str(max(1, round(error.retry_after_ms / 1000)))
    return web.json_response(
        body, status=status or _HTTP_STATUS.get(error.code, 500), headers=headers
    )


class RequestTimeout(Exception):
    """The request's body did not arrive within http_request_timeout_s (HTTP 408)."""


def _bearer(request: web.Request) -> Claims | None:
    """The request's token claims; None without a token; EdgeError for a bad one."""
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise EdgeError(ErrorCode.UNAUTHENTICATED, "Authorization must be 'Bearer <token>'")
    try:
        return request.app[AUTHORITY].verify(token.strip(), time.time())
    except TokenError as exc:
        raise EdgeError(ErrorCode.UNAUTHENTICATED, str(exc)) from None


async def _body(request: web.Request, cls: type[Any]) -> Any:
    """The request's JSON body as cls. EdgeError for a bad one, RequestTimeout for a slow one."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].http_request_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout() from None
    except web.HTTPRequestEntityTooLarge as exc:
        raise EdgeError(ErrorCode.FRAME_TOO_LARGE, exc.text or "body too large") from None
    try:
        return msgspec.json.decode(raw or b"{}", type=cls)
    except msgspec.ValidationError as exc:
        raise EdgeError(ErrorCode.INVALID_FIELD, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise EdgeError(ErrorCode.BAD_FRAME, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise EdgeError(ErrorCode.BAD_FRAME, "body: JSON nested too deep") from None


def _timed_out() -> web.Response:
    error = EdgeError(ErrorCode.BAD_FRAME, "the request body did not arrive in time")
    response = _error_response(error, status=408)
    response.force_close()
    return response


def _anonymous_allowed(request: web.Request) -> None:
    """Minting a user is limited per client address; raises rate_limited past it."""
    wait_ms = request.app[ANON_BUCKETS].take(request.remote or "", time.monotonic())
    if wait_ms:
        request.app[TELEMETRY].rate_limited("anonymous_sessions")
        raise EdgeError(
            ErrorCode.RATE_LIMITED, "too many new anonymous sessions from this address", wait_ms
        )


async def create_session(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        claims = _bearer(request)
        body = await _body(request, CreateSessionBody)
        if len(body.title) > 200:
            raise EdgeError(ErrorCode.INVALID_FIELD, "title: at most 200 characters")
        if claims is None and not settings.allow_anonymous:
            raise EdgeError(ErrorCode.UNAUTHENTICATED, "a token is required")
        if claims is None:
            _anonymous_allowed(request)
        user_id = claims.user_id if claims is not None else f"u_{secrets.token_hex(8)}"
        stub = request.app[HUB].upstream.any_stub()
        session = await unary(
            stub.CreateSession(
                pb.CreateSessionRequest(user_id=user_id, title=body.title),
                timeout=settings.command_timeout_s,
            )
        )
    except EdgeError as error:
        return _error_response(error)
    except RequestTimeout:
        return _timed_out()
    sessions = [*(sorted(claims.sessions) if claims else []), session.session_id]
    token, expires_at = request.app[AUTHORITY].issue(user_id, sessions, time.time())
    return web.json_response(
        {
            "session_id": session.session_id,
            "user_id": user_id,
            "token": token,
            "expires_at": expires_at,
        },
        status=201,
    )


async def refresh_token(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    try:
        body = await _body(request, RefreshBody)
        claims = authority.verify(body.token, time.time())
    except EdgeError as error:
        return _error_response(error)
    except TokenError as exc:
        return _error_response(EdgeError(ErrorCode.UNAUTHENTICATED, str(exc)))
    except RequestTimeout:
        return _timed_out()
    token, expires_at = authority.issue(claims.user_id, sorted(claims.sessions), time.time())
    return web.json_response({"token": token, "expires_at": expires_at, "user_id": claims.user_id})


async def list_messages(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    settings = request.app[SETTINGS]
    try:
        claims = _bearer(request)
        if claims is None:
            raise EdgeError(ErrorCode.UNAUTHENTICATED, "Authorization: Bearer <token> required")
        if not claims.may_join(session_id):
            raise EdgeError(ErrorCode.FORBIDDEN, f"the token does not name {session_id!r}")
        page_size, page_token = _paging(request.query)
        stub = request.app[HUB].stub_for(session_id)
        reply = await unary(
            stub.ListMessages(
                pb.ListMessagesRequest(
                    session_id=session_id, page_size=page_size, page_token=page_token
                ),
                timeout=settings.command_timeout_s,
            )
        )
        # Read after the messages: a run active now was active at as_of_seq too, and one
        # that ended in between has its end among the events after as_of_seq.
        session = await unary(
            stub.GetSession(
                pb.GetSessionRequest(session_id=session_id), timeout=settings.command_timeout_s
            )
        )
    except EdgeError as error:
        return _error_response(error)
    return web.json_response(
        {
            "messages": [message_to_dict(m) for m in reply.messages],
            "as_of_seq": reply.as_of_seq,
            "next_page_token": reply.next_page_token,
            "active_run_id": session.active_run_id,
        }
    )


async def list_sessions(request: web.Request) -> web.Response:
    """The caller's sessions (ListSessions for the token's user), newest first, keeping
    only those the token may join: the list a browser shows when its storage is gone."""
    settings = request.app[SETTINGS]
    try:
        claims = _bearer(request)
        if claims is None:
            raise EdgeError(ErrorCode.UNAUTHENTICATED, "Authorization: Bearer <token> required")
        stub = request.app[HUB].upstream.any_stub()
        reply = await unary(
            stub.ListSessions(
                pb.ListSessionsRequest(user_id=claims.user_id, page_size=500),
                timeout=settings.command_timeout_s,
            )
        )
    except EdgeError as error:
        return _error_response(error)
    sessions = [message_to_dict(s) for s in reply.sessions if claims.may_join(s.session_id)]
    return web.json_response({"sessions": sessions})


def _paging(query: Any) -> tuple[int, str]:
    """page_size (0: the service's default, else 1..1000) and page_token (a token of an
    earlier reply), checked before they reach the proto (uint32) or the service."""
    size_text = query.get("page_size", "0")
    if not _PAGE_SIZE.fullmatch(size_text) or int(size_text) > MAX_PAGE_SIZE:
        raise EdgeError(ErrorCode.INVALID_FIELD, f"page_size: an integer from 0 to {MAX_PAGE_SIZE}")
    token = query.get("page_token", "")
    if token and not _PAGE_TOKEN.fullmatch(token):
        raise EdgeError(
            ErrorCode.INVALID_FIELD, "page_token: not a next_page_token this API returned"
        )
    return int(size_text), token


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    if hub.draining:
        return web.json_response({"status": "draining"}, status=503)
    if await hub.upstream.ready(timeout_s=1.0):
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "agent service unavailable"}, status=503)


def _register_gauges(telemetry: EdgeTelemetry, hub: Hub) -> None:
    def queues() -> list[int]:
        return [conn.queued_frames for conn in hub.connections.values()]

    telemetry.gauge(
        "agent_relay.edge.connections", "Open WebSocket connections.", lambda: len(hub.connections)
    )
    telemetry.gauge(
        "agent_relay.edge.rooms", "Live rooms (sessions this edge follows).", lambda: len(hub.rooms)
    )
    telemetry.gauge(
        "agent_relay.edge.send_queue_frames",
        "Frames waiting in all send queues.",
        lambda: sum(queues()),
    )
    telemetry.gauge(
        "agent_relay.edge.send_queue_max_frames",
        "Frames in the fullest send queue.",
        lambda: max(queues(), default=0),
    )
    telemetry.gauge(
        "agent_relay.edge.send_queue_bytes",
        "Bytes waiting in all send queues.",
        lambda: sum(conn.queued_bytes for conn in hub.connections.values()),
        "By",
    )
    telemetry.gauge(
        "agent_relay.edge.upstream_messages_in_flight",
        "chat:message commands sent upstream, reply pending.",
        lambda: hub.upstream.messages_in_flight,
    )
    telemetry.gauge(
        "agent_relay.edge.upstream_streams_up",
        "Upstream Chat streams open.",
        lambda: sum(1 for slot in hub.upstream.slots if slot.up),
    )


async def metrics(request: web.Request) -> web.Response:
    """OpenTelemetry's instruments when telemetry is set up (OpenMetrics with exemplars
    when Accept asks for it, gzip when Accept-Encoding allows), else a few gauges read
    directly."""
    body, headers = request.app[TELEMETRY].exposition(
        request.headers.get(hdrs.ACCEPT, ""), request.headers.get(hdrs.ACCEPT_ENCODING, "")
    )
    if body:
        return web.Response(body=body, headers=headers)
    hub = request.app[HUB]
    up = sum(1 for slot in hub.upstream.slots if slot.up)
    lines = [
        "# HELP agent_relay_edge_connections Open WebSocket connections.",
        "# TYPE agent_relay_edge_connections gauge",
        f"agent_relay_edge_connections {len(hub.connections)}",
        "# HELP agent_relay_edge_rooms Live rooms (sessions followed by this edge).",
        "# TYPE agent_relay_edge_rooms gauge",
        f"agent_relay_edge_rooms {len(hub.rooms)}",
        "# HELP agent_relay_edge_upstream_streams_up Upstream Chat streams open.",
        "# TYPE agent_relay_edge_upstream_streams_up gauge",
        f"agent_relay_edge_upstream_streams_up {up}",
        "# HELP agent_relay_edge_upstream_messages_in_flight chat:message commands sent "
        "upstream, reply pending.",
        "# TYPE agent_relay_edge_upstream_messages_in_flight gauge",
        f"agent_relay_edge_upstream_messages_in_flight {hub.upstream.messages_in_flight}",
        "# HELP agent_relay_edge_send_queue_frames Frames waiting in all send queues.",
        "# TYPE agent_relay_edge_send_queue_frames gauge",
        "agent_relay_edge_send_queue_frames "
        f"{sum(c.queued_frames for c in hub.connections.values())}",
    ]
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Protocol": PROTOCOL},
    )
