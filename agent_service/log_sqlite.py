"""The durable event log in SQLite (`sqlite:///PATH`), the zero-set-up default.

It lives in the conversation store's file, on a connection of its own that one
worker thread owns: a whole batch (the group commit of many sessions' events)
is one hand-off to that thread and one transaction. WAL with synchronous=NORMAL:
a committed batch survives kill -9 of the service (not a power cut mid-write).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from agent_relay.v1 import agent_pb2 as pb
from agent_service.log import Append, SeqConflict

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


class SqliteLog:
    """EventLog on one SQLite file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-log")

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("event log is not open")
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self.db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    async def append(self, batch: Sequence[Append]) -> None:
        rows = [
            (a.session_id, a.expected_seq, [e.SerializeToString() for e in a.events]) for a in batch
        ]
        await self._call(self._append, rows)

    def _append(self, rows: list[tuple[str, int, list[bytes]]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for session_id, expected, bodies in rows:
                head = self._head(session_id)
                if expected != head + 1:
                    raise SeqConflict(
                        f"session {session_id}: expected seq {expected}, head is {head}"
                    )
                db.executemany(
                    "INSERT INTO events (session_id, seq, body) VALUES (?, ?, ?)",
                    [(session_id, expected + i, body) for i, body in enumerate(bodies)],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _head(self, session_id: str) -> int:
        row = self.db.execute(
            "SELECT MAX(seq) FROM events WHERE session_id = ?", (session_id,)
        ).fetchone()
        return int(row[0] or 0)

    async def head(self, session_id: str) -> int:
        return await self._call(self._head, session_id)

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
        return await self._call(self._trim, session_id, keep_after_seq)

    def _trim(self, session_id: str, keep_after_seq: int) -> int:
        cursor = self.db.execute(
            "DELETE FROM events WHERE session_id = ? AND seq <= ?", (session_id, keep_after_seq)
        )
        return cursor.rowcount

    async def ping(self) -> None:
        await self._call(lambda: self.db.execute("SELECT 1").fetchone())
