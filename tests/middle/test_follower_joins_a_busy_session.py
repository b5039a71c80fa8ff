"""A replica that loads a session another replica owns, on a real Redis, while the owner
is appending: the follower's window reads the log's head and then its tail, and an
append that lands between the two reads must not break the load (the follower would
stream nothing of the session)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_relay.v1 import agent_pb2 as pb
from agent_service.agent import AgentLoop
from agent_service.config import load
from agent_service.hub import Hub
from agent_service.lease_redis import RedisLease
from agent_service.log import Append
from agent_service.log_redis import RedisLog
from agent_service.providers.demo import DemoModel
from agent_service.store import SessionRecord
from agent_service.store_sqlite import SqliteStore
from agent_service.tools.builtins import build_registry
from relay_shared.agent_telemetry import AgentTelemetry
from tests.support.backends import redis_prefix


def delta(seq: int) -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id="s1", seq=seq, response_delta=pb.ResponseDelta(text=f"w{seq}")
    )


class OwnerAppendsAfterEachHeadRead(RedisLog):
    """The follower's log; the owner (replica a, holding the lease with `fence`) appends
    one event each time the follower has just read the head."""

    fence = 0

    async def head(self, session_id: str) -> int:
        head = await super().head(session_id)
        await self.append([Append(session_id, [delta(head + 1)], self.fence)])
        return head


async def test_an_append_between_the_head_and_the_tail_read_is_followed(tmp_path: Path) -> None:
    async with redis_prefix() as (redis_url, prefix):
        url = f"{redis_url}?prefix={prefix}"
        store = SqliteStore(":memory:")
        await store.open()
        await store.create_session(SessionRecord("s1", "u", "", 1))
        log = OwnerAppendsAfterEachHeadRead(url)
        await log.open()
        log.fence = await store.next_fence("s1")
        await log.redis.set(f"{prefix}lease:s1", f"{log.fence} replica-a 127.0.0.1:1")
        await log.append([Append("s1", [delta(seq) for seq in range(1, 6)], log.fence)])
        settings = load(["--workspace-dir", str(tmp_path / "ws")], env={})
        lease = RedisLease(url, ttl_s=5.0, fences=store, replica_id="replica-b", address="x:1")
        await lease.open()
        tools = build_registry(settings)
        body = AgentLoop(settings, store, DemoModel(tokens_per_s=0), tools, AgentTelemetry(None))
        hub = Hub(settings, store, log, tools, body, lease=lease)
        hub.start()
        try:
            session = await hub.session("s1")  # its head read is followed by seq 6
            assert not session.owner
            await log.append([Append("s1", [delta(7)], log.fence)])  # and the owner goes on
            for _ in range(100):
                if session.log.head_seq == 7:
                    break
                await asyncio.sleep(0.05)
            assert [e.seq for e in session.log.retained()] == [1, 2, 3, 4, 5, 6, 7]
            assert [e.response_delta.text for e in session.log.retained()][-2:] == ["w6", "w7"]
        finally:
            await hub.shutdown(1.0)
            await lease.close()
            await log.close()
            await store.close()
