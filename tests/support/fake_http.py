"""The HTTP side shared by the local model API fakes (fake_openai, fake_anthropic).

A fake is a real aiohttp server on 127.0.0.1 port 0. Each request is recorded,
checked against the API's rules by the fake's `check` (a violation is answered
the way the real API answers it: HTTP 400 with its error JSON, and kept in
`rejections`), and then answered with the next scripted Reply: an HTTP error, a
JSON body, or an SSE stream that may be written in small pieces, cut mid-way,
held open with keep-alives, or stalled. When a client goes away mid-stream the
fake sees the connection close and counts it in `disconnects`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.support.timing import scaled

Then = Literal["end", "cut", "hold", "stall"]


@dataclass
class Reply:
    """What the fake does with one valid request.

    status/body/headers: a plain HTTP reply (an error, or JSON where a stream was
    asked for) when status is not 200 or body is set. Otherwise `events` (SSE text,
    each already ending in a blank line) are streamed, `split_bytes` > 0 writing each
    in pieces of that many bytes; then the stream ends, is cut (`cut`: the TCP
    connection is aborted), is kept open with keep-alives until the client leaves
    (`hold`), or is kept open silent (`stall`).
    """

    status: int = 200
    events: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    split_bytes: int = 0
    then: Then = "end"


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Rejected(Exception):
    """A request breaks the API's rules; `response` is the API's answer to it."""

    def __init__(self, response: web.Response, message: str) -> None:
        super().__init__(message)
        self.response = response
        self.message = message


class FakeModelServer:
    """A scripted model API on 127.0.0.1 port 0; subclasses name the route and its rules."""

    route = "/"
    keepalive = b": keep-alive\n\n"

    def __init__(self) -> None:
        self.url = ""
        self.replies: list[Reply] = []
        self.requests: list[Recorded] = []
        self.rejections: list[str] = []
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- what a subclass provides -------------------------------------------------

    def check(self, headers: dict[str, str], body: dict[str, Any]) -> None:
        """Raise Rejected when the request breaks the API's rules."""

    def error_response(self, status: int, kind: str, message: str) -> web.Response:
        """The API's error reply."""
        return web.json_response({"error": {"type": kind, "message": message}}, status=status)

    def base_url(self, origin: str) -> str:
        """What a client is configured with to reach this fake."""
        return origin

    # --- scripting ----------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order."""
        self.replies.extend(replies)

    async def wait_disconnected(self, timeout_s: float = 10.0) -> None:
        """Wait until a client left a stream before its end."""
        await asyncio.wait_for(self.disconnected.wait(), scaled(timeout_s))

    # --- the server ---------------------------------------------------------------

    async def start(self) -> FakeModelServer:
        """Listen on 127.0.0.1 at a free port; sets `url`."""
        app = web.Application()
        app.router.add_post(self.route, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = self.base_url(f"http://127.0.0.1:{port}")
        return self

    async def stop(self) -> None:
        """Release held streams and close the server."""
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeModelServer:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            body = json.loads(await request.text())
        except ValueError:
            body = None
        self.requests.append(
            Recorded(request.path, headers, body if isinstance(body, dict) else {})
        )
        try:
            if not isinstance(body, dict):
                raise Rejected(
                    self.error_response(400, "invalid_request_error", "body is not a JSON object"),
                    "body is not a JSON object",
                )
            self.check(headers, body)
        except Rejected as rejected:
            self.rejections.append(rejected.message)
            return rejected.response
        if not self.replies:
            message = f"the fake has no scripted reply for request {len(self.requests)}"
            self.rejections.append(message)
            return self.error_response(400, "invalid_request_error", message)
        reply = self.replies.pop(0)
        if reply.status != 200 or reply.body:
            return web.Response(status=reply.status, headers=reply.headers, text=reply.body)
        return await self._stream(request, reply)

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **reply.headers,
            }
        )
        await response.prepare(request)
        try:
            for event in reply.events:
                data = event.encode()
                step = reply.split_bytes or len(data)
                for start in range(0, len(data), step):
                    await response.write(data[start : start + step])
                    if reply.split_bytes:
                        await asyncio.sleep(0)
            if reply.then == "cut":
                assert request.transport is not None
                request.transport.abort()  # the connection drops mid-stream
                return response
            if reply.then == "hold":  # until the client leaves (the write then fails)
                for _ in range(int(scaled(60) / 0.01)):
                    if self._stop.is_set():
                        break
                    await asyncio.sleep(0.01)
                    await response.write(self.keepalive)
            if reply.then == "stall":
                await asyncio.wait_for(self._stop.wait(), scaled(60))
            await response.write_eof()
        except ConnectionResetError:  # the client went away: what some tests wait for
            self._saw_disconnect()
        except asyncio.CancelledError:
            self._saw_disconnect()
            raise
        return response

    def _saw_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnected.set()


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event carrying `data` as JSON (or as is, for a str)."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n"


def split(text: str, size: int) -> list[str]:
    """`text` in pieces of `size` characters (one piece for size <= 0)."""
    if size <= 0 or not text:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]
