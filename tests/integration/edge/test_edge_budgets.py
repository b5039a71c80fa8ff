"""Frame validation and budgets: a bad frame gets an error naming it and the socket stays."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.edge import EdgeClient, create_session, start_edge


async def closed_with(client: EdgeClient) -> int:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(200):
            await client.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code


async def still_open(client: EdgeClient) -> bool:
    return (await client.request({"type": "ping"}))["type"] == "pong"


async def test_malformed_frames_get_errors_naming_the_problem_and_the_socket_stays(edge):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.ws.send("this is not json")
    assert (await client.until(lambda f: f["type"] == "error"))["code"] == "bad_frame"
    await client.send({"type": "teleport", "id": "x1"})
    error = await client.until(lambda f: f.get("ref") == "x1")
    assert error["code"] == "bad_frame" and "join" in error["message"]
    await client.send(
        {"type": "join", "id": "x2", "session_id": session["session_id"], "after_seq": "yesterday"}
    )
    error = await client.until(lambda f: f.get("ref") == "x2")
    assert error["code"] == "invalid_field" and "after_seq" in error["message"]
    await client.ws.send(b'{"type": "ping"}')
    assert (await client.until(lambda f: f["type"] == "error"))["code"] == "bad_frame"
    assert await still_open(client)
    await client.close()


async def test_an_oversized_frame_is_refused_and_a_huge_one_closes_1009(edge):
    client = await EdgeClient.connect(edge.ws_url)
    limit = client.welcome["max_frame_bytes"]
    await client.ws.send('{"type": "ping", "id": "big", "pad": "' + "x" * limit + '"}')
    error = await client.until(lambda f: f["type"] == "error")
    assert error["code"] == "frame_too_large" and error["ref"] == "big"
    assert await still_open(client)
    await client.ws.send("x" * (2 * 1024 * 1024))
    assert await closed_with(client) == 1009


async def test_frame_budgets_say_when_to_retry_and_are_shared_by_a_users_sockets(agent):
    # A connection may send 4 frames at once, refilling at 5/s; its user 5 frames after
    # auth across all sockets, refilling at one per 5 s.
    edge = start_edge(
        agent.address,
        "--conn-frames-per-s",
        "5",
        "--conn-frames-burst",
        "4",
        "--user-frames-per-s",
        "0.2",
        "--user-frames-burst",
        "5",
    )
    try:
        session = create_session(edge)
        first = await EdgeClient.connect(edge.ws_url, token=session["token"])  # auth: 1 frame
        replies = [await first.request({"type": "ping"}) for _ in range(4)]
        assert [r["type"] for r in replies[:3]] == ["pong", "pong", "pong"]
        limited = replies[3]  # the connection's budget
        assert limited["code"] == "rate_limited" and limited["retryable"] is True
        assert 0 < limited["retry_after_ms"] <= 1000
        await asyncio.sleep(limited["retry_after_ms"] / 1000 + 0.05)
        assert (await first.request({"type": "ping"}))["type"] == "pong"  # the user's 4th
        second = await EdgeClient.connect(edge.ws_url, token=session["token"])
        assert (await second.request({"type": "ping"}))["type"] == "pong"  # the user's 5th
        shared = await second.request({"type": "ping"})  # this socket has 2 frames left
        assert shared["code"] == "rate_limited" and shared["retry_after_ms"] > 1000
        await first.close()
        await second.close()
    finally:
        edge.stop()


async def test_repeated_abuse_closes_1008(agent):
    edge = start_edge(agent.address, "--abuse-strikes", "5")
    try:
        client = await EdgeClient.connect(edge.ws_url)
        for _ in range(5):
            await client.ws.send("{broken")
        assert await closed_with(client) == 1008
        assert sum(1 for f in client.frames if f.get("code") == "bad_frame") >= 4
    finally:
        edge.stop()


async def test_concurrent_runs_per_user_are_limited(agent):
    edge = start_edge(agent.address, "--max-runs-per-user", "1")
    try:
        first = create_session(edge)
        second = create_session(edge, token=first["token"])
        client = await EdgeClient.connect(edge.ws_url, token=second["token"])
        await client.join(first["session_id"])
        await client.join(second["session_id"])
        started = await client.say(first["session_id"], "a long answer please")
        refused = await client.say(second["session_id"], "and another at once")
        assert started["type"] == "ack"
        assert refused["code"] == "rate_limited" and refused["retry_after_ms"] > 0
        await client.until_complete(first["session_id"], started["run_id"])
        await asyncio.sleep(0.05)
        assert (await client.say(second["session_id"], "now it fits"))["type"] == "ack"
        await client.close()
    finally:
        edge.stop()
