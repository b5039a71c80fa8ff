"""The conversation store on PostgreSQL (`postgresql://...`), for several replicas.

asyncpg with a connection pool. The schema is versioned: MIGRATIONS are applied
at start, each once, in order, under an advisory lock, so replicas that start
at the same time neither race nor apply one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

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

# (version, SQL). Append new versions; never edit one that has shipped.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE sessions (
            session_id   TEXT PRIMARY KEY,
            user_id      TEXT NOT NULL,
            title        TEXT NOT NULL,
            created_ms   BIGINT NOT NULL,
            seq_reserved BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX sessions_by_user ON sessions (user_id, created_ms);
        CREATE TABLE runs (
            run_order       BIGSERIAL PRIMARY KEY,
            run_id          TEXT NOT NULL UNIQUE,
            session_id      TEXT NOT NULL REFERENCES sessions (session_id),
            user_message_id TEXT NOT NULL,
            status          TEXT NOT NULL,
            finish_reason   TEXT NOT NULL DEFAULT '',
            input_tokens    BIGINT NOT NULL DEFAULT 0,
            output_tokens   BIGINT NOT NULL DEFAULT 0,
            started_ms      BIGINT NOT NULL DEFAULT 0,
            ended_ms        BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX runs_by_status ON runs (status);
        CREATE TABLE messages (
            position        BIGSERIAL PRIMARY KEY,
            session_id      TEXT NOT NULL REFERENCES sessions (session_id),
            message_id      TEXT NOT NULL,
            role            TEXT NOT NULL,
            text            TEXT NOT NULL,
            run_id          TEXT NOT NULL,
            status          TEXT NOT NULL,
            created_ms      BIGINT NOT NULL,
            tool_calls_json TEXT NOT NULL DEFAULT '[]',
            call_id         TEXT NOT NULL DEFAULT '',
            accept_seq      BIGINT NOT NULL DEFAULT 0,
            UNIQUE (session_id, message_id)
        );
        CREATE INDEX messages_by_run ON messages (run_id);
        """,
    ),
    (2, "ALTER TABLE messages ADD COLUMN duration_ms DOUBLE PRECISION NOT NULL DEFAULT 0"),
    (3, "ALTER TABLE sessions ADD COLUMN fence BIGINT NOT NULL DEFAULT 0"),
)
MIGRATION_LOCK = 0x61676E74  # pg_advisory_lock key for applying migrations

ORDERED_MESSAGES = """
SELECT m.* FROM messages m JOIN runs r ON r.run_id = m.run_id
WHERE m.session_id = $1 {extra}
ORDER BY r.run_order, CASE m.role WHEN 'user' THEN 0 ELSE 1 END, m.position
"""
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (session_id, message_id) "
)
UPSERT_MESSAGE = _INSERT_MESSAGE + (
    "DO UPDATE SET text = EXCLUDED.text, status = EXCLUDED.status, "
    "tool_calls_json = EXCLUDED.tool_calls_json, duration_ms = EXCLUDED.duration_ms"
)
INSERT_NEW_MESSAGE = _INSERT_MESSAGE + "DO NOTHING RETURNING position"
# One statement (so one round trip, and atomic on its own): the user message unless its
# id is taken, and only then its run and the session's title. Returns the rows inserted.
ACCEPT_USER_MESSAGE = f"""
WITH message AS ({INSERT_NEW_MESSAGE}),
run AS (
    INSERT INTO runs (run_id, session_id, user_message_id, status, started_ms)
    SELECT $12::text, $1, $2, $13::text, $14::bigint WHERE EXISTS (SELECT 1 FROM message)
),
titled AS (
    UPDATE sessions SET title = $15
    WHERE session_id = $1 AND title != $15 AND EXISTS (SELECT 1 FROM message)
)
SELECT count(*) FROM message
"""
# One statement: the run's new state and, when $8 is not empty, its user message's status.
UPDATE_RUN = """
WITH message AS (
    UPDATE messages SET status = $8
    WHERE $8 != '' AND session_id = $9 AND message_id = $10 AND role = 'user'
)
UPDATE runs SET status = $1, finish_reason = $2, input_tokens = $3, output_tokens = $4,
    started_ms = $5, ended_ms = $6 WHERE run_id = $7
"""


