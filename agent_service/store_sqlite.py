"""The embedded conversation store: one SQLite file (WAL), zero set-up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from agent_service.store import (
    MESSAGE_COLUMNS,
    MessageRecord,
    RunRecord,
    SessionRecord,
    message_from_row,
    message_values,
    run_from_row,
    session_from_row,
)

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
    run_order       INTEGER PRIMARY KEY AUTOINCREMENT,
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
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE INDEX IF NOT EXISTS messages_by_run ON messages (run_id);
"""

# History and model context: runs in the order they were accepted, and within a
# run its user message first, then what the run wrote, in order.
ORDERED_MESSAGES = """
SELECT m.* FROM messages m JOIN runs r ON r.run_id = m.run_id
WHERE m.session_id = ? {extra}
ORDER BY r.run_order, CASE m.role WHEN 'user' THEN 0 ELSE 1 END, m.position
"""


class SqliteStore:
    """ConversationStore on one SQLite file. `path` may be ':memory:'.

    Every read is one execute_fetchall: a statement left half-read across an await
    would hold an old snapshot, and a write beside it on this connection would
    then fail at once (SQLITE_BUSY_SNAPSHOT) after the event log's commits."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # IMMEDIATE: a write transaction takes the write lock when it begins, so it waits
        # (busy_timeout) for the event log's writes instead of failing on a stale snapshot
        self._db = await aiosqlite.connect(self._path, isolation_level="IMMEDIATE")
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=10000")  # the event log shares the file
        await self._db.executescript(SCHEMA)
        await self._add_missing_columns()
        await self._db.commit()

    async def _add_missing_columns(self) -> None:
        """A file an older version wrote gets the columns added since."""
        columns = {row[1] for row in await self.db.execute_fetchall("PRAGMA table_info(messages)")}
        if "duration_ms" not in columns:
            await self.db.execute(
                "ALTER TABLE messages ADD COLUMN duration_ms REAL NOT NULL DEFAULT 0"
            )
        columns = {row[1] for row in await self.db.execute_fetchall("PRAGMA table_info(sessions)")}
        if "fence" not in columns:
            await self.db.execute(
                "ALTER TABLE sessions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0"
            )

    async def ping(self) -> None:
        await self.db.execute_fetchall("SELECT 1")

    async def next_fence(self, session_id: str) -> int:
        rows = await self.db.execute_fetchall(
            "UPDATE sessions SET fence = fence + 1 WHERE session_id = ? RETURNING fence",
            (session_id,),
        )
        await self.db.commit()
        return int(next(iter(rows))[0]) if rows else 0

    async def fences(self, session_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        ids = list(session_ids)
        for start in range(0, len(ids), 500):  # SQLite bounds the parameters of a statement
            chunk = ids[start : start + 500]
            rows = await self.db.execute_fetchall(
                "SELECT session_id, fence FROM sessions WHERE session_id IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update({row[0]: int(row[1]) for row in rows})
        return found

    async def reserve_seq(self, reservations: Sequence[tuple[str, int]]) -> None:
        await self.db.executemany(
            "UPDATE sessions SET seq_reserved = MAX(seq_reserved, ?) WHERE session_id = ?",
            [(upto, session_id) for session_id, upto in reservations],
        )
        await self.db.commit()

    async def runs_in_flight(self) -> list[RunRecord]:
        rows = await self.db.execute_fetchall(
            "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY run_order"
        )
        return [run_from_row(row) for row in rows]

    async def close(self) -> None:
        if self._db is not None:
            await self._db.commit()
            await self._db.close()
            self._db = None

    async def create_session(self, record: SessionRecord) -> None:
        await self.db.execute(
            "INSERT INTO sessions (session_id, user_id, title, created_ms, seq_reserved) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                record.session_id,
                record.user_id,
                record.title,
                record.created_ms,
                record.seq_reserved,
            ),
        )
        await self.db.commit()

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT * FROM sessions WHERE session_id = ?", (session_id,)
            )
        )
        return session_from_row(rows[0]) if rows else None

    async def list_sessions(
        self, user_id: str, limit: int, before_ms: int | None
    ) -> list[SessionRecord]:
        query = "SELECT * FROM sessions WHERE (? = '' OR user_id = ?) AND created_ms < ? "
        query += "ORDER BY created_ms DESC, session_id DESC LIMIT ?"
        before = before_ms if before_ms is not None else 2**62
        rows = await self.db.execute_fetchall(query, (user_id, user_id, before, limit))
        return [session_from_row(row) for row in rows]

    async def accept_user_message(
        self, message: MessageRecord, run: RunRecord, *, title: str
    ) -> None:
        await self.db.execute(
            "UPDATE sessions SET title = ? WHERE session_id = ? AND title != ?",
            (title, message.session_id, title),
        )
        await self.db.execute(
            "INSERT INTO runs (run_id, session_id, user_message_id, status, started_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (run.run_id, run.session_id, run.user_message_id, run.status, run.started_ms),
        )
        await self._insert_message(message)
        await self.db.commit()

    async def find_user_message(self, session_id: str, message_id: str) -> MessageRecord | None:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT * FROM messages WHERE session_id = ? AND message_id = ? AND role = 'user'",
                (session_id, message_id),
            )
        )
        return message_from_row(rows[0]) if rows else None

    async def note_accept_seq(self, session_id: str, message_id: str, seq: int) -> None:
        await self.db.execute(
            "UPDATE messages SET accept_seq = ? WHERE session_id = ? AND message_id = ?",
            (seq, session_id, message_id),
        )
        # committed at once: an open write transaction would hold the file's write lock,
        # and the event log (its own connection to this file) waits for that lock
        await self.db.commit()

    async def upsert_message(self, message: MessageRecord) -> None:
        await self._insert_message(message, upsert=True)
        await self.db.commit()

    async def _insert_message(self, m: MessageRecord, *, upsert: bool = False) -> None:
        sql = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        if upsert:
            sql += (
                " ON CONFLICT (session_id, message_id) DO UPDATE SET text = excluded.text, "
                "status = excluded.status, tool_calls_json = excluded.tool_calls_json, "
                "duration_ms = excluded.duration_ms"
            )
        await self.db.execute(sql, message_values(m))

    async def update_run(self, run: RunRecord, *, user_message_status: str = "") -> None:
        if user_message_status:
            await self.db.execute(
                "UPDATE messages SET status = ? WHERE session_id = ? AND message_id = ? "
                "AND role = 'user'",
                (user_message_status, run.session_id, run.user_message_id),
            )
        await self.db.execute(
            "UPDATE runs SET status = ?, finish_reason = ?, input_tokens = ?, output_tokens = ?, "
            "started_ms = ?, ended_ms = ? WHERE run_id = ?",
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
        await self.db.commit()

    async def list_messages(
        self, session_id: str, limit: int, after_position: int
    ) -> list[MessageRecord]:
        query = ORDERED_MESSAGES.format(extra="") + " LIMIT ? OFFSET ?"
        rows = await self.db.execute_fetchall(query, (session_id, limit, after_position))
        return [message_from_row(row) for row in rows]

    async def context_for_run(self, session_id: str, run_id: str) -> Sequence[MessageRecord]:
        extra = "AND r.run_order <= (SELECT run_order FROM runs WHERE run_id = ?)"
        rows = await self.db.execute_fetchall(
            ORDERED_MESSAGES.format(extra=extra), (session_id, run_id)
        )
        return [message_from_row(row) for row in rows]
