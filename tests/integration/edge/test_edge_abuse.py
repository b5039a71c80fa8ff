"""Abuse at the real edge: floods past each limit, sockets that never authenticate, many idle
sockets (with the edge's memory per socket), expired and forged tokens, and one user reaching
for another's sessions. Each limit answers with its documented error or close code, and an
honest user of the same edge notices nothing.

AGENT_RELAY_IDLE_SOCKETS sets how many idle sockets are held (1,000; `make soak`: 10,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.edge import EdgeClient, EdgeProcess, create_session, make_token, start_edge
from tests.support.timing import scaled

IDLE_SOCKETS = int(os.environ.get("AGENT_RELAY_IDLE_SOCKETS", "1000"))


def http(edge: EdgeProcess, path: str, *, token: str | None = None, body: dict | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(edge.url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def close_code(client: EdgeClient) -> int:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(100_000):
            await client.recv(20)
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code


async def honest_round_trip(edge: EdgeProcess, session: dict) -> str:
    """A whole chat turn of a user who is not the abuser: the reply's text."""
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.join(session["session_id"])
    ack = await client.say(session["session_id"], "hello")
    done = await client.until_complete(session["session_id"], ack["run_id"])
    await client.close()
    return done["text"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- floods ------------------------------------------------------------------------------------


async def test_a_frame_flood_is_rate_limited_then_closed_1008_and_others_go_on(edge):
    # The flooder writes without reading, so its frames are still arriving when the edge
    # closes: the close frame must reach it all the same (1008, not a reset's 1006).
    honest = create_session(edge)
    for _ in range(3):
        abuser = await EdgeClient.connect(edge.ws_url, token=create_session(edge)["token"])
        sent = 0
        try:
            for sent in range(1, 301):
                await abuser.send({"type": "ping", "id": f"p{sent}"})
        except ConnectionClosed:
            pass  # closed while still sending: the code is read below
        assert await close_code(abuser) == 1008
        limited = [f for f in abuser.frames if f.get("code") == "rate_limited"]
        assert limited and all(f["retry_after_ms"] > 0 and f["ref"] for f in limited)
        assert 0 < len([f for f in abuser.frames if f["type"] == "pong"]) < sent
    assert await honest_round_trip(edge, honest)


async def test_a_byte_flood_is_rate_limited_on_bytes(edge):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    pad = "x" * 60_000
    replies = [await client.request({"type": "ping", "pad": pad}) for _ in range(8)]
    kinds = [r.get("code", r["type"]) for r in replies]
    assert kinds[:4] == ["pong"] * 4 and "rate_limited" in kinds[4:], kinds
    assert "bytes" in next(r for r in replies if r.get("code"))["message"]
    await client.close()


async def test_sockets_past_the_per_user_limit_are_closed_4509(edge):
    session = create_session(edge)
    clients = [await EdgeClient.connect(edge.ws_url, token=session["token"]) for _ in range(16)]
    extra = await EdgeClient.connect(edge.ws_url)
    reply = await extra.request({"type": "auth", "token": session["token"]})
    assert reply["code"] == "rate_limited"
    assert await close_code(extra) == 4509
    assert (await clients[0].request({"type": "ping"}))["type"] == "pong"
    for client in clients:
        await client.close()


async def test_a_run_flood_is_limited_per_user(edge):
    session = create_session(edge)
    sid = session["session_id"]
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.join(sid)
    for i in range(8):  # all at once, before any reply
        await client.send(
            {
                "type": "chat:message",
                "id": f"m{i}",
                "session_id": sid,
                "message_id": f"m{i}",
                "text": f"go {i}",
            }
        )
    replies = [await client.until(lambda f, i=i: f.get("ref") == f"m{i}") for i in range(8)]
    codes = [r.get("code", r["type"]) for r in replies]
    assert codes.count("ack") <= 4 and codes.count("rate_limited") >= 4, codes
    await client.close()


async def test_an_anonymous_session_flood_gets_429_past_the_default_burst(agent):
    edge = start_edge(agent.address)
    try:
        statuses = []
        for _ in range(100):
            status, body = http(edge, "/api/sessions", body={})
            statuses.append(status)
        print(
            f"\nanonymous flood: {statuses.count(201)} created, {statuses.count(429)} refused 429"
        )
        assert statuses.count(201) <= 62 and statuses.count(429) >= 38, statuses
        assert body["code"] == "rate_limited"
    finally:
        edge.stop()


async def test_sockets_that_never_authenticate_are_closed_4503(agent, monkeypatch):
    monkeypatch.setenv("AGENT_RELAY_AUTH_TIMEOUT_S", "1")
    edge = start_edge(agent.address)
    try:
        silent = [await EdgeClient.connect(edge.ws_url) for _ in range(300)]
        codes = await asyncio.gather(*(close_code(c) for c in silent))
        assert set(codes) == {4503}
        assert await honest_round_trip(edge, create_session(edge))
    finally:
        edge.stop()


# -- many idle sockets -------------------------------------------------------------------------


async def hold_idle_sockets(edge: EdgeProcess, sid: str, n: int, **kw) -> list[EdgeClient]:
    """n sockets of n users, each authenticated and joined to sid (completed messages
    only), then silent."""

    async def one(i: int) -> EdgeClient:
        client = await EdgeClient.connect(edge.ws_url, token=make_token(f"u_idle_{i}", [sid]), **kw)
        # Completed messages only: at 10,000 sockets, one process reading every delta
        # of every socket would measure this test, not the edge.
        assert (await client.join(sid, deltas="final"))["type"] == "ack"
        return client

    sockets: list[EdgeClient] = []
    for start in range(0, n, 250):
        sockets += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 250))))
    return sockets


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("compression", ["permessage-deflate", None])
async def test_many_idle_sockets_are_held_and_all_still_get_live_events(agent, compression):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the edge inherits it
    if IDLE_SOCKETS + 200 > hard:  # each process (this one, the edge) holds one fd a socket
        pytest.skip(f"{IDLE_SOCKETS} sockets need more file descriptors than {hard}")
    edge = start_edge(agent.address)
    options = {} if compression else {"compression": None}
    try:
        session = create_session(edge)
        sid = session["session_id"]
        await asyncio.sleep(0.3)
        before = rss_kib(edge.process.pid)
        started = time.monotonic()
        idle = await hold_idle_sockets(edge, sid, IDLE_SOCKETS, **options)
        opened_s = time.monotonic() - started
        await asyncio.sleep(0.5)
        per_socket = (rss_kib(edge.process.pid) - before) / IDLE_SOCKETS
        print(
            f"\nidle sockets ({compression or 'no compression'}): {IDLE_SOCKETS} held, each"
            f" authenticated and joined; {per_socket:.1f} KiB per socket in the edge"
            f" (opened in {opened_s:.1f} s)"
        )
        # Held, and yet an honest turn works and every idle socket gets its events.
        assert http(edge, "/healthz")[0] == 200
        speaker = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await speaker.join(sid)
        ack = await speaker.say(sid, "to everyone")
        done = await speaker.until_complete(sid, ack["run_id"], 120)
        got = await asyncio.gather(*(c.until_complete(sid, ack["run_id"], 120) for c in idle))
        assert {g["seq"] for g in got} == {done["seq"]}
        for client in [speaker, *idle]:
            await client.close()
    finally:
        edge.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- tokens ------------------------------------------------------------------------------------


