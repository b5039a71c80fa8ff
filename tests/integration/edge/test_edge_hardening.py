"""The breaks issue 12 found at the edge, each reproduced against the real edge and agent.

Slow request heads and idle connections are closed by a deadline; a deeply nested frame is
refused like any bad frame; bad query parameters get JSON 400s; an expired token stops
live delivery; anonymous minting is limited per address; a join that claims too much is
refused; and the transport's write buffer counts against the send-queue bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from websockets.exceptions import ConnectionClosed

from agent_relay.v1 import agent_pb2_grpc
from tests.support.chat import ChatClient
from tests.support.edge import EdgeClient, create_session, make_token, start_edge
from tests.support.service import start_agent_service
from tests.support.timing import scaled

# Slow connections held at once in the slowloris test (`make soak`: 2,000).
SLOW_CONNECTIONS = int(os.environ.get("AGENT_RELAY_SLOW_CONNECTIONS", "200"))


def http(
    url: str, path: str, *, token: str | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; status, headers and body, for errors too."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url + path, data=body, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def closed_with(client: EdgeClient) -> int:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10_000):
            await client.recv()
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code


async def healthz_over_raw_tcp(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), scaled(10))
    writer.close()
    return reply


# -- 5: slow request heads and silent connections ---------------------------------------------


# The new settings go in by environment (AGENT_RELAY_*), not flags: an edge without them
# still starts, and the test fails on what it checks rather than on an unknown flag.


@pytest.mark.soak
async def test_slow_request_heads_and_silent_connections_are_closed_healthz_stays_up(
    agent, monkeypatch
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if 2 * SLOW_CONNECTIONS + 100 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    monkeypatch.setenv("AGENT_RELAY_HTTP_REQUEST_TIMEOUT_S", "2")
    edge = start_edge(agent.address)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            held.append(await asyncio.open_connection("127.0.0.1", edge.port))
        trickling = held[: SLOW_CONNECTIONS // 2]  # the other half send nothing at all
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        for _, writer in trickling:
            writer.write(head[:1])
        # While the 200 are held, an honest client is answered.
        assert (await healthz_over_raw_tcp(edge.port)).startswith(b"HTTP/1.1 200")

        async def trickle() -> None:
            for i in range(1, len(head)):  # a byte every 0.5 s: each byte well within 2 s
                await asyncio.sleep(0.5)
                for _, writer in trickling:
                    if not writer.is_closing():
                        writer.write(head[i : i + 1])

        async def closed_by_edge(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(), scaled(20)) == b""
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False

        trickler = asyncio.create_task(trickle())
        results = await asyncio.gather(*(closed_by_edge(reader) for reader, _ in held))
        trickler.cancel()
        still_open = results.count(False)
        assert not still_open, f"{still_open} of {len(held)} open after {scaled(20)} s"
        print(f"\nslowloris: {len(held)} slow connections held, all closed by the edge")
        assert (await healthz_over_raw_tcp(edge.port)).startswith(b"HTTP/1.1 200")
    finally:
        for _, writer in held:
            writer.close()
        edge.stop()
    assert "Traceback" not in edge.text()


async def test_an_idle_keep_alive_connection_is_closed_after_the_deadline(agent, monkeypatch):
    monkeypatch.setenv("AGENT_RELAY_HTTP_REQUEST_TIMEOUT_S", "1")
    edge = start_edge(agent.address)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b'{"status": "ok"}')
        # A kept-alive connection that sends no next request is not kept for ever.
        assert await asyncio.wait_for(reader.read(), scaled(15)) == b""
        writer.close()
    finally:
        edge.stop()


async def test_a_slow_request_body_is_cut_off_with_a_json_error(agent, monkeypatch):
    monkeypatch.setenv("AGENT_RELAY_HTTP_REQUEST_TIMEOUT_S", "1")
    edge = start_edge(agent.address)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(
            b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        reply = await asyncio.wait_for(reader.read(), scaled(15))
        writer.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["code"] == "bad_frame"
    finally:
        edge.stop()


# -- 6: nesting --------------------------------------------------------------------------------


async def test_a_frame_nested_1000_deep_gets_bad_frame_and_a_strike_not_a_drop(agent):
    edge = start_edge(agent.address, "--abuse-strikes", "3")
    try:
        client = await EdgeClient.connect(edge.ws_url)  # before auth
        deep = '{"type": "ping", "x": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"
        for _ in range(2):
            await client.ws.send(deep)
            error = await client.until(lambda f: f["type"] == "error")
            assert error["code"] == "bad_frame" and "nest" in error["message"], error
        assert (await client.request({"type": "ping"}))["type"] == "pong"  # still open
        await client.ws.send("[" * 1000 + "]" * 1000)
        assert await closed_with(client) == 1008  # the third strike
    finally:
        edge.stop()
    assert "Traceback" not in edge.text() and "ERROR" not in edge.text()


# -- 7: query parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "page_size=99999999999",
        "page_size=-1",
        "page_size=abc",
        "page_size=1e3",
        "page_size=1001",
        "page_size=%2B5",
        "page_token=" + "9" * 30,
        "page_token=abc",
        "page_token=-5",
    ],
)
async def test_a_bad_query_parameter_gets_a_json_400_invalid_field(edge, query):
    session = create_session(edge)
    path = f"/api/sessions/{session['session_id']}/messages?{query}"
    status, headers, body = http(edge.url, path, token=session["token"])
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)
    assert error["code"] == "invalid_field" and query.split("=")[0] in error["message"]


async def test_good_query_parameters_still_page_through_history(edge):
    session = create_session(edge)
    sid = session["session_id"]
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.join(sid)
    for text in ("one", "two"):
        ack = await client.say(sid, text)
        await client.until_complete(sid, ack["run_id"])
    await client.close()
    path = f"/api/sessions/{sid}/messages?page_size=1"
    status, _, body = http(edge.url, path, token=session["token"])
    first = json.loads(body)
    assert status == 200 and len(first["messages"]) == 1 and first["next_page_token"]
    path += f"&page_token={first['next_page_token']}"
    status, _, body = http(edge.url, path, token=session["token"])
    assert status == 200 and json.loads(body)["messages"][0]["text"] != first["messages"][0]


async def test_bad_bodies_get_json_errors_never_a_500(edge):
    deep = b'{"title": "x", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, _, body = http(edge.url, "/api/sessions", body=deep)
    assert status == 400 and json.loads(body)["code"] == "bad_frame"
    status, _, body = http(edge.url, "/api/sessions", body=b'{"title": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and json.loads(body)["code"] == "frame_too_large"
    deep = b'{"token": "x", "a": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    status, _, body = http(edge.url, "/api/token", body=deep)
    assert status == 400 and json.loads(body)["code"] == "bad_frame"


# -- 9: expiry enforced on delivery ------------------------------------------------------------


async def test_a_socket_whose_token_expired_is_told_and_gets_no_live_events_until_refresh(edge):
    session = create_session(edge)
    sid, user = session["session_id"], session["user_id"]
    short = make_token(user, [sid], expires_in_s=2)
    expiring = await EdgeClient.connect(edge.ws_url, token=short)
    assert (await expiring.join(sid))["type"] == "ack"
    other = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await other.join(sid)
    exp = jwt_exp(short)
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.2)
    ack = await other.say(sid, "anyone there?")
    done = await other.until_complete(sid, ack["run_id"])
    notice = await expiring.until(lambda f: f["type"] == "error")
    assert notice["code"] == "unauthenticated" and notice["session_id"] == sid, notice
    assert "ref" not in notice
    assert (await expiring.request({"type": "ping"}))["type"] == "pong"  # the socket stays
    assert [f for f in expiring.events(sid) if f["run_id"] == ack["run_id"]] == []
    # After a refresh it joins again and gets exactly what it missed.
    refreshed = await expiring.request({"type": "auth", "token": session["token"]})
    assert refreshed["type"] == "ack"
    assert (await expiring.join(sid, after_seq=expiring.last_seq(sid)))["type"] == "ack"
    again = await expiring.until_complete(sid, ack["run_id"])
    assert again["seq"] == done["seq"]
    await expiring.close()
    await other.close()


def jwt_exp(token: str) -> int:
    import jwt

    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


# -- 10: anonymous minting ---------------------------------------------------------------------


async def test_anonymous_session_creation_is_limited_per_address(agent, monkeypatch):
    monkeypatch.setenv("AGENT_RELAY_ANON_SESSIONS_BURST", "3")
    monkeypatch.setenv("AGENT_RELAY_ANON_SESSIONS_PER_S", "0.01")
    edge = start_edge(agent.address)
    try:
        made = [http(edge.url, "/api/sessions", body=b"{}") for _ in range(3)]
        assert [status for status, _, _ in made] == [201, 201, 201]
        status, headers, body = http(edge.url, "/api/sessions", body=b"{}")
        assert status == 429, body
        error = json.loads(body)
        assert error["code"] == "rate_limited" and error["retryable"] is True
        assert int(headers["Retry-After"]) >= 1 and error["retry_after_ms"] >= 1000
        # A user with a token is not anonymous: it still gets sessions.
        token = json.loads(made[0][2])["token"]
        assert http(edge.url, "/api/sessions", token=token, body=b"{}")[0] == 201
    finally:
        edge.stop()


# -- 12: a join that claims too much -----------------------------------------------------------


async def test_a_join_beyond_the_head_is_out_of_range_even_on_a_followed_session(edge):
    session = create_session(edge)
    sid = session["session_id"]
    follower = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await follower.join(sid)
    ack = await follower.say(sid, "hello")
    done = await follower.until_complete(sid, ack["run_id"])
    claimer = await EdgeClient.connect(edge.ws_url, token=session["token"])
    reply = await claimer.join(sid, after_seq=done["seq"] + 100)
    assert reply["type"] == "error" and reply["code"] == "out_of_range", reply
    assert "after_seq" in reply["message"]
    assert (await claimer.join(sid, after_seq=done["seq"]))["type"] == "ack"
    await follower.close()
    await claimer.close()


# -- 13: the transport's write buffer counts ---------------------------------------------------


async def test_a_stalled_reader_holds_no_more_than_the_flags_allow(tmp_path: Path):
    agent = start_agent_service(
        tmp_path,
        "--demo-tokens-per-s",
        "0",
        "--demo-reply-words",
        "90000",
        "--retention-events",
        "100000",
    )
    write_buffer, queue_bytes, send_buffer = 4096, 16384, 4096
    edge = None
    try:
        edge = start_edge(
            agent.address,
            "--send-queue-max-bytes",
            str(queue_bytes),
            "--socket-send-buffer-bytes",
            str(send_buffer),
            "--socket-write-buffer-bytes",
            str(write_buffer),
        )
        session = create_session(edge)
        sid = session["session_id"]
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", edge.port))
        raw.setblocking(False)
        receive_buffer = raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        slow = await EdgeClient.connect(
            edge.ws_url, token=session["token"], compression=None, sock=raw
        )
        await slow.join(sid)
        slow.ws.transport.pause_reading()
        # the run is driven and watched over gRPC: a WebSocket watcher would be held to the
        # same small bounds, and could itself fall behind a reply at full speed
        async with grpc.aio.insecure_channel(agent.address) as channel:
            driver = ChatClient(agent_pb2_grpc.AgentServiceStub(channel))
            await driver.join(sid)
            await driver.send(sid, "m1", "a very long answer")
            # The reader resumes once the edge has given up on it: the edge then waits a
            # few seconds for it to read the close frame (and drops it after), which a
            # whole 90,000-word run on a loaded machine can outlast.
            deadline = asyncio.get_running_loop().time() + scaled(60)
            while "closing 1013" not in edge.text():
                assert asyncio.get_running_loop().time() < deadline, "the edge never closed it"
                await asyncio.sleep(0.02)
            await driver.close()
        slow.ws.transport.resume_reading()
        received = 0
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(100_000):
                frame = await asyncio.wait_for(slow.ws.recv(), scaled(20))
                if '"chat:' in frame:
                    received += len(frame)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        # Held outside the bounded queue: the transport's buffer (plus the frame being
        # written, at most a queue's worth once coalesced) and the kernel's buffers.
        bound = write_buffer + queue_bytes + 2 * send_buffer + receive_buffer + 8192
        print(f"\nstalled reader: {received} bytes of events reached it before 1013; bound {bound}")
        assert received <= bound, f"{received} bytes reached a stalled reader; bound {bound}"
    finally:
        if edge is not None:
            edge.stop()
        agent.stop()


async def test_the_heartbeat_closes_a_socket_that_never_answers_its_ping(agent):
    """The edge pings a silent socket every --ping-interval-s and closes it (4001) when the
    pong does not come in half that time; a socket whose client answers stays open."""
    import aiohttp

    from agent_relay_client.wire import PROTOCOLS

    edge = start_edge(agent.address, "--ping-interval-s", "0.5")
    try:
        answering = await EdgeClient.connect(edge.ws_url, ping_interval=None)
        async with aiohttp.ClientSession() as session:
            silent = await session.ws_connect(
                edge.ws_url, protocols=[PROTOCOLS["json"]], autoping=False, heartbeat=None
            )
            kinds = []
            while not silent.closed:
                message = await asyncio.wait_for(silent.receive(), scaled(10))
                kinds.append(message.type)
            assert aiohttp.WSMsgType.PING in kinds  # pinged, never answered
            assert silent.close_code == 4001  # heartbeat timeout: reconnect with backoff
        await asyncio.sleep(scaled(1.5))  # three intervals: its pings were answered
        assert (await answering.request({"type": "ping"}))["type"] == "pong"
        await answering.ws.close()
    finally:
        edge.stop()
