"""An asyncio client for the WebSocket edge, with the browser client's guarantees.

::

    async with EdgeClient("http://127.0.0.1:8080") as edge:
        updates = edge.updates()
        session_id = await edge.create_session(title="hello")
        conv = await edge.follow(session_id)
        await edge.send(session_id, "hi")
        async for update in updates:
            if isinstance(update, EventApplied) and isinstance(update.event, RunCompleted):
                print(conv.messages[-1].text)
                break

What it keeps (docs/protocol.md): the `agent-relay.v1` subprotocol (JSON text frames), or
with `wire="proto"` its binary twin `agent-relay.v1+proto` (agent_relay_client/wire.py:
the same frames as protobuf; nothing above the codec differs); `auth`
right after `welcome`; every followed session joined again after a reconnect
with `after_seq` = the last seq processed, so no event is missed or repeated;
user messages with client ids in an outbox (optionally a JSON file) sent once
per connection until acked; close codes honoured as codes.json says (1000/1008/45xx
stop, 4501 renews the token and reconnects, 1012 reconnects at once, the rest back off
with full jitter); a `chat:gap` reloads history over HTTP and rejoins at its
`as_of_seq`; an application ping every `heartbeat_ms`, and a connection that stays
silent for two of them is dropped and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from agent_relay_client import errors
from agent_relay_client.backoff import BackoffPolicy
from agent_relay_client.connection import link_dead
from agent_relay_client.conversation import HistoryMessage
from agent_relay_client.events import (
    Ack,
    ErrorReply,
    Pong,
    SessionEvent,
    UpstreamChanged,
    Welcome,
)
from agent_relay_client.outbox import Outbox, OutboxEntry
from agent_relay_client.resilient import Accepted, History, ResilientChat
from agent_relay_client.wire import JsonCodec, ProtoCodec, Wire, codec_for

PROTOCOL = "agent-relay.v1"
Delivery = Literal["stream", "final"]


def ws_url(base_url: str) -> str:
    """The socket URL for an edge base URL (http -> ws, https -> wss, path /ws)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"edge URL must be http(s):// or ws(s)://, not {base_url!r}")
    return urlunsplit((scheme, parts.netloc, "/ws", "", ""))


