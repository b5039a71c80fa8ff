"""The embedded conversation store: one SQLite file (WAL), zero set-up.

Reads: one connection owned by the store's thread, each read one function handed
to it once (aiosqlite's hand-off per statement, each a wake-up of the worker and
then of the event loop, was the largest cost of a message's round trip). Writes:
the file's SqliteWriter (sqlite_writer.py), shared with the event log on the same
file: the writes queued together are one transaction, each in a savepoint of its
own, a small batch committed on the event loop (cheaper than a hand-off) and a
large one on the thread, so many sessions' messages at once cost one commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

from agent_service.sqlite_writer import SqliteWriter
from agent_service.store import (
    MESSAGE_COLUMNS,
    DuplicateMessage,
    MessageRecord,
    RunRecord,
    SessionRecord,
    message_from_row,
    message_values,
    run_from_row,
    session_from_row,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    title        TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    seq_reserved INTEGER NOT NULL DEFAULT 0,
    fence        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, created_ms);
CREATE TABLE IF NOT EXISTS runs (
    run_order       INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL UNIQUE,
    session_id      TEXT NOT NULL REFERENCES sessions (session_id),
    user_message_id TEXT NOT NULL,
    status          TEXT NOT NULL,
    finish_reason   TEXT NOT NULL DEFAULT '',
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    started_ms      INTEGER NOT NULL DEFAULT 0,
    ended_ms        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE TABLE IF NOT EXISTS messages (
    position        INTEGER PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES sessions (session_id),
    message_id      TEXT NOT NULL,
    role            TEXT NOT NULL,
    text            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    tool_calls_json TEXT NOT NULL DEFAULT '[]',
    call_id         TEXT NOT NULL DEFAULT '',
    accept_seq      INTEGER NOT NULL DEFAULT 0,
    duration_ms     REAL NOT NULL DEFAULT 0,
    UNIQUE (session_id, message_id)
);
DROP INDEX IF EXISTS messages_by_run;
"""
# Every page a commit changes is one more WAL frame of 4 KiB written (two pwrite calls),
# which made most of a commit's cost at a message's round trip (py-spy). So:
# - no messages_by_run: no query here reads messages by run alone (history and context
#   find a session's messages by their UNIQUE index, then each one's run); it was a
#   frame per message stored, two for a 1-word reply. A file an older version wrote
#   loses it at open.
# - no AUTOINCREMENT: rows are never deleted, so a new row's key is the largest one
#   plus one, the same order, without the sqlite_sequence row AUTOINCREMENT updates, a
#   frame per transaction that inserts. A file an older version wrote keeps it.

# History and model context: runs in the order they were accepted, and within a
# run its user message first, then what the run wrote, in order.
ORDERED_MESSAGES = """
SELECT m.* FROM messages m JOIN runs r ON r.run_id = m.run_id
WHERE m.session_id = ? {extra}
ORDER BY r.run_order, CASE m.role WHEN 'user' THEN 0 ELSE 1 END, m.position
"""


INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
UPSERT_MESSAGE = INSERT_MESSAGE + (
    " ON CONFLICT (session_id, message_id) DO UPDATE SET text = excluded.text, "
    "status = excluded.status, tool_calls_json = excluded.tool_calls_json, "
    "duration_ms = excluded.duration_ms"
)
INSERT_NEW_MESSAGE = INSERT_MESSAGE + " ON CONFLICT (session_id, message_id) DO NOTHING"


