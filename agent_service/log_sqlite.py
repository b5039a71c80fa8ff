"""The durable event log in SQLite (`sqlite:///PATH`), the zero-set-up default.

It lives in the conversation store's file. Reads run on a thread and a connection
of its own; appends and trims go through the file's writer (sqlite_writer.py), the
store's when the server hands it over (`writer`): a whole batch (the group commit
of many sessions' events) is one job of one transaction, beside the store's writes
of that moment, committed on the event loop when it is small and on the writer's
thread when it is large; the store writes an append carries (Append.then, with the
store's writer only) go in the same job, after the events. WAL with
synchronous=NORMAL: a committed batch survives kill -9 of the service (not a power
cut mid-write).

An append continues each session's log or writes nothing (SeqConflict): its first seq
must be the session's head + 1. The head is read from the table (a query per session
per batch, a third of the append's cost at 300 streaming sessions) only when the log
cannot know it: it keeps the heads its own appends wrote (KnownHeads), and trusts them
only while no other connection has committed to the file since (PRAGMA data_version,
read under the batch's write lock) and no transaction of its writer was rolled back.
Another process writing the file (a replica that still thinks it owns a session)
makes the next batch read every head again, so it is refused all the same.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from agent_relay.v1 import agent_pb2 as pb
from agent_service.log import Append, SeqConflict
from agent_service.sqlite_writer import SqliteWriter, in_savepoint

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    body       BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""
FOLLOW_POLL_S = 0.05  # a reader in another process polls; this process wakes its own
TRIM_WEIGHT = 1 << 30  # a trim may delete many rows: the writer runs it on its thread
KNOWN_HEADS_MAX = 65_536  # sessions whose head the log remembers; past it, it starts over
INSERT = "INSERT INTO events (session_id, seq, body) VALUES (?, ?, ?)"


class KnownHeads:
    """The heads this log's appends wrote, per session. Used only inside the writer's
    transactions (one at a time, on the loop or the writer's thread); the log is the
    only one to write its table through that writer's connection (data_version does
    not see the connection's own commits)."""

    def __init__(self) -> None:
        self._heads: dict[str, int] = {}
        self._version = -1  # the file's data_version they hold for
        self._rollbacks = -1  # the writer's rollback count they hold for

    def current(self, db: sqlite3.Connection, rollbacks: int) -> dict[str, int]:
        """The heads still true now (in a transaction that holds the write lock): none
        once another connection committed, or a transaction was rolled back, since."""
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        heads = self._heads
        if version != self._version or rollbacks != self._rollbacks or len(heads) > KNOWN_HEADS_MAX:
            heads.clear()
            self._version, self._rollbacks = version, rollbacks
        return heads

    def forget(self, session_id: str) -> None:
        """The session's rows changed other than by an append (a trim)."""
        self._heads.pop(session_id, None)


class SqliteLog:
    """EventLog on one SQLite file. `writer`: the writer of another owner of the file
    (the store's), opened before this log and closed after it; without one the log
    has its own."""

    def __init__(self, path: str, *, writer: Callable[[], SqliteWriter] | None = None) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-log")
        self._shared_writer = writer
        self._writer: SqliteWriter | None = None
        self._write_db: sqlite3.Connection | None = None
        self._heads = KnownHeads()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)
        if self._shared_writer is not None:
            self._writer = self._shared_writer()
        else:
            self._write_db = await self._call(self._connect)
            self._writer = SqliteWriter(
                self._write_db, self._thread, inline=True, checkpoint_db=self._db
            )

    def _open(self) -> None:
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        db.executescript(SCHEMA)
        self._db = db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @property
    def writer(self) -> SqliteWriter:
        if self._writer is None:
            raise RuntimeError("event log is not open")
        return self._writer

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("event log is not open")
        return self._db

    async def close(self) -> None:
        if self._write_db is not None:
            await self._call(self._write_db.close)
            self._write_db = None
        self._writer = None
        if self._db is not None:
            await self._call(self.db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    @property
    def joins_store_writes(self) -> bool:
        """Whether an append may carry store writes (Append.then): the log writes through
        the store's writer, on the store's file."""
        return self._shared_writer is not None

    async def append(self, batch: Sequence[Append]) -> None:
        rows = [
            (a.session_id, a.expected_seq, [e.SerializeToString() for e in a.events]) for a in batch
        ]
        weight = sum(len(bodies) for _, _, bodies in rows)
        then = [write for a in batch for write in a.then]
        if then and not self.joins_store_writes:
            raise ValueError("this log is not in the store's file: it takes no store writes")

        writer = self.writer

        def append(db: sqlite3.Connection) -> None:
            _append(db, rows, self._heads.current(db, writer.rollbacks))
            for write in then:  # one that fails is undone alone, and the events land
                ok, error = in_savepoint(db, write)
                if not ok:
                    log.warning("a store write joined to the log's commit failed", exc_info=error)

        await writer.write(append, weight + len(then))

    async def head(self, session_id: str) -> int:
        return await self._call(_head, self.db, session_id)

    async def read_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[pb.SessionEvent]:
        rows = await self._call(
            self._rows,
            "SELECT body FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (session_id, after_seq, limit),
        )
        return [pb.SessionEvent.FromString(body) for (body,) in rows]

    async def read_tail(self, session_id: str, count: int) -> list[pb.SessionEvent]:
        rows = await self._call(
            self._rows,
            "SELECT body FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
            (session_id, count),
        )
        return [pb.SessionEvent.FromString(body) for (body,) in reversed(rows)]

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[bytes]]:
        return self.db.execute(sql, params).fetchall()

    async def follow(self, session_id: str, after_seq: int) -> AsyncIterator[list[pb.SessionEvent]]:
        while True:
            events = await self.read_after(session_id, after_seq, 1000)
            if events:
                after_seq = events[-1].seq
                yield events
            else:
                await asyncio.sleep(FOLLOW_POLL_S)

    async def trim(self, session_id: str, keep_after_seq: int) -> int:
        def trim(db: sqlite3.Connection) -> int:
            self._heads.forget(session_id)
            cursor = db.execute(
                "DELETE FROM events WHERE session_id = ? AND seq <= ?", (session_id, keep_after_seq)
            )
            return cursor.rowcount

        # it may delete many rows: never on the event loop
        return int(await self.writer.write(trim, weight=TRIM_WEIGHT))

    async def ping(self) -> None:
        await self._call(lambda: self.db.execute("SELECT 1").fetchone())


def _append(
    db: sqlite3.Connection, rows: list[tuple[str, int, list[bytes]]], known: dict[str, int]
) -> None:
    """In the writer's transaction: each session's events continue its log, or none is
    written (SeqConflict). `known`: heads known to be true (KnownHeads.current), updated
    with what this batch writes once it is written."""
    heads: dict[str, int] = {}
    for session_id, expected, bodies in rows:
        head = heads.get(session_id)
        if head is None:
            head = known.get(session_id)
            if head is None:
                head = _head(db, session_id)
        if expected != head + 1:
            raise SeqConflict(f"session {session_id}: expected seq {expected}, head is {head}")
        heads[session_id] = expected + len(bodies) - 1
    db.executemany(
        INSERT,
        [
            (session_id, expected + i, body)
            for session_id, expected, bodies in rows
            for i, body in enumerate(bodies)
        ],
    )
    known.update(heads)


def _head(db: sqlite3.Connection, session_id: str) -> int:
    row = db.execute("SELECT MAX(seq) FROM events WHERE session_id = ?", (session_id,)).fetchone()
    return int(row[0] or 0)
