"""Session leases on a real Redis, and the fencing the log's append does with them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.lease import LocalLease
from agent_service.lease_redis import RedisLease
from agent_service.log import Append, Fenced, SeqConflict
from agent_service.log_redis import RedisLog
from agent_service.store import SessionRecord
from agent_service.store_sqlite import SqliteStore
from tests.support.backends import redis_prefix


def delta(session_id: str, seq: int) -> pb.SessionEvent:
    return pb.SessionEvent(session_id=session_id, seq=seq, response_delta=pb.ResponseDelta())


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with redis_prefix() as (redis_url, prefix):
        yield f"{redis_url}?prefix={prefix}"


@pytest.fixture(autouse=True)
async def store() -> AsyncIterator[SqliteStore]:
    """Where the leases' fencing tokens come from: sessions s1 and s2 exist."""
    global STORE
    opened = SqliteStore(":memory:")
    await opened.open()
    for session_id in ("s1", "s2"):
        await opened.create_session(SessionRecord(session_id, "u", "", 1))
    STORE = opened
    yield opened
    await opened.close()


STORE: SqliteStore | None = None


async def taken_after_expiry(lease: RedisLease, session_id: str) -> int:
    """Acquire once the current holder's lease has expired (bounded wait)."""
    for _ in range(100):
        token = await lease.acquire(session_id)
        if token is not None:
            return token
        await asyncio.sleep(0.1)
    raise AssertionError("the lease never expired")


async def opened(url: str, replica_id: str, ttl_s: float = 5.0) -> RedisLease:
    assert STORE is not None
    lease = RedisLease(
        url, ttl_s=ttl_s, fences=STORE, replica_id=replica_id, address=f"{replica_id}:1"
    )
    await lease.open()
    return lease


async def test_one_replica_holds_a_session_and_the_others_learn_who(url: str) -> None:
    a, b = await opened(url, "a"), await opened(url, "b")
    try:
        token = await a.acquire("s1")
        assert token is not None and a.held("s1") == token
        assert await b.acquire("s1") is None and b.held("s1") is None
        holder = await b.holder("s1")
        assert holder is not None
        assert (holder.replica_id, holder.address, holder.token) == ("a", "a:1", token)
        assert await a.acquire("s1") == token  # already held: the same token
    finally:
        await a.close()
        await b.close()


async def test_a_clean_close_releases_at_once_and_the_next_token_is_larger(url: str) -> None:
    a, b = await opened(url, "a"), await opened(url, "b")
    first = await a.acquire("s1")
    await a.close()
    try:
        second = await b.acquire("s1")
        assert first is not None and second is not None and second > first
    finally:
        await b.close()


async def test_an_expired_lease_goes_to_another_replica_and_its_holder_is_told(
    url: str,
) -> None:
    a = await opened(url, "a", ttl_s=0.6)
    b = await opened(url, "b", ttl_s=0.6)
    lost: list[str] = []
    a.on_lost(lost.append)
    try:
        first = await a.acquire("s1")
        assert first is not None
        a._renewer.cancel()  # type: ignore[union-attr]  # a is "paused": no renewals
        second = await taken_after_expiry(b, "s1")
        assert a.held("s1") is None  # its own clock says it can no longer be sure
        assert second > first
        await a._renew_all()  # it wakes up: the renewal finds the lease gone
        assert lost == ["s1"] and a.held("s1") is None
    finally:
        await a.close()
        await b.close()
    assert b.held("s1") is None


async def test_the_append_of_a_replica_that_lost_its_lease_is_fenced(url: str) -> None:
    log = RedisLog(url)
    await log.open()
    a = await opened(url, "a", ttl_s=0.5)
    b = await opened(url, "b", ttl_s=0.5)
    try:
        old = await a.acquire("s1")
        assert old is not None
        await log.append([Append("s1", [delta("s1", 1)], old)])
        a._renewer.cancel()  # type: ignore[union-attr]
        new = await taken_after_expiry(b, "s1")
        with pytest.raises(Fenced):  # the old owner, at the right seq, is refused
            await log.append([Append("s1", [delta("s1", 2)], old)])
        with pytest.raises(Fenced):  # and a batch with it is refused whole
            await log.append([Append("s2", [delta("s2", 1)]), Append("s1", [delta("s1", 2)], old)])
        assert await log.head("s2") == 0
        await log.append([Append("s1", [delta("s1", 2)], new)])
        with pytest.raises(SeqConflict):
            await log.append([Append("s1", [delta("s1", 2)], new)])
        assert [e.seq for e in await log.read_after("s1", 0, 10)] == [1, 2]
    finally:
        await a.close()
        await b.close()
        await log.close()


async def test_renewal_puts_back_a_vanished_key_nobody_else_took(url: str) -> None:
    a = await opened(url, "a")
    try:
        token = await a.acquire("s1")
        await a.redis.delete(f"{a.prefix}lease:s1")  # Redis lost it (a restart without AOF)
        await a._renew_all()
        holder = await a.holder("s1")
        assert holder is not None and holder.token == token and a.held("s1") == token
    finally:
        await a.close()


async def test_the_local_lease_owns_everything_without_fencing() -> None:
    lease = LocalLease("solo")
    assert not lease.shared and await lease.acquire("any") == 0 and lease.held("any") == 0


async def test_acquires_at_once_in_one_process_share_one_token(url: str) -> None:
    """The start-up takeover and the takeover loop may ask together: a second token
    would fence the first one's appends."""
    a = await opened(url, "a")
    try:
        tokens = await asyncio.gather(*(a.acquire("s1") for _ in range(5)))
        assert tokens[0] is not None and set(tokens) == {tokens[0]}
        assert a.held("s1") == tokens[0]
    finally:
        await a.close()


async def test_a_lease_held_past_its_trust_is_renewed_with_its_token_not_replaced(
    url: str,
) -> None:
    """Renewals that did not get through (Redis slow or away for a while) leave the lease
    untrusted; the next acquire renews it, or puts it back, with the same token: a new
    one would fence this replica's own appends in flight."""
    a = await opened(url, "a", ttl_s=0.6)
    try:
        token = await a.acquire("s1")
        assert token is not None
        a._renewer.cancel()  # type: ignore[union-attr]
        await asyncio.sleep(0.6)
        assert a.held("s1") is None
        await a.redis.delete(f"{a.prefix}lease:s1")  # and Redis lost the key meanwhile
        assert await a.acquire("s1") == token
        holder = await a.holder("s1")
        assert holder is not None and holder.token == token
    finally:
        await a.close()
