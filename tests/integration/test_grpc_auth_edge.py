"""The edge in front of a service that requires credentials: it authenticates as itself.

Both real processes on 127.0.0.1. The edge presents --upstream-token (scopes
read chat admin: it acts for the users whose browser tokens it checked); a
browser-side client chats through it end to end. An edge without the token
gets nowhere, and says why in its log.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from agent_service.auth import mint_token
from tests.support.edge import EdgeClient, create_session, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

SECRET = "grpc-edge-auth-secret-0123456789abcdef-0123"
FAST = ("--demo-tokens-per-s", "0", "--demo-reply-words", "5", "--metrics-listen", "")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_agent_service(
        tmp_path_factory.mktemp("edge-auth"), *FAST, "--auth-jwt-secret", SECRET
    )
    yield proc
    proc.stop()


def edge_token(scopes: str = "read chat admin") -> str:
    return mint_token(SECRET, subject="edge", scopes=scopes, ttl_s=3600, now=time.time())


def get_json(url: str, bearer: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})
    with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
        return json.loads(reply.read())


async def test_a_browser_chats_through_an_edge_that_holds_a_service_token(
    service: ServiceProcess,
) -> None:
    edge = start_edge(service.address, "--upstream-token", edge_token())
    try:
        created = create_session(edge, title="through the edge")
        client = await EdgeClient.connect(edge.ws_url, token=created["token"])
        try:
            assert (await client.join(created["session_id"]))["type"] == "ack"
            ack = await client.say(created["session_id"], "what is 6 * 7?")
            assert ack["type"] == "ack", ack
            done = await client.until_complete(created["session_id"])
            assert done["finish_reason"] == "stop"
        finally:
            await client.close()
        history = await asyncio.to_thread(
            get_json,
            f"{edge.url}/api/sessions/{created['session_id']}/messages",
            created["token"],
        )
        assert [m["role"] for m in history["messages"]][:1] == ["user"]
    finally:
        edge.stop()


def test_an_edge_without_a_token_is_refused_and_says_why(service: ServiceProcess) -> None:
    edge = start_edge(service.address)
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            create_session(edge)
        body = json.loads(caught.value.read())
        assert body["code"] == "upstream_unavailable", body  # not the browser's fault
        assert "refused the edge's credentials" in body["message"]
        deadline = time.monotonic() + scaled(10)
        while "check --upstream-token" not in edge.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "check --upstream-token" in edge.text()
    finally:
        edge.stop()


def test_an_edge_token_without_admin_cannot_act_for_its_users(
    service: ServiceProcess,
) -> None:
    edge = start_edge(service.address, "--upstream-token", edge_token("read chat"))
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            create_session(edge)  # an anonymous user u_...: not the token's own user
        assert json.loads(caught.value.read())["code"] == "forbidden"
    finally:
        edge.stop()