class SqliteStore:
    """ConversationStore on one SQLite file. `path` may be ':memory:'.

    Reads run on the store's thread, on a connection of their own; writes go through
    the file's SqliteWriter (sqlite_writer.py), on a second connection that the event
    log on the same file shares (`writer`): the writes queued in one turn of the loop
    are one transaction, each in a savepoint of its own, small batches committed on
    the loop and large ones on the thread. Writes are `BEGIN IMMEDIATE` transactions.
    A read is one statement fetched whole. An operation whose batch began runs to its
    end even when its caller is cancelled: it is committed or rolled back whole, never
    left open; a write whose caller was cancelled before its batch began is skipped.
    In memory there is one connection, and every operation runs on the thread."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._write_db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._writer: SqliteWriter | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @property
    def path(self) -> str:
        return self._path

    @property
    def writer(self) -> SqliteWriter:
        """The writer of the store's file (an event log on the same file shares it)."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(*args) on the store's thread (one hand-off)."""
        if self._thread is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn in one write transaction, on the store's thread (at open)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def _writing(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn in a write transaction with the writes queued beside it (group commit)."""
        return cast(T, await self.writer.write(fn))

    async def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return await self._call(lambda: self.db.execute(sql, params).fetchall())

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        await self._call(self._open)

    def _open(self) -> None:
        in_memory = self._path == ":memory:"
        if not in_memory:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        self._db = db
        self._write(self._create_schema)
        assert self._thread is not None
        writes = db if in_memory else self._connect()
        self._write_db = writes
        self._writer = SqliteWriter(
            writes, self._thread, inline=not in_memory, checkpoint_db=None if in_memory else db
        )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=10000")  # another process may hold the file's lock
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @staticmethod
    def _create_schema(db: sqlite3.Connection) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        # a file an older version wrote gets the columns added since
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if "duration_ms" not in columns:
            db.execute("ALTER TABLE messages ADD COLUMN duration_ms REAL NOT NULL DEFAULT 0")
        columns = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
        if "fence" not in columns:
            db.execute("ALTER TABLE sessions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0")

    async def ping(self) -> None:
        await self._rows("SELECT 1")

    async def next_fence(self, session_id: str) -> int:
        def bump(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "UPDATE sessions SET fence = fence + 1 WHERE session_id = ? RETURNING fence",
                (session_id,),
            ).fetchall()
            return int(rows[0][0]) if rows else 0

        return await self._writing(bump)

    async def fences(self, session_ids: Sequence[str]) -> dict[str, int]:
        ids = list(session_ids)

        def read() -> dict[str, int]:
            found: dict[str, int] = {}
            for start in range(0, len(ids), 500):  # SQLite bounds the parameters of a statement
                chunk = ids[start : start + 500]
                rows = self.db.execute(
                    "SELECT session_id, fence FROM sessions WHERE session_id IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update({row[0]: int(row[1]) for row in rows})
            return found

        return await self._call(read)

    async def reserve_seq(self, reservations: Sequence[tuple[str, int]]) -> None:
        values = [(upto, session_id) for session_id, upto in reservations]
        await self._writing(
            lambda db: db.executemany(
                "UPDATE sessions SET seq_reserved = MAX(seq_reserved, ?) WHERE session_id = ?",
                values,
            )
        )

    async def runs_in_flight(self, session_id: str | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs WHERE status IN ('queued', 'running')"
        if session_id is None:
            rows = await self._rows(query + " ORDER BY run_order")
        else:
            rows = await self._rows(query + " AND session_id = ? ORDER BY run_order", (session_id,))
        return [run_from_row(row) for row in rows]

    async def close(self) -> None:
        if self._db is not None:
            writes = self._write_db
            if writes is not None and writes is not self._db:
                await self._call(writes.close)
            await self._call(self._db.close)
            self._db = self._write_db = self._writer = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    async def create_session(self, record: SessionRecord) -> None:
        values = (
            record.session_id,
            record.user_id,
            record.title,
            record.created_ms,
            record.seq_reserved,
        )
        await self._writing(
            lambda db: db.execute(
                "INSERT INTO sessions (session_id, user_id, title, created_ms, seq_reserved) "
                "VALUES (?, ?, ?, ?, ?)",
                values,
            )
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._rows("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return session_from_row(rows[0]) if rows else None

    async def list_sessions(
        self, user_id: str, limit: int, before_ms: int | None
    ) -> list[SessionRecord]:
        query = "SELECT * FROM sessions WHERE (? = '' OR user_id = ?) AND created_ms < ? "
        query += "ORDER BY created_ms DESC, session_id DESC LIMIT ?"
        before = before_ms if before_ms is not None else 2**62
        rows = await self._rows(query, (user_id, user_id, before, limit))
        return [session_from_row(row) for row in rows]

    async def accept_user_message(
        self, message: MessageRecord, run: RunRecord, *, title: str
    ) -> None:
        def accept(db: sqlite3.Connection) -> None:
            if db.execute(INSERT_NEW_MESSAGE, message_values(message)).rowcount == 0:
                raise DuplicateMessage(f"{message.session_id}/{message.message_id}")
            db.execute(
                "INSERT INTO runs (run_id, session_id, user_message_id, status, started_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (run.run_id, run.session_id, run.user_message_id, run.status, run.started_ms),
            )
            db.execute(
                "UPDATE sessions SET title = ? WHERE session_id = ? AND title != ?",
                (title, message.session_id, title),
            )

        await self._writing(accept)

    async def find_user_message(self, session_id: str, message_id: str) -> MessageRecord | None:
        rows = await self._rows(
            "SELECT * FROM messages WHERE session_id = ? AND message_id = ? AND role = 'user'",
            (session_id, message_id),
        )
        return message_from_row(rows[0]) if rows else None

    async def note_accept_seq(self, session_id: str, message_id: str, seq: int) -> None:
        await self._writing(
            lambda db: db.execute(
                "UPDATE messages SET accept_seq = ? WHERE session_id = ? AND message_id = ?",
                (seq, session_id, message_id),
            )
        )

    async def upsert_message(self, message: MessageRecord) -> None:
        values = message_values(message)
        await self._writing(lambda db: db.execute(UPSERT_MESSAGE, values))

    async def update_run(self, run: RunRecord, *, user_message_status: str = "") -> None:
        await self._writing(self.run_update_write(run, user_message_status=user_message_status))

    @staticmethod
    def run_update_write(
        run: RunRecord, *, user_message_status: str = ""
    ) -> Callable[[sqlite3.Connection], None]:
        """update_run as a write on this file's connection, for a transaction of the
        file's writer (the event log's commit: log.Append.then)."""

        def update(db: sqlite3.Connection) -> None:
            if user_message_status:
                db.execute(
                    "UPDATE messages SET status = ? WHERE session_id = ? AND message_id = ? "
                    "AND role = 'user'",
                    (user_message_status, run.session_id, run.user_message_id),
                )
            db.execute(
                "UPDATE runs SET status = ?, finish_reason = ?, input_tokens = ?, "
                "output_tokens = ?, started_ms = ?, ended_ms = ? WHERE run_id = ?",
                (
                    run.status,
                    run.finish_reason,
                    run.input_tokens,
                    run.output_tokens,
                    run.started_ms,
                    run.ended_ms,
                    run.run_id,
                ),
            )

        return update

    async def list_messages(
        self, session_id: str, limit: int, after_position: int
    ) -> list[MessageRecord]:
        query = ORDERED_MESSAGES.format(extra="") + " LIMIT ? OFFSET ?"
        rows = await self._rows(query, (session_id, limit, after_position))
        return [message_from_row(row) for row in rows]

    async def context_for_run(self, session_id: str, run_id: str) -> Sequence[MessageRecord]:
        extra = "AND r.run_order <= (SELECT run_order FROM runs WHERE run_id = ?)"
        rows = await self._rows(ORDERED_MESSAGES.format(extra=extra), (session_id, run_id))
        return [message_from_row(row) for row in rows]
