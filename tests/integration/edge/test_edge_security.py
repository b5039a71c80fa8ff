"""Tokens, sessions and origins: what the edge refuses, and how."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.edge import EdgeClient, create_session, make_token, start_edge


async def closed_with(client: EdgeClient) -> int:
    """Read until the edge closes; the close code."""
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(50):
            await client.recv()
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code


@pytest.mark.parametrize(
    ("kind", "token", "reason"),
    [
        ("expired", lambda s: make_token("u_x", [s], expires_in_s=-5), "expired"),
        (
            "forged",
            lambda s: make_token("u_x", [s], secret="not-the-edge-secret-" * 3),
            "signature",
        ),
        ("alg none", lambda s: make_token("u_x", [s], algorithm="none"), "'none'"),
        ("garbage", lambda s: "not.a.token", "token"),
    ],
)
async def test_each_kind_of_bad_token_is_refused_then_closed_4501(edge, kind, token, reason):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url)
    reply = await client.request({"type": "auth", "token": token(session["session_id"])})
    assert reply["type"] == "error" and reply["code"] == "unauthenticated"
    assert reason in reply["message"], reply
    assert await closed_with(client) == 4501


async def test_frames_before_auth_are_refused_and_the_socket_stays(edge):
    client = await EdgeClient.connect(edge.ws_url)
    reply = await client.request({"type": "join", "session_id": "s_any"})
    assert reply["code"] == "unauthenticated"
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    await client.close()


async def test_a_join_of_another_users_session_is_refused(edge):
    mine = create_session(edge)
    theirs = create_session(edge)
    assert mine["user_id"] != theirs["user_id"]
    client = await EdgeClient.connect(edge.ws_url, token=mine["token"])
    refused = await client.join(theirs["session_id"])
    assert refused["type"] == "error" and refused["code"] == "forbidden"
    assert (await client.join(mine["session_id"]))["type"] == "ack"
    message = await client.say(theirs["session_id"], "sneak in")
    assert message["code"] in ("forbidden", "not_joined")
    await client.close()


async def test_a_refreshed_token_is_taken_in_band_without_dropping_the_socket(edge):
    first = create_session(edge)
    second = create_session(edge, token=first["token"])
    client = await EdgeClient.connect(edge.ws_url, token=first["token"])
    assert (await client.join(second["session_id"]))["code"] == "forbidden"
    refreshed = await client.request({"type": "auth", "token": second["token"]})
    assert refreshed["type"] == "ack" and refreshed["user_id"] == first["user_id"]
    assert (await client.join(second["session_id"]))["type"] == "ack"
    bad = await client.request({"type": "auth", "token": "bad.token.here"})
    assert bad["code"] == "unauthenticated"
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # still open
    other_user = create_session(edge)
    swap = await client.request({"type": "auth", "token": other_user["token"]})
    assert swap["code"] == "forbidden"
    await client.close()


async def test_a_foreign_origin_is_refused_at_the_handshake(edge):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(
            edge.ws_url, subprotocols=["agent-relay.v1"], origin="https://evil.example"
        )
    assert info.value.response.status_code == 403
    same_origin = await EdgeClient.connect(edge.ws_url, origin=edge.url)
    await same_origin.close()


async def test_an_allowed_origin_is_accepted(agent):
    edge = start_edge(agent.address, "--allowed-origins", "http://localhost:5173")
    try:
        client = await EdgeClient.connect(edge.ws_url, origin="http://localhost:5173")
        assert client.welcome["type"] == "welcome"
        await client.close()
        with pytest.raises(InvalidStatus):
            await websockets.connect(
                edge.ws_url, subprotocols=["agent-relay.v1"], origin="http://localhost:5174"
            )
    finally:
        edge.stop()


async def test_a_client_without_the_subprotocol_is_refused_naming_the_versions(edge):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(edge.ws_url)
    assert info.value.response.status_code == 400
    assert b"agent-relay.v1" in info.value.response.body


async def test_auth_timeout_and_connections_per_user_close_with_4500_range_codes(agent):
    edge = start_edge(agent.address, "--auth-timeout-s", "0.3", "--max-connections-per-user", "2")
    try:
        silent = await EdgeClient.connect(edge.ws_url)
        assert await closed_with(silent) == 4503
        session = create_session(edge)
        first = await EdgeClient.connect(edge.ws_url, token=session["token"])
        second = await EdgeClient.connect(edge.ws_url, token=session["token"])
        third = await EdgeClient.connect(edge.ws_url)
        await third.send({"type": "auth", "token": session["token"]})
        assert await closed_with(third) == 4509
        await first.close()
        await second.close()
    finally:
        edge.stop()


async def test_a_socket_joined_to_nothing_and_silent_is_closed_4000_a_joined_one_is_not(agent):
    edge = start_edge(agent.address, "--idle-timeout-s", "0.4")
    try:
        session = create_session(edge)
        idle = await EdgeClient.connect(edge.ws_url, token=session["token"])
        watching = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await watching.join(session["session_id"])
        assert await closed_with(idle) == 4000
        await asyncio.sleep(0.6)  # past the idle timeout, silent but joined
        assert (await watching.request({"type": "ping"}))["type"] == "pong"
        await watching.close()
    finally:
        edge.stop()
