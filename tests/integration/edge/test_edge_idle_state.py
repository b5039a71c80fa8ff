"""What an idle socket holds in the edge, and that what it lets go comes back when needed.

The edge runs in this process (its app on 127.0.0.1, port 0, in front of the real agent
service), so a test can look at the hub's objects; the client is a real `websockets`
socket. Memory per idle socket (PERFORMANCE.md) comes from structures made at first use
and let go again: each test pins one such invariant and that the next use still works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

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


@pytest.fixture
async def edge(agent: ServiceProcess) -> AsyncIterator[InProcessEdge]:
    settings = load(
        [
            "--listen", "127.0.0.1:0", "--upstream", agent.address,
            "--jwt-secret", TEST_JWT_SECRET, "--static-dir", "/nonexistent",
        ],
        {},
    )  # fmt: skip
    app = create_app(settings=settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield InProcessEdge(app, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


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
