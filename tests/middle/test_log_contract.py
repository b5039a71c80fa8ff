"""The EventLog contract, run against every backend (memory://, SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.log import Append, EventLog, SeqConflict, open_log
from tests.support.backends import redis_prefix


def event(session_id: str, seq: int, text: str = "w") -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=session_id, seq=seq, response_delta=pb.ResponseDelta(text=text)
    )


def events(session_id: str, first: int, last: int) -> list[pb.SessionEvent]:
    return [event(session_id, seq, f"w{seq}") for seq in range(first, last + 1)]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    if request.param == "redis":
        async with redis_prefix() as (url, prefix):
            opened = open_log(f"{url}?prefix={prefix}")
            await opened.open()
            yield opened
            await opened.close()
        return
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/log.sqlite3"}[request.param]
    opened = open_log(url)
    await opened.open()
    yield opened
    await opened.close()


async def test_a_batch_of_several_sessions_reads_back_in_order(log: EventLog) -> None:
    await log.append([Append("a", events("a", 1, 3)), Append("b", events("b", 1, 2))])
    await log.append([Append("a", events("a", 4, 5))])
    assert await log.head("a") == 5 and await log.head("b") == 2 and await log.head("c") == 0
    assert [e.seq for e in await log.read_after("a", 2, 100)] == [3, 4, 5]
    assert [e.response_delta.text for e in await log.read_after("a", 0, 2)] == ["w1", "w2"]
    assert [e.seq for e in await log.read_tail("a", 2)] == [4, 5]
    assert await log.read_after("a", 5, 10) == []


async def test_an_append_that_does_not_continue_the_log_is_refused_whole(log: EventLog) -> None:
    await log.append([Append("a", events("a", 1, 3))])
    with pytest.raises(SeqConflict):  # b is fine, a skips 4: nothing of the batch is written
        await log.append([Append("b", events("b", 1, 1)), Append("a", events("a", 5, 6))])
    with pytest.raises(SeqConflict):  # a repeat of seq 3
        await log.append([Append("a", events("a", 3, 4))])
    assert await log.head("a") == 3 and await log.head("b") == 0


async def test_trim_drops_only_older_events_and_the_head_stays(log: EventLog) -> None:
    await log.append([Append("a", events("a", 1, 10))])
    assert await log.trim("a", 7) == 7
    assert await log.head("a") == 10
    assert [e.seq for e in await log.read_after("a", 0, 100)] == [8, 9, 10]  # the first is 8
    await log.append([Append("a", events("a", 11, 11))])
    assert [e.seq for e in await log.read_tail("a", 10)] == [8, 9, 10, 11]


async def test_follow_yields_what_is_there_and_then_what_arrives(log: EventLog) -> None:
    await log.append([Append("a", events("a", 1, 2))])
    stream = log.follow("a", 1)
    assert [e.seq for e in await anext(stream)] == [2]
    later = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    assert not later.done()
    await log.append([Append("a", events("a", 3, 4))])
    assert [e.seq for e in await asyncio.wait_for(later, 5)] == [3, 4]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_sqlite_events_outlive_the_connection(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.sqlite3"
    first = open_log(url)
    await first.open()
    await first.append([Append("a", events("a", 1, 4))])
    await first.close()
    second = open_log(url)
    await second.open()
    assert await second.head("a") == 4
    assert [e.response_delta.text for e in await second.read_tail("a", 2)] == ["w3", "w4"]
    await second.close()


async def test_redis_events_outlive_the_connection() -> None:
    async with redis_prefix() as (url, prefix):
        first = open_log(f"{url}?prefix={prefix}")
        await first.open()
        await first.append([Append("a", events("a", 1, 4))])
        await first.close()
        second = open_log(f"{url}?prefix={prefix}")
        await second.open()
        assert await second.head("a") == 4
        assert [e.seq for e in await second.read_after("a", 2, 10)] == [3, 4]
        await second.close()


async def test_redis_follows_more_sessions_than_a_connection_pool_holds() -> None:
    """Each follower parks a connection in XREAD BLOCK; a replica following more sessions
    than redis-py's default pool (100 connections) must still append, read and follow
    (`make bench`'s 200 sessions at once failed with "Too many connections")."""
    async with redis_prefix() as (url, prefix):
        log = open_log(f"{url}?prefix={prefix}")
        await log.open()
        count = 150
        got: dict[str, list[int]] = {f"s{i}": [] for i in range(count)}
        complete = asyncio.Event()

        async def follow(session_id: str) -> None:
            async for batch in log.follow(session_id, 0):
                got[session_id] += [e.seq for e in batch]
                if all(seqs == [1, 2] for seqs in got.values()):
                    complete.set()

        followers = [asyncio.create_task(follow(sid)) for sid in got]
        try:
            await asyncio.sleep(0.5)  # every follower is parked in its blocking read
            assert not [t.exception() for t in followers if t.done()]
            await log.append([Append(sid, events(sid, 1, 2)) for sid in got])
            assert await log.head("s149") == 2
            async with asyncio.timeout(30):
                await complete.wait()
        finally:
            for task in followers:
                task.cancel()
            async with asyncio.timeout(20):  # a follower that ignored its cancel fails here
                await asyncio.gather(*followers, return_exceptions=True)
            await log.close()


def test_the_default_log_is_the_store_file_or_memory() -> None:
    from agent_service.log_memory import MemoryLog
    from agent_service.log_redis import RedisLog
    from agent_service.log_sqlite import SqliteLog

    assert isinstance(open_log("redis://127.0.0.1:6379/0"), RedisLog)
    assert isinstance(open_log("", store_url="sqlite:///var/x.sqlite3"), SqliteLog)
    assert isinstance(open_log("", store_url="sqlite:///:memory:"), MemoryLog)
    with pytest.raises(ValueError, match="unsupported log URL"):
        open_log("kafka://nope")


async def test_redis_answers_more_calls_at_once_than_its_connections() -> None:
    """A replica that loads hundreds of sessions at once makes that many calls at once;
    with redis-py's default pool (100 connections, no waiting) the 101st failed "Too many
    connections" (`make bench`'s 200-session service bench on the Redis log)."""
    async with redis_prefix() as (url, prefix):
        log = open_log(f"{url}?prefix={prefix}")
        await log.open()
        try:
            sessions = [f"s{i}" for i in range(400)]
            await log.append([Append(sid, events(sid, 1, 2)) for sid in sessions])
            tails = await asyncio.gather(*(log.read_tail(sid, 10) for sid in sessions))
            heads = await asyncio.gather(*(log.head(sid) for sid in sessions))
            assert [[e.seq for e in tail] for tail in tails] == [[1, 2]] * len(sessions)
            assert heads == [2] * len(sessions)
        finally:
            await log.close()


async def test_an_sqlite_append_after_another_writer_wrote_the_session_is_refused(
    tmp_path: Path,
) -> None:
    """The heads a log remembers from its own appends do not outlive another writer's
    commit: a replica that lost a session, whose new owner wrote past it and trimmed,
    is still refused rather than fork the log."""
    url = f"sqlite:///{tmp_path}/log.sqlite3"
    stale, owner = open_log(url), open_log(url)
    await stale.open()
    await owner.open()
    try:
        await stale.append([Append("a", events("a", 1, 3))])
        await owner.append([Append("a", events("a", 4, 10))])
        await owner.trim("a", 8)  # seq 4 is free again in the table
        with pytest.raises(SeqConflict):
            await stale.append([Append("a", events("a", 4, 4))])
        await stale.append([Append("b", events("b", 1, 1))])  # its other sessions go on
        assert [e.seq for e in await owner.read_after("a", 0, 100)] == [9, 10]
    finally:
        await stale.close()
        await owner.close()
