"""What an idle socket holds in the edge, and that what it lets go comes back when needed.

The edge runs in this process (its app on 127.0.0.1, port 0, in front of the real agent
service), so a test can look at the hub's objects; the client is a real `websockets`
socket. Memory per idle socket (PERFORMANCE.md) comes from structures made at first use
and let go again: each test pins one such invariant and that the next use still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestHandler

from agent_relay_client.wire import PROTOCOLS
from tests.support.edge import TEST_JWT_SECRET, EdgeClient
from tests.support.service import ServiceProcess
from tests.support.timing import scaled
from ws_edge.app import HUB, create_app
from ws_edge.config import load
from ws_edge.connection import Connection
from ws_edge.hub import Hub


class InProcessEdge:
    def __init__(self, app: web.Application, url: str) -> None:
        self.app = app
        self.url = url
        self.ws_url = url.replace("http", "ws", 1) + "/ws"
        self.server: web.Server | None = None

    def handlers(self) -> list[RequestHandler]:
        """aiohttp's request handler of each open connection."""
        assert self.server is not None
        return self.server.connections

    @property
    def hub(self) -> Hub:
        return self.app[HUB]

    async def create_session(self) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + "/api/sessions", json={"title": "idle"}) as reply:
                assert reply.status == 201, await reply.text()
                return await reply.json()

    def connection(self, user_id: str) -> Connection:
        (conn,) = [c for c in self.hub.connections.values() if c.user_id == user_id]
        return conn


@contextlib.asynccontextmanager
async def serve_edge(agent: ServiceProcess, *args: str) -> AsyncIterator[InProcessEdge]:
    settings = load(
        [
            "--listen", "127.0.0.1:0", "--upstream", agent.address,
            "--jwt-secret", TEST_JWT_SECRET, "--static-dir", "/nonexistent", *args,
        ],
        {},
    )  # fmt: skip
    app = create_app(settings=settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        edge = InProcessEdge(app, f"http://127.0.0.1:{runner.addresses[0][1]}")
        edge.server = runner.server
        yield edge
    finally:
        await runner.cleanup()


@pytest.fixture
async def edge(agent: ServiceProcess) -> AsyncIterator[InProcessEdge]:
    async with serve_edge(agent) as edge:
        yield edge


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait until condition() holds (the sweeper lets go of things on its own schedule)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def test_an_idle_socket_holds_no_send_queue_and_the_next_event_still_reaches_it(edge):
    session = await edge.create_session()
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    joined = await client.join(session["session_id"])
    assert joined["type"] == "ack", joined
    conn = edge.connection(session["user_id"])
    await eventually(lambda: conn.queue is None, "the idle socket's send queue let go")

    # The first frames after idle (the message's ack, the reply's deltas) make a queue again.
    ack = await client.say(session["session_id"], "hello after a quiet while")
    assert ack["type"] == "ack", ack
    done = await client.until_complete(session["session_id"], ack["run_id"])
    assert done["seq"] > ack["seq"]
    deltas = [f for f in client.events(session["session_id"]) if f["type"] == "chat:response"]
    assert deltas and all(f["run_id"] == ack["run_id"] for f in deltas)
    await eventually(lambda: conn.queue is None, "the send queue let go again once drained")
    await client.close()


async def test_a_socket_joined_to_what_its_token_names_shares_the_tokens_tuple(edge):
    session = await edge.create_session()
    sid = session["session_id"]
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    assert (await client.join(sid))["type"] == "ack"
    conn = edge.connection(session["user_id"])
    assert conn.claims is not None
    assert conn.joined == (sid,) and conn.joined is conn.claims.sessions

    # Leaving and joining again still works, and the socket gets what it missed meanwhile.
    left = await client.request({"type": "leave", "session_id": sid})
    assert left["type"] == "ack" and conn.joined == ()
    other = await EdgeClient.connect(edge.ws_url, token=session["token"])
    assert (await other.join(sid))["type"] == "ack"
    ack = await other.say(sid, "while the first socket was away")
    await other.until_complete(sid, ack["run_id"])
    assert (await client.join(sid, after_seq=0))["type"] == "ack"
    assert conn.joined is conn.claims.sessions
    done = await client.until_complete(sid, ack["run_id"])
    assert done["seq"] > ack["seq"]
    await other.close()
    await client.close()


# -- the HTTP request parser, let go after the upgrade (ws_edge/layouts.py) ----------------


def test_aiohttps_request_handler_still_has_the_attributes_the_release_relies_on():
    """release_request_parser() relies on these names; an aiohttp without them keeps the
    parser (no crash), and this test says that the saving is gone."""
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    assert {"_parser", "_upgraded", "_payload_parser"} <= slots


async def test_an_upgraded_socket_holds_no_http_parser_and_still_streams_a_reply(edge):
    session = await edge.create_session()
    sid = session["session_id"]
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    (handler,) = edge.handlers()
    assert handler._upgraded and handler._payload_parser is not None
    assert handler._parser is None, "the edge still holds aiohttp's HTTP request parser"

    assert (await client.join(sid))["type"] == "ack"
    ack = await client.say(sid, "hello from a socket without an HTTP parser")
    assert ack["type"] == "ack", ack
    done = await client.until_complete(sid, ack["run_id"])
    assert done["seq"] > ack["seq"]
    assert [f for f in client.events(sid) if f["type"] == "chat:response"]

    await client.close()  # the client closes: the edge answers and lets go
    assert client.ws.close_code == 1000
    await eventually(lambda: not edge.hub.connections, "the closed socket left the hub")
    await eventually(lambda: not edge.handlers(), "aiohttp's handler of the socket is gone")


async def test_an_upgraded_socket_answers_pings_gets_the_heartbeat_and_closes_from_the_edge(
    agent,
):
    async with serve_edge(agent, "--ping-interval-s", "0.5") as edge:
        session = await edge.create_session()
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                edge.ws_url, protocols=[PROTOCOLS["json"]], autoping=False, heartbeat=None
            )
            assert (await ws.receive(timeout=scaled(10))).type is WSMsgType.TEXT  # welcome
            assert edge.handlers()[0]._parser is None

            await ws.ping(b"are you there")
            pong = await ws.receive(timeout=scaled(10))
            assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")

            ping = await ws.receive(timeout=scaled(10))  # the sweeper's heartbeat
            assert ping.type is WSMsgType.PING, ping
            await ws.pong(ping.data)

            await ws.send_json({"type": "auth", "id": "1", "token": session["token"]})
            ack = await ws.receive_json(timeout=scaled(10))
            assert ack["type"] == "ack", ack

            (conn,) = edge.hub.connections.values()
            conn.close(4000, "closed by the edge in a test")
            closing = await ws.receive(timeout=scaled(10))
            assert closing.type is WSMsgType.CLOSE and closing.data == 4000, closing
            await ws.close()
        await eventually(lambda: not edge.handlers(), "aiohttp's handler of the socket is gone")