async def test_expired_and_forged_tokens_are_refused_over_http_too(edge):
    session = create_session(edge)
    sid, user = session["session_id"], session["user_id"]
    expired = make_token(user, [sid], expires_in_s=-5)
    forged = make_token(user, [sid], secret="someone-elses-secret-0123456789abcdef")
    for token in (expired, forged, "x.y.z"):
        status, body = http(edge, f"/api/sessions/{sid}/messages", token=token)
        assert status == 401 and body["code"] == "unauthenticated"
        status, body = http(edge, "/api/token", body={"token": token})
        assert status == 401 and body["code"] == "unauthenticated"
        status, body = http(edge, "/api/sessions", token=token, body={})
        assert status == 401 and body["code"] == "unauthenticated"


async def test_a_refresh_with_an_expired_or_forged_token_keeps_the_socket_on_its_old_one(edge):
    session = create_session(edge)
    sid, user = session["session_id"], session["user_id"]
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    for token in (
        make_token(user, [sid], expires_in_s=-5),
        make_token(user, [sid], secret="someone-elses-secret-0123456789abcdef"),
    ):
        assert (await client.request({"type": "auth", "token": token}))["code"] == "unauthenticated"
    assert (await client.join(sid))["type"] == "ack"  # still on its good token
    await client.close()


# -- one user reaching for another's sessions --------------------------------------------------


async def test_cross_user_frames_over_the_websocket_are_refused(edge):
    mine, theirs = create_session(edge), create_session(edge)
    other = theirs["session_id"]
    watcher = await EdgeClient.connect(edge.ws_url, token=theirs["token"])
    await watcher.join(other)
    client = await EdgeClient.connect(edge.ws_url, token=mine["token"])
    attempts = [
        {"type": "join", "session_id": other},
        {"type": "join", "session_id": other, "after_seq": 0, "deltas": "final"},
        {"type": "leave", "session_id": other},
        {"type": "chat:message", "session_id": other, "message_id": "m1", "text": "hi"},
        {"type": "chat:cancel", "session_id": other},
        {"type": "tool:cancel", "session_id": other, "call_id": "c1"},
    ]
    for frame in attempts:
        reply = await client.request(frame)
        assert reply["type"] == "error" and reply["code"] in ("forbidden", "not_joined"), reply
    # A token of the other user for a refresh is refused; history over HTTP likewise.
    assert (await client.request({"type": "auth", "token": theirs["token"]}))["code"] == "forbidden"
    status, body = http(edge, f"/api/sessions/{other}/messages", token=mine["token"])
    assert status == 403 and body["code"] == "forbidden"
    # Nothing reached the other user's session.
    assert (await watcher.request({"type": "ping"}))["type"] == "pong"
    assert watcher.events(other) == []
    assert not [f for f in client.frames if f.get("session_id") == other and "seq" in f]
    await client.close()
    await watcher.close()
