"""The edge in front of several agent replicas: it spreads rooms over them and moves on
its own when one dies. Real processes: two agent services on one PostgreSQL store and one
Redis log, and an edge given both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.backends import postgres_database, redis_prefix
from tests.support.edge import EdgeClient, create_session, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled


@pytest.fixture
async def replicas(tmp_path) -> AsyncIterator[list[ServiceProcess]]:
    async with redis_prefix() as (redis_url, prefix), postgres_database() as store_url:
        shared = ("--store-url", store_url, "--log-url", f"{redis_url}?prefix={prefix}")
        started = [
            start_agent_service(tmp_path / name, "--demo-tokens-per-s", "0", *shared)
            for name in ("a", "b")
        ]
        yield started
        for replica in started:
            replica.stop()


async def test_rooms_spread_over_replicas_and_move_when_one_dies(replicas) -> None:
    a, b = replicas
    edge = start_edge(f"{a.address},{b.address}", "--upstream-backoff-max-s", "0.3")
    try:
        sessions = [create_session(edge) for _ in range(12)]
        clients = []
        for session in sessions:
            client = await EdgeClient.connect(edge.ws_url, token=session["token"])
            await client.join(session["session_id"])
            ack = await client.say(session["session_id"], "hello")
            await client.until_complete(session["session_id"], ack["run_id"])
            clients.append(client)
        # each replica logs the end of every run it ran
        served = {replica.address: replica.text().count('ended: stop"') for replica in (a, b)}
        assert all(count > 0 for count in served.values()), served  # both carry rooms

        a.kill()
        for session, client in zip(sessions, clients, strict=True):
            sid = session["session_id"]
            ack = await asyncio.wait_for(_retry_say(client, sid, "are you there?"), scaled(20))
            done = await client.until_complete(sid, ack["run_id"], timeout_s=30)
            assert done["finish_reason"] == "stop"
            assert not [f for f in client.frames if f["type"] == "chat:gap"]
            assert client.seqs(sid) == list(range(1, done["seq"] + 1)), sid
        for client in clients:
            await client.close()
    finally:
        edge.stop()


async def _retry_say(client: EdgeClient, sid: str, text: str) -> dict:
    while True:
        reply = await client.say(sid, text, message_id=f"again-{sid}")
        if reply["type"] == "ack":
            return reply
        assert reply["code"] == "upstream_unavailable", reply
        await asyncio.sleep(0.1)