def http_url(base_url: str) -> str:
    """The HTTP base URL for an edge base URL (ws -> http)."""
    parts = urlsplit(base_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class EdgeLink:
    """One authenticated WebSocket to the edge. Implements `resilient.Link`.

    Built by `EdgeLink.open()`, which returns only after `welcome` and a
    successful `auth`; raises TransportError (or ConnectionClosed for a refused
    token) otherwise.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        welcome: Welcome,
        *,
        deltas: Delivery,
        tool_output: Delivery,
        heartbeat_s: float | None,
        reply_timeout_s: float,
        codec: JsonCodec | ProtoCodec | None = None,
    ) -> None:
        self._ws = ws
        self._codec = codec if codec is not None else JsonCodec()
        self.welcome = welcome
        self._deltas = deltas
        self._tool_output = tool_output
        self._reply_timeout_s = reply_timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Ack | Pong]] = {}
        self._events: asyncio.Queue[SessionEvent | UpstreamChanged | errors.AgentRelayError] = (
            asyncio.Queue()
        )
        self._failure: errors.TransportError | None = None
        self.last_frame_at = time.monotonic()
        self.auth_ack: Ack | None = None
        self._reader = asyncio.create_task(self._read())
        interval = heartbeat_s if heartbeat_s is not None else welcome.heartbeat_ms / 1000.0
        self._heartbeat = asyncio.create_task(self._ping_loop(interval)) if interval > 0 else None

    @classmethod
    async def open(
        cls,
        http: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        origin: str | None = None,
        deltas: Delivery = "stream",
        tool_output: Delivery = "stream",
        heartbeat_s: float | None = None,
        connect_timeout_s: float = 10.0,
        reply_timeout_s: float = 30.0,
        wire: Wire = "json",
    ) -> EdgeLink:
        """Connect, read `welcome`, authenticate. `wire`: JSON text frames
        (`agent-relay.v1`) or binary protobuf frames (`agent-relay.v1+proto`)."""
        codec = codec_for(wire)
        headers = {"Origin": origin} if origin else {}
        try:
            ws = await http.ws_connect(
                url,
                protocols=(codec.protocol,),
                headers=headers,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # 4xx: refused (wrong origin, protocol, ...) and would be refused again;
            # 429 and 5xx: busy or restarting, worth another try after backoff.
            code = 1013 if exc.status == 429 else 1008 if 400 <= exc.status < 500 else 1006
            raise errors.ConnectionClosed(code, f"handshake refused: HTTP {exc.status}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise errors.TransportError(f"cannot connect to {url}: {exc}") from exc
        try:
            welcome = await asyncio.wait_for(_read_welcome(ws, codec), connect_timeout_s)
        except TimeoutError as exc:
            await ws.close()
            raise errors.TransportError("no welcome from the edge") from exc
        except BaseException:
            await ws.close()
            raise
        link = cls(
            ws,
            welcome,
            deltas=deltas,
            tool_output=tool_output,
            heartbeat_s=heartbeat_s,
            reply_timeout_s=reply_timeout_s,
            codec=codec,
        )
        try:
            link.auth_ack = await asyncio.wait_for(link.authenticate(token), connect_timeout_s)
        except errors.RequestError as exc:
            await link.close()
            raise errors.ConnectionClosed(4501, f"auth refused: {exc}") from exc
        except TimeoutError as exc:
            await link.close()
            raise errors.TransportError("no reply to auth") from exc
        except BaseException:
            await link.close()
            raise
        return link

    # ----- reading ----------------------------------------------------------------------------

    async def _read(self) -> None:
        failure: errors.TransportError
        try:
            async for msg in self._ws:
                self.last_frame_at = time.monotonic()
                if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                    self._on_frame(msg.data)
            code = self._ws.close_code or 1006
            failure = errors.TransportError(f"the edge closed the socket ({code})", code=code)
        except asyncio.CancelledError:
            failure = errors.TransportError("closed by the client", code=1000)
        except (aiohttp.ClientError, OSError) as exc:
            failure = errors.TransportError(f"socket failed: {exc}")
        self._fail(failure)

    def _fail(self, failure: errors.TransportError) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        self._pending.clear()
        self._events.put_nowait(failure)

    def _on_frame(self, data: str | bytes) -> None:
        try:
            frame = self._codec.decode(data)
        except errors.ProtocolError as exc:
            self._events.put_nowait(exc)
            return
        if isinstance(frame, (Ack, Pong)):
            self._resolve(frame.ref, frame)
        elif isinstance(frame, ErrorReply):
            error = errors.error_from_code(
                frame.code,
                frame.message,
                retryable=frame.retryable,
                retry_after_ms=frame.retry_after_ms,
            )
            if not self._resolve(frame.ref, error) and not (
                frame.code == "upstream_unavailable" and not frame.ref
            ):  # (that notice comes with an `upstream` frame, shown as an UpstreamChanged)
                self._events.put_nowait(error)  # an error for no command: show it
        elif isinstance(frame, Welcome):
            pass  # a second welcome carries nothing new
        else:
            self._events.put_nowait(frame)

    def _resolve(self, ref: str, outcome: Ack | Pong | errors.RequestError) -> bool:
        future = self._pending.pop(ref, None)
        if future is None or future.done():
            return False
        if isinstance(outcome, errors.RequestError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        return True

    async def _ping_loop(self, interval_s: float) -> None:
        """Ping each interval; a silent socket is dead (`link_dead`; 4001: reconnect)."""
        while True:
            await asyncio.sleep(interval_s)
            if link_dead(self.last_frame_at * 1000, time.monotonic() * 1000, interval_s * 1000):
                # No close handshake: the path is dead, and the driver closes the link.
                self._fail(errors.TransportError("heartbeat timeout", code=4001))
                return
            with contextlib.suppress(errors.AgentRelayError, ConnectionError):
                await self._write({"type": "ping", "ts": int(time.time() * 1000)}, wait=False)

    # ----- commands ---------------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any]) -> None:
        data = self._codec.encode(frame)
        if isinstance(data, bytes):
            await self._ws.send_bytes(data)
        else:
            await self._ws.send_str(data)

    async def _write(self, frame: dict[str, Any], *, wait: bool = True) -> Ack:
        if self._failure is not None:
            raise self._failure
        frame_id = f"c{next(self._ids)}"
        frame["id"] = frame_id
        future: asyncio.Future[Ack | Pong] = asyncio.get_running_loop().create_future()
        if wait:
            self._pending[frame_id] = future
        try:
            await self._send(frame)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self._pending.pop(frame_id, None)
            raise errors.TransportError(f"send failed: {exc}") from exc
        if not wait:
            return Ack()
        try:
            reply = await asyncio.wait_for(future, self._reply_timeout_s)
        except TimeoutError as exc:
            self._pending.pop(frame_id, None)
            raise errors.TransportError(f"no reply to {frame['type']} in time") from exc
        assert isinstance(reply, Ack)
        return reply

    async def authenticate(self, token: str) -> Ack:
        """Send `auth` (also to refresh the token in-band); returns the ack."""
        return await self._write({"type": "auth", "token": token})

    async def join(self, session_id: str, after_seq: int) -> int:
        """Follow a session after `after_seq`; returns its head seq."""
        ack = await self._write(
            {
                "type": "join",
                "session_id": session_id,
                "after_seq": after_seq,
                "deltas": self._deltas,
                "tool_output": self._tool_output,
            }
        )
        return ack.head_seq

    async def leave(self, session_id: str) -> None:
        """Stop following a session."""
        await self._write({"type": "leave", "session_id": session_id})

    async def send(self, entry: OutboxEntry) -> Accepted:
        """Send a user message (`chat:message`); returns its acceptance."""
        frame: dict[str, Any] = {
            "type": "chat:message",
            "session_id": entry.session_id,
            "message_id": entry.message_id,
            "text": entry.text,
        }
        if entry.busy_policy:
            frame["busy_policy"] = entry.busy_policy
        for key in ("traceparent", "tracestate"):
            if key in entry.trace_context:
                frame[key] = entry.trace_context[key]
        ack = await self._write(frame)
        return Accepted(
            ack.message_id or entry.message_id, ack.seq, ack.run_id, ack.queued, ack.duplicate
        )

    async def cancel_run(self, session_id: str, run_id: str) -> bool:
        """`chat:cancel` a run ("": the active one)."""
        frame: dict[str, Any] = {"type": "chat:cancel", "session_id": session_id}
        if run_id:
            frame["run_id"] = run_id
        return (await self._write(frame)).cancelled

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        """`tool:cancel` one tool call."""
        frame = {"type": "tool:cancel", "session_id": session_id, "call_id": call_id}
        return (await self._write(frame)).cancelled

    async def ping(self) -> float:
        """An application ping; returns the round trip in seconds."""
        if self._failure is not None:
            raise self._failure
        frame_id = f"c{next(self._ids)}"
        future: asyncio.Future[Ack | Pong] = asyncio.get_running_loop().create_future()
        self._pending[frame_id] = future
        started = time.perf_counter()
        await self._send({"type": "ping", "id": frame_id, "ts": 0})
        await asyncio.wait_for(future, self._reply_timeout_s)
        return time.perf_counter() - started

    async def next_event(self) -> SessionEvent | UpstreamChanged:
        """The next session event or upstream notice; raises TransportError once the socket
        is gone."""
        item = await self._events.get()
        if isinstance(item, errors.TransportError):
            self._events.put_nowait(item)
            raise item
        if isinstance(item, errors.RequestError):
            raise errors.ProtocolError(f"unsolicited error from the edge: {item}")
        if isinstance(item, errors.AgentRelayError):
            raise item
        return item

    async def close(self) -> None:
        """Close the socket (idempotent). A peer that does not answer the close frame
        within a second is not waited for: the path may be dead."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 1.0)


async def _read_welcome(
    ws: aiohttp.ClientWebSocketResponse, codec: JsonCodec | ProtoCodec
) -> Welcome:
    msg = await ws.receive()
    if msg.type is not (aiohttp.WSMsgType.BINARY if codec.binary else aiohttp.WSMsgType.TEXT):
        code = ws.close_code or 1006
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            raise errors.TransportError(f"closed before welcome ({code})", code=code)
        raise errors.TransportError(f"unexpected {msg.type.name} before welcome")
    frame = codec.decode(msg.data)
    if not isinstance(frame, Welcome):
        raise errors.ProtocolError(f"expected welcome, got {type(frame).__name__}")
    return frame


class EdgeClient(ResilientChat):
    """The edge client: a `ResilientChat` over WebSockets plus the edge's small HTTP API.

    `token` is a JWT naming the sessions to join; `create_session()` gets one when
    none is given. `outbox_path` keeps unsent messages in a JSON file across restarts.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        token: str = "",
        origin: str | None = None,
        outbox_path: Path | None = None,
        deltas: Delivery = "stream",
        tool_output: Delivery = "stream",
        heartbeat_s: float | None = None,
        backoff: BackoffPolicy | None = None,
        max_attempts: int | None = None,
        request_timeout_s: float = 30.0,
        on_token: Callable[[str], None] | None = None,
        refresh_at_fraction: float = 0.8,
        wire: Wire = "json",
    ) -> None:
        codec_for(wire)  # a wrong name fails here, not at the first connect
        self.wire: Wire = wire
        super().__init__(
            self._open_link,
            self.history,
            outbox=Outbox(outbox_path),
            backoff=backoff,
            max_attempts=max_attempts,
        )
        self.core.contiguous = deltas == "stream" and tool_output == "stream"
        self.base_url = http_url(base_url)
        self.url = ws_url(base_url)
        self._token = token
        self._token_set = asyncio.Event()  # a connection waits for a token, not fails
        if token:
            self._token_set.set()
        self.origin = origin
        self._deltas: Delivery = deltas
        self._tool_output: Delivery = tool_output
        self._heartbeat_s = heartbeat_s
        self._timeout_s = request_timeout_s
        self._http: aiohttp.ClientSession | None = None
        self.link: EdgeLink | None = None  # the live socket, for tests and diagnostics
        self._on_token = on_token  # told every new token (to remember it)
        # A token is swapped for a fresh one when this fraction of its lifetime has passed,
        # so a long chat never meets an expired token at its next reconnect.
        self._refresh_at_fraction = refresh_at_fraction
        self._refresher: asyncio.Task[None] | None = None
        self.expires_at = 0.0  # the token's expiry (Unix seconds), once known

    @property
    def token(self) -> str:
        """The JWT the client authenticates with ("" until one is given or obtained)."""
        return self._token

    @token.setter
    def token(self, value: str) -> None:
        self._token = value
        if value:
            self._token_set.set()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # force_close: no pooled connection outlives a network change and hangs a request.
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                connector=aiohttp.TCPConnector(force_close=True),
            )
        return self._http

    async def close(self) -> None:
        """Close the socket and the HTTP session."""
        if self._refresher is not None:
            self._refresher.cancel()
        await super().close()
        if self._http is not None:
            await self._http.close()

    async def _open_link(self) -> EdgeLink:
        await self._token_set.wait()  # until create_session() or token= supplies one
        self.link = await EdgeLink.open(
            self._session(),
            self.url,
            self.token,
            origin=self.origin,
            deltas=self._deltas,
            tool_output=self._tool_output,
            heartbeat_s=self._heartbeat_s,
            reply_timeout_s=self._timeout_s,
            wire=self.wire,
        )
        ack = self.link.auth_ack
        if ack is not None and ack.expires_at and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_before(ack.expires_at))
        return self.link

    async def _refresh_credentials(self) -> bool:
        """The edge refused the token (4501): swap it for a fresh one, once per refusal."""
        try:
            await self.refresh_token()
        except errors.AgentRelayError:
            return False
        return True

    async def _refresh_before(self, expires_at: float) -> None:
        """Keep the token fresh: swap it when most of its lifetime has passed, again and again."""
        self.expires_at = expires_at
        while True:
            left = self.expires_at - time.time()
            await asyncio.sleep(max(left * self._refresh_at_fraction, 1.0))
            try:
                await self.refresh_token()
            except errors.AgentRelayError:
                await asyncio.sleep(5.0)  # the edge may be restarting: try again soon

    # ----- HTTP API ----------------------------------------------------------------------------

    async def _http_json(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.origin:
            headers["Origin"] = self.origin
        try:
            async with self._session().request(
                method, self.base_url + path, json=body, headers=headers
            ) as response:
                text = await response.text()
                data: Any = json.loads(text) if text else {}
                if response.status >= 400:
                    raise _http_error(response.status, data)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise errors.TransportError(f"{method} {path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise errors.ProtocolError(f"{method} {path}: the edge sent no JSON") from exc
        if not isinstance(data, dict):
            raise errors.ProtocolError(f"{method} {path}: expected a JSON object")
        return data

    async def create_session(self, *, title: str = "") -> str:
        """Create a session (for this token's user, or a new anonymous one); adopts the token
        the edge returns, which names the new session. Returns the session id."""
        body = {"title": title} if title else {}
        data = await self._http_json("POST", "/api/sessions", body)
        self.token = str(data["token"])
        return str(data["session_id"])

    async def refresh_token(self) -> str:
        """Swap the token for a fresh one with the same claims (before it expires)."""
        data = await self._http_json("POST", "/api/token", {"token": self.token})
        self.token = str(data["token"])
        self.expires_at = float(data.get("expires_at") or 0.0)
        if self._on_token is not None:
            self._on_token(self.token)
        if self.link is not None:
            with contextlib.suppress(errors.AgentRelayError):
                await self.link.authenticate(self.token)
        return self.token

    async def history(self, session_id: str) -> History:
        """A session's durable messages over HTTP, and the seq they reflect."""
        data = await self._http_json("GET", f"/api/sessions/{session_id}/messages")
        raw = data.get("messages")
        if not isinstance(raw, list):
            raise errors.ProtocolError("history: 'messages' is not a list")
        return History([history_message_from_json(m) for m in raw], int(data.get("as_of_seq", 0)))


def _enum(value: Any, prefix: str) -> str:
    return str(value).lower().removeprefix(prefix.lower())


def history_message_from_json(m: Any) -> HistoryMessage:
    """One message of the edge's history (the proto's JSON mapping)."""
    if not isinstance(m, dict):
        raise errors.ProtocolError("history: a message is not an object")
    calls = m.get("tool_calls") or []
    return HistoryMessage(
        message_id=str(m.get("message_id", "")),
        role=_enum(m.get("role", "user"), "role_"),
        text=str(m.get("text", "")),
        status=_enum(m.get("status", "complete"), "message_status_"),
        run_id=str(m.get("run_id", "")),
        call_id=str(m.get("call_id", "")),
        tool_calls=tuple(
            (str(c.get("call_id", "")), str(c.get("tool_name", "")), str(c.get("arguments_json")))
            for c in calls
            if isinstance(c, dict)
        ),
        created_unix_ms=int(m.get("created_unix_ms", 0) or 0),
    )


def _http_error(status: int, data: Any) -> errors.AgentRelayError:
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        return errors.error_from_code(
            data["code"],
            str(data.get("message", "")),
            retryable=bool(data.get("retryable", False)),
            retry_after_ms=int(data.get("retry_after_ms", 0) or 0),
        )
    by_status = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 429: "rate_limited"}
    return errors.error_from_code(by_status.get(status, "internal"), f"HTTP {status}")
