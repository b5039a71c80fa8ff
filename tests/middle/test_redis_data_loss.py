"""A Redis that loses its data (a restart without persistence), on a real Redis: the
owner puts its lease back with the same token, its writer writes the lost events again
at their seqs, and a replica that took the session over meanwhile is never undone.

The loss is every key of the test's prefix deleted at once, which is what such a
restart leaves of this service's keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.errors import Unavailable
from agent_service.eventlog import SessionLog
from agent_service.lease_redis import RedisLease
from agent_service.log import Append, Fenced, LeaseMissing, LogBehind
from agent_service.log_redis import RedisLog
from agent_service.log_writer import RESERVE_AHEAD, LogWriter
from agent_service.session import Session
from agent_service.store import SessionRecord
from agent_service.store_sqlite import SqliteStore
from tests.support.backends import redis_prefix


@dataclass
class Backends:
    url: str
    log: RedisLog
    store: SqliteStore

    async def lose_everything(self) -> None:
        keys = [k async for k in self.log.redis.scan_iter(match=f"{self.log.prefix}*")]
        if keys:
            await self.log.redis.delete(*keys)

    async def lease(self, replica_id: str, ttl_s: float = 5.0) -> RedisLease:
        lease = RedisLease(
            self.url, ttl_s=ttl_s, fences=self.store, replica_id=replica_id, address="x:1"
        )
        await lease.open()
        return lease


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    async with redis_prefix() as (redis_url, prefix):
        url = f"{redis_url}?prefix={prefix}"
        log = RedisLog(url)
        await log.open()
        store = SqliteStore(":memory:")
        await store.open()
        await store.create_session(SessionRecord("s1", "u", "", 1))
        try:
            yield Backends(url, log, store)
        finally:
            await store.close()
            await log.close()


def delta(text: str) -> pb.SessionEvent:
    return pb.SessionEvent(response_delta=pb.ResponseDelta(text=text))


def owner_session(writer: LogWriter, fence: int, capacity: int = 100) -> Session:
    return Session(
        SessionRecord("s1", "u", "", 1), SessionLog("s1", capacity=capacity), writer, fence=fence
    )


async def test_the_owner_puts_its_lease_back_and_writes_the_lost_events_again(
    backends: Backends,
) -> None:
    lease = await backends.lease("a")
    writer = LogWriter(backends.log, retention_events=100, reserve=backends.store.reserve_seq)
    writer.start()
    try:
        token = await lease.acquire("s1")
        assert token is not None
        session = owner_session(writer, token)
        for word in "one two three".split():
            session.append(delta(word))
        await session.durable(3)
        await backends.lose_everything()
        assert await backends.log.head("s1") == 0
        session.append(delta("four"))  # the lease key is gone: it waits, it is not refused
        await asyncio.sleep(0.3)
        assert not session.fenced and session.log.head_seq == 3
        await lease._renew_all()  # the store's newest token is still ours: put back
        assert (await lease.holder("s1")) is not None and lease.held("s1") == token
        await asyncio.wait_for(session.durable(4), 10)
        events = await backends.log.read_after("s1", 0, 100)
        assert [(e.seq, e.response_delta.text) for e in events] == [
            (1, "one"),
            (2, "two"),
            (3, "three"),
            (4, "four"),
        ]
        assert not session.fenced
    finally:
        await writer.stop()
        await lease.close()


async def test_what_the_window_no_longer_holds_is_a_gap_never_a_renumbering(
    backends: Backends,
) -> None:
    token = await backends.store.next_fence("s1")
    await backends.log.redis.set(f"{backends.log.prefix}lease:s1", f"{token} a x:1")
    events = [pb.SessionEvent(session_id="s1", seq=seq) for seq in range(1, 6)]
    await backends.log.append([Append("s1", events, token)])
    await backends.log.redis.delete(f"{backends.log.prefix}log:s1", f"{backends.log.prefix}head:s1")
    six = pb.SessionEvent(session_id="s1", seq=6)
    with pytest.raises(LogBehind) as behind:
        await backends.log.append([Append("s1", [six], token)])
    assert behind.value.head == 0
    with pytest.raises(LogBehind):  # a re-seed needs a fence
        await backends.log.append([Append("s1", [six], 0, reseed=True)])
    kept = [pb.SessionEvent(session_id="s1", seq=seq) for seq in (4, 5)]
    await backends.log.append([Append("s1", [*kept, six], token, reseed=True)])
    assert [e.seq for e in await backends.log.read_after("s1", 0, 10)] == [4, 5, 6]
    assert await backends.log.head("s1") == 6


async def test_a_lease_taken_after_the_loss_is_never_undone_by_the_old_owner(
    backends: Backends,
) -> None:
    old = await backends.lease("a")
    new = await backends.lease("b")
    lost: list[str] = []
    old.on_lost(lost.append)
    try:
        first = await old.acquire("s1")
        assert first is not None
        await backends.log.append([Append("s1", [pb.SessionEvent(session_id="s1", seq=1)], first)])
        await backends.lose_everything()
        with pytest.raises(LeaseMissing):  # no lease at all: not final, not written either
            await backends.log.append(
                [Append("s1", [pb.SessionEvent(session_id="s1", seq=2)], first)]
            )
        new._settles_at = 0.0  # b takes it once it may (the settling is tested below)
        second = await new.acquire("s1")
        assert second is not None and second > first  # the store's counter, not Redis's
        await backends.lose_everything()  # and Redis loses that too
        await old._renew_all()  # the store knows of a newer token: the old one is lost
        assert lost == ["s1"] and old.held("s1") is None
        assert await old.holder("s1") is None
        with pytest.raises(Fenced):
            await backends.log.redis.set(f"{backends.log.prefix}lease:s1", f"{second} b x:1")
            await backends.log.append(
                [Append("s1", [pb.SessionEvent(session_id="s1", seq=1)], first)]
            )
    finally:
        await old.close()
        await new.close()


async def test_after_a_loss_nobody_takes_a_missing_lease_for_a_ttl(backends: Backends) -> None:
    lease = await backends.lease("b", ttl_s=0.6)
    try:
        assert lease.settled
        await backends.lose_everything()
        await lease._renew_all()  # it sees the loss
        assert not lease.settled
        with pytest.raises(Unavailable):
            await lease.acquire("s1")
        for _ in range(100):
            if lease.settled:
                break
            await asyncio.sleep(0.05)
        assert await lease.acquire("s1") is not None
    finally:
        await lease.close()


async def test_seqs_are_reserved_in_the_store_before_they_are_appended(
    backends: Backends,
) -> None:
    lease = await backends.lease("a")
    writer = LogWriter(backends.log, retention_events=100, reserve=backends.store.reserve_seq)
    writer.start()
    try:
        token = await lease.acquire("s1")
        assert token is not None
        session = owner_session(writer, token)
        session.append(delta("x"))
        await session.durable(1)
        record = await backends.store.get_session("s1")
        assert record is not None and record.seq_reserved == 1 + RESERVE_AHEAD
    finally:
        await writer.stop()
        await lease.close()


async def test_a_store_that_cannot_reserve_holds_back_only_the_sessions_that_need_it(
    backends: Backends,
) -> None:
    """The store down (PostgreSQL cut) while one session needs its next block of seqs:
    that session's events wait, the others' are written, and the held ones follow once
    the store answers."""
    await backends.store.create_session(SessionRecord("s2", "u", "", 1))
    down = asyncio.Event()

    async def reserve(items):  # type: ignore[no-untyped-def]
        if down.is_set():
            raise ConnectionError("the store does not answer")
        await backends.store.reserve_seq(items)

    writer = LogWriter(backends.log, retention_events=100, reserve=reserve)
    writer.start()
    try:
        reserved = owner_session(writer, 0)
        reserved.seq_reserved = 10 * RESERVE_AHEAD  # far from its end
        fresh = Session(SessionRecord("s2", "u", "", 1), SessionLog("s2", capacity=100), writer)
        down.set()
        fresh.append(delta("waits"))
        reserved.append(delta("goes"))
        await asyncio.wait_for(reserved.durable(1), 10)
        await asyncio.sleep(0.2)
        assert fresh.log.head_seq == 0 and await backends.log.head("s2") == 0
        down.clear()
        await asyncio.wait_for(fresh.durable(1), 10)
        record = await backends.store.get_session("s2")
        assert record is not None and record.seq_reserved == 1 + RESERVE_AHEAD
    finally:
        await writer.stop()