async def test_garbage_after_the_upgrade_gets_a_clean_close(edge):
    reader, writer = await asyncio.open_connection("127.0.0.1", int(edge.url.rsplit(":", 1)[1]))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: "
        + PROTOCOLS["json"].encode()
        + b"\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))
    assert head.startswith(b"HTTP/1.1 101"), head
    await eventually(
        lambda: bool(edge.handlers()) and edge.handlers()[0]._parser is None,
        "the upgraded handler let go of its parser",
    )
    # An unmasked frame with reserved bits set, then what an HTTP client might send.
    writer.write(b"\xf1\x05hello" + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), scaled(10))  # until the edge's FIN
    # The welcome frame (text), then a close frame with 1002 (protocol error).
    close_at = rest.index(b"\x88")
    assert rest[close_at + 2 : close_at + 4] == (1002).to_bytes(2, "big"), rest
    assert b"HTTP/1.1" not in rest  # the garbage was not read as a new request
    writer.close()
    await eventually(lambda: not edge.hub.connections, "the socket left the hub")
    await eventually(lambda: not edge.handlers(), "aiohttp's handler of the socket is gone")


async def test_many_sockets_opened_and_closed_leave_nothing_behind(edge):
    for _ in range(3):  # not authenticated: a user's own sockets are limited in number
        clients = await asyncio.gather(*(EdgeClient.connect(edge.ws_url) for _ in range(40)))
        assert len(edge.handlers()) == 40
        assert all(h._parser is None for h in edge.handlers())
        await asyncio.gather(*(c.close() for c in clients))
        await eventually(lambda: not edge.hub.connections, "every socket left the hub")
        await eventually(lambda: not edge.handlers(), "every handler is gone")
