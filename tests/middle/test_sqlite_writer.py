"""The SQLite file's one writer (agent_service/sqlite_writer.py), on a real file.

What the store and the log rely on: the writes queued together are one transaction in
which a failing write is undone alone; a write cancelled before its batch is skipped;
a file another connection locks never blocks the event loop (the batch waits on the
writer's thread and lands once the lock is gone); and a log in the store's file writes
through the store's writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.log import Append, SeqConflict, open_log
from agent_service.log_sqlite import SqliteLog
from agent_service.sqlite_writer import SqliteWriter
from agent_service.store import SessionRecord
from agent_service.store_sqlite import SqliteStore


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    return db


def insert(key: str):  # type: ignore[no-untyped-def]
    return lambda db: db.execute("INSERT INTO t (k) VALUES (?)", (key,)).rowcount


def keys(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT k FROM t ORDER BY k")]


@asynccontextmanager
async def store_and_log(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteLog]]:
    """The service's default: the store on a file, and the event log in that file."""
    store = SqliteStore(f"{tmp_path}/relay.sqlite3")
    await store.open()
    log = open_log("", store_url=f"sqlite:///{tmp_path}/relay.sqlite3", store=store)
    assert isinstance(log, SqliteLog)
    await log.open()
    try:
        yield store, log
    finally:
        await log.close()
        await store.close()


@pytest.fixture
def writer(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = connect(tmp_path / "w.sqlite3")
    thread = ThreadPoolExecutor(max_workers=1)
    yield SqliteWriter(db, thread, inline=True)
    thread.shutdown(wait=True)
    db.close()


async def test_a_failing_write_is_undone_alone(writer: SqliteWriter, tmp_path: Path) -> None:
    first = writer.write(insert("a"))
    taken = writer.write(insert("a"))  # the same key: fails in its savepoint
    other = writer.write(insert("b"))
    assert await first == 1
    with pytest.raises(sqlite3.IntegrityError):
        await taken
    assert await other == 1
    assert keys(tmp_path / "w.sqlite3") == ["a", "b"]


async def test_a_write_cancelled_before_its_batch_is_skipped(
    writer: SqliteWriter, tmp_path: Path
) -> None:
    first = writer.write(insert("first"))  # the writer was idle: its own batch, at once
    cancelled = writer.write(insert("gone"))  # these two wait for the next batch
    kept = writer.write(insert("kept"))
    cancelled.cancel()
    await first
    await kept
    assert keys(tmp_path / "w.sqlite3") == ["first", "kept"]


@pytest.mark.parametrize("rows", [1, 1000])
async def test_a_locked_file_never_blocks_the_loop(
    writer: SqliteWriter, tmp_path: Path, rows: int
) -> None:
    """Another connection holds the write lock until told; the write (small: it would
    commit on the loop; large: on the thread) lands after, and the loop runs meanwhile."""
    path = tmp_path / "w.sqlite3"
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        other = connect(path)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(30)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold)
    holder.start()
    await asyncio.to_thread(locked.wait, 30)
    ran_on: list[str] = []

    def after_the_lock(db: sqlite3.Connection) -> int:
        ran_on.append(threading.current_thread().name)
        return int(insert("after the lock")(db))

    write = writer.write(after_the_lock, weight=rows)
    ticks = 0
    while ticks < 5:  # the loop goes on while the write waits for the lock
        await asyncio.sleep(0.01)
        ticks += 1
    assert not write.done()
    release.set()
    assert await write == 1
    await asyncio.to_thread(holder.join, 30)
    assert keys(path) == ["after the lock"]
    assert ran_on != [threading.current_thread().name]  # waited on the writer's thread


async def test_the_log_in_the_stores_file_shares_its_writer(tmp_path: Path) -> None:
    async with store_and_log(tmp_path) as (store, log):
        assert log.writer is store.writer
        await store.create_session(SessionRecord("s1", "u", "t", 1))
        event = pb.SessionEvent(session_id="s1", seq=1, run_id="r")
        await log.append([Append("s1", [event])])
        with pytest.raises(SeqConflict):  # a log batch is still all or nothing
            await log.append([Append("s1", [event])])
        assert await log.head("s1") == 1
        assert (await store.get_session("s1")) is not None


async def test_store_writes_joined_to_an_append_commit_after_its_events(tmp_path: Path) -> None:
    """Append.then: each store write lands in the append's transaction, after its events;
    one that fails is undone alone and the events still land; a refused append takes its
    store writes with it."""
    seen: list[int] = []

    def title(text: str):  # type: ignore[no-untyped-def]
        def write(db: sqlite3.Connection) -> None:
            # inside the transaction the events before it are already there
            seen.append(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            db.execute("UPDATE sessions SET title = ? WHERE session_id = 's1'", (text,))

        return write

    def failing(db: sqlite3.Connection) -> None:
        db.execute("UPDATE sessions SET title = 'half' WHERE session_id = 's1'")
        raise RuntimeError("a store write that fails")

    async with store_and_log(tmp_path) as (store, log):
        assert log.joins_store_writes
        await store.create_session(SessionRecord("s1", "u", "t", 1))
        events = [pb.SessionEvent(session_id="s1", seq=seq, run_id="r") for seq in (1, 2)]
        await log.append([Append("s1", events, then=[title("joined"), failing])])
        assert seen == [2]
        assert await log.head("s1") == 2
        record = await store.get_session("s1")
        assert record is not None and record.title == "joined"  # not "half"
        with pytest.raises(SeqConflict):
            await log.append([Append("s1", events[:1], then=[title("refused")])])
        record = await store.get_session("s1")
        assert record is not None and record.title == "joined"


async def test_a_log_in_a_file_of_its_own_takes_no_store_writes(tmp_path: Path) -> None:
    log = SqliteLog(f"{tmp_path}/log.sqlite3")
    await log.open()
    try:
        assert not log.joins_store_writes
        event = pb.SessionEvent(session_id="s1", seq=1, run_id="r")
        with pytest.raises(ValueError):
            await log.append([Append("s1", [event], then=[lambda db: None])])
        assert await log.head("s1") == 0
    finally:
        await log.close()


async def test_a_checkpoint_beside_the_writes_holds_none_of_them_up(tmp_path: Path) -> None:
    """With a connection of its own for checkpoints, the writes go on committing on the
    loop while a checkpoint waits for (or runs on) the writer's thread."""
    path = tmp_path / "w.sqlite3"
    db, reads = connect(path), connect(path)
    thread = ThreadPoolExecutor(max_workers=1)
    writer = SqliteWriter(db, thread, inline=True, checkpoint_every=2, checkpoint_db=reads)
    busy, release = threading.Event(), threading.Event()
    thread.submit(lambda: (busy.set(), release.wait(30)))  # a long read holds the thread
    try:
        await asyncio.to_thread(busy.wait, 30)
        for key in "abcdef":  # past checkpoint_every: checkpoints are asked for meanwhile
            assert await asyncio.wait_for(writer.write(insert(key)), 10) == 1
        assert keys(path) == list("abcdef")
    finally:
        release.set()
        thread.shutdown(wait=True)
        db.close()
        reads.close()
