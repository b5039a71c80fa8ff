"""The embedded conversation store: one SQLite file (WAL), zero set-up."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from agent_service.store import (
    MessageRecord,
    Recovered,
    RunRecord,
    SessionRecord,
    StoredToolCall,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    title        TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    seq_reserved INTEGER NOT NULL DEFAULT 0
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
    """ConversationStore on one SQLite file. `path` may be ':memory:'."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> Recovered:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.executescript(SCHEMA)
        recovered = await self._recover()
        await self._db.commit()
        return recovered

    async def _recover(self) -> Recovered:
        """Runs left queued or running by a process that died end as interrupted."""
        now = _now_ms()
        async with self.db.execute(
            "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY run_order"
        ) as cur:
            runs = [_run(row) for row in await cur.fetchall()]
        await self.db.execute(
            "UPDATE runs SET status = 'ended', finish_reason = 'interrupted', ended_ms = ? "
            "WHERE status IN ('queued', 'running')",
            (now,),
        )
        await self.db.execute(
            "UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'"
        )
        # a run that died before its first partial write still shows in history as
        # interrupted: an empty assistant message says so
        for run in runs:
            if run.status == "running":
                await self.db.execute(
                    "INSERT OR IGNORE INTO messages (session_id, message_id, role, text, run_id, "
                    "status, created_ms) VALUES (?, ?, 'assistant', '', ?, 'interrupted', ?)",
                    (run.session_id, f"{run.run_id}.0", run.run_id, now),
                )
        return Recovered(interrupted_runs=runs)

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
        async with self.db.execute(
            "SELECT * FROM sessions WHERE session_id = ?", (session_id,)
        ) as cur:
            row = await cur.fetchone()
        return _session(row) if row else None

    async def list_sessions(
        self, user_id: str, limit: int, before_ms: int | None
    ) -> list[SessionRecord]:
        query = "SELECT * FROM sessions WHERE (? = '' OR user_id = ?) AND created_ms < ? "
        query += "ORDER BY created_ms DESC, session_id DESC LIMIT ?"
        before = before_ms if before_ms is not None else 2**62
        async with self.db.execute(query, (user_id, user_id, before, limit)) as cur:
            return [_session(row) for row in await cur.fetchall()]

    async def reserve_seq(self, session_id: str, upto: int) -> None:
        await self.db.execute(
            "UPDATE sessions SET seq_reserved = MAX(seq_reserved, ?) WHERE session_id = ?",
            (upto, session_id),
        )
        await self.db.commit()

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
        async with self.db.execute(
            "SELECT * FROM messages WHERE session_id = ? AND message_id = ? AND role = 'user'",
            (session_id, message_id),
        ) as cur:
            row = await cur.fetchone()
        return _message(row) if row else None

    async def note_accept_seq(self, session_id: str, message_id: str, seq: int) -> None:
        await self.db.execute(
            "UPDATE messages SET accept_seq = ? WHERE session_id = ? AND message_id = ?",
            (seq, session_id, message_id),
        )

    async def upsert_message(self, message: MessageRecord) -> None:
        await self._insert_message(message, upsert=True)
        await self.db.commit()

    async def upsert_partials(self, messages: Sequence[MessageRecord]) -> None:
        for message in messages:
            await self._insert_message(message, upsert=True, only_if_streaming=True)
        await self.db.commit()

    async def _insert_message(
        self, m: MessageRecord, *, upsert: bool = False, only_if_streaming: bool = False
    ) -> None:
        calls = json.dumps(
            [[c.call_id, c.tool_name, c.arguments_json] for c in m.tool_calls],
            separators=(",", ":"),
        )
        sql = (
            "INSERT INTO messages (session_id, message_id, role, text, run_id, status, "
            "created_ms, tool_calls_json, call_id, accept_seq) VALUES (?,?,?,?,?,?,?,?,?,?)"
        )
        if upsert:
            sql += (
                " ON CONFLICT (session_id, message_id) DO UPDATE SET text = excluded.text, "
                "status = excluded.status, tool_calls_json = excluded.tool_calls_json"
            )
            if only_if_streaming:
                sql += " WHERE messages.status = 'streaming'"
        await self.db.execute(
            sql,
            (
                m.session_id,
                m.message_id,
                m.role,
                m.text,
                m.run_id,
                m.status,
                m.created_ms,
                calls,
                m.call_id,
                m.accept_seq,
            ),
        )

    async def update_run(self, run: RunRecord) -> None:
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
        async with self.db.execute(query, (session_id, limit, after_position)) as cur:
            return [_message(row) for row in await cur.fetchall()]

    async def context_for_run(self, session_id: str, run_id: str) -> Sequence[MessageRecord]:
        extra = "AND r.run_order <= (SELECT run_order FROM runs WHERE run_id = ?)"
        async with self.db.execute(
            ORDERED_MESSAGES.format(extra=extra), (session_id, run_id)
        ) as cur:
            return [_message(row) for row in await cur.fetchall()]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        session_id=row["session_id"],
        user_id=row["user_id"],
        title=row["title"],
        created_ms=row["created_ms"],
        seq_reserved=row["seq_reserved"],
    )


def _run(row: Any) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        session_id=row["session_id"],
        user_message_id=row["user_message_id"],
        status=row["status"],
        finish_reason=row["finish_reason"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        started_ms=row["started_ms"],
        ended_ms=row["ended_ms"],
    )


def _message(row: Any) -> MessageRecord:
    return MessageRecord(
        session_id=row["session_id"],
        message_id=row["message_id"],
        role=row["role"],
        text=row["text"],
        run_id=row["run_id"],
        status=row["status"],
        created_ms=row["created_ms"],
        tool_calls=tuple(StoredToolCall(*c) for c in json.loads(row["tool_calls_json"])),
        call_id=row["call_id"],
        accept_seq=row["accept_seq"],
        position=row["position"],
    )