class PostgresStore:
    """ConversationStore on PostgreSQL."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self._dsn = dsn
        self._sizes = (min_size, max_size)
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        # on a connection of its own, closed after: its advisory lock cannot outlive it
        db = await asyncpg.connect(self._dsn)
        try:
            await migrate(db)
        finally:
            await db.close()
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=self._sizes[0], max_size=self._sizes[1], reset=_keep_session
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def next_fence(self, session_id: str) -> int:
        token = await self.pool.fetchval(
            "UPDATE sessions SET fence = fence + 1 WHERE session_id = $1 RETURNING fence",
            session_id,
        )
        return int(token or 0)

    async def fences(self, session_ids: Sequence[str]) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT session_id, fence FROM sessions WHERE session_id = ANY($1::text[])",
            list(session_ids),
        )
        return {row["session_id"]: int(row["fence"]) for row in rows}

    async def reserve_seq(self, reservations: Sequence[tuple[str, int]]) -> None:
        await self.pool.execute(
            "UPDATE sessions SET seq_reserved = GREATEST(seq_reserved, r.upto) "
            "FROM unnest($1::text[], $2::bigint[]) AS r(session_id, upto) "
            "WHERE sessions.session_id = r.session_id",
            [s for s, _ in reservations],
            [n for _, n in reservations],
        )

    async def runs_in_flight(self, session_id: str | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs WHERE status IN ('queued', 'running')"
        if session_id is None:
            rows = await self.pool.fetch(query + " ORDER BY run_order")
        else:
            rows = await self.pool.fetch(
                query + " AND session_id = $1 ORDER BY run_order", session_id
            )
        return [run_from_row(row) for row in rows]

    async def create_session(self, record: SessionRecord) -> None:
        await self.pool.execute(
            "INSERT INTO sessions (session_id, user_id, title, created_ms, seq_reserved) "
            "VALUES ($1, $2, $3, $4, $5)",
            record.session_id,
            record.user_id,
            record.title,
            record.created_ms,
            record.seq_reserved,
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM sessions WHERE session_id = $1", session_id)
        return session_from_row(row) if row else None

    async def list_sessions(
        self, user_id: str, limit: int, before_ms: int | None
    ) -> list[SessionRecord]:
        rows = await self.pool.fetch(
            "SELECT * FROM sessions WHERE ($1 = '' OR user_id = $1) AND created_ms < $2 "
            "ORDER BY created_ms DESC, session_id DESC LIMIT $3",
            user_id,
            before_ms if before_ms is not None else 2**62,
            limit,
        )
        return [session_from_row(row) for row in rows]

    async def accept_user_message(
        self, message: MessageRecord, run: RunRecord, *, title: str
    ) -> None:
        inserted = await self.pool.fetchval(
            ACCEPT_USER_MESSAGE,
            *message_values(message),
            run.run_id,
            run.status,
            run.started_ms,
            title,
        )
        if not inserted:  # nothing was stored: not the run, not the title
            raise DuplicateMessage(f"{message.session_id}/{message.message_id}")

    async def find_user_message(self, session_id: str, message_id: str) -> MessageRecord | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM messages WHERE session_id = $1 AND message_id = $2 AND role = 'user'",
            session_id,
            message_id,
        )
        return message_from_row(row) if row else None

    async def note_accept_seq(self, session_id: str, message_id: str, seq: int) -> None:
        await self.pool.execute(
            "UPDATE messages SET accept_seq = $1 WHERE session_id = $2 AND message_id = $3",
            seq,
            session_id,
            message_id,
        )

    async def upsert_message(self, message: MessageRecord) -> None:
        await self.pool.execute(UPSERT_MESSAGE, *message_values(message))

    async def update_run(self, run: RunRecord, *, user_message_status: str = "") -> None:
        await self.pool.execute(
            UPDATE_RUN,
            run.status,
            run.finish_reason,
            run.input_tokens,
            run.output_tokens,
            run.started_ms,
            run.ended_ms,
            run.run_id,
            user_message_status,
            run.session_id,
            run.user_message_id,
        )

    async def list_messages(
        self, session_id: str, limit: int, after_position: int
    ) -> list[MessageRecord]:
        rows = await self.pool.fetch(
            ORDERED_MESSAGES.format(extra="") + " LIMIT $2 OFFSET $3",
            session_id,
            limit,
            after_position,
        )
        return [message_from_row(row) for row in rows]

    async def context_for_run(self, session_id: str, run_id: str) -> Sequence[MessageRecord]:
        extra = "AND r.run_order <= (SELECT run_order FROM runs WHERE run_id = $2)"
        rows = await self.pool.fetch(ORDERED_MESSAGES.format(extra=extra), session_id, run_id)
        return [message_from_row(row) for row in rows]


async def _keep_session(db: asyncpg.Connection) -> None:
    """The pool's reset of a connection it takes back: nothing to do. The store sets no
    session state (no SET, LISTEN, cursor or advisory lock outside `migrate`, which has a
    connection of its own), and asyncpg rolls back a transaction left open before this
    runs, so its default reset (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`) would only add a round trip to the server after every call: two per store
    write instead of one."""


async def migrate(db: Any) -> list[int]:
    """Apply the migrations this database lacks, under an advisory lock; returns them."""
    applied: list[int] = []
    await db.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)"
        )
        done = {row["version"] for row in await db.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            async with db.transaction():
                await db.execute(sql)
                await db.execute(
                    "INSERT INTO schema_migrations (version, applied_ms) "
                    "VALUES ($1, (extract(epoch from now()) * 1000)::bigint)",
                    version,
                )
            applied.append(version)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied
