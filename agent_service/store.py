"""The conversation store: durable sessions, messages and run outcomes.

One interface, chosen by URL (`open_store`): `sqlite:///PATH` (the default) or
`postgresql://...` (for several replicas). The store
keeps what becomes the model's context and what history shows; the event log is
a seam of its own (log.py), which may share the store's file.

Message statuses: user messages are `queued` until their run starts, then
`complete`, or `cancelled` / `interrupted` when their run never started;
assistant and tool messages are `streaming` (never stored by this version, kept
for older files), `complete`, `cancelled`, `failed` or `interrupted`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session."""

    session_id: str
    user_id: str
    title: str
    created_ms: int
    # no event of the session has a larger seq (the log writer reserves blocks ahead,
    # with a log that may lose data: Redis); a log with no events of this session
    # continues after it, so seq never goes back
    seq_reserved: int = 0


@dataclass(frozen=True, slots=True)
class StoredToolCall:
    """A tool call an assistant message made."""

    call_id: str
    tool_name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A stored message. `role`: user, assistant or tool. `status`: see MessageStatus."""

    session_id: str
    message_id: str
    role: str
    text: str
    run_id: str
    status: str
    created_ms: int
    tool_calls: tuple[StoredToolCall, ...] = ()
    call_id: str = ""
    accept_seq: int = 0  # for user messages: the seq of their MessageAccepted event
    duration_ms: float = 0.0  # for tool messages: how long the call took
    position: int = 0  # insertion order within the store (set by the store)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A stored run. `status`: queued, running or ended."""

    run_id: str
    session_id: str
    user_message_id: str
    status: str
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    started_ms: int = 0
    ended_ms: int = 0


class DuplicateMessage(Exception):
    """accept_user_message: the session already has a message with this id (stored by
    another replica that owned the session then); nothing was stored."""


class ConversationStore(Protocol):
    """Durable conversation state. Every method is safe to call concurrently."""

    async def open(self) -> None:
        """Create or migrate the schema."""
        ...

    async def runs_in_flight(self, session_id: str | None = None) -> list[RunRecord]:
        """Runs stored as queued or running, in the order they were accepted (at start-up:
        the runs a process that stopped left behind); only `session_id`'s when given."""
        ...

    async def close(self) -> None:
        """Flush and release the connection."""
        ...

    async def create_session(self, record: SessionRecord) -> None:
        """Store a new session."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        ...

    async def list_sessions(
        self, user_id: str, limit: int, before_ms: int | None
    ) -> list[SessionRecord]:
        """Sessions newest first, optionally only one user's, created before before_ms."""
        ...

    async def accept_user_message(
        self, message: MessageRecord, run: RunRecord, *, title: str
    ) -> None:
        """Store a user message and the run it starts, and set the session's title, atomically.
        Raises DuplicateMessage when the session has the message id already (a backend
        shared by replicas checks it: the last line of once-per-id across replicas)."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise when it does not (health checks)."""
        ...

    async def next_fence(self, session_id: str) -> int:
        """A fencing token for a new lease of the session (lease_redis.py), larger than
        every one given before: the store is durable, so a lease backend that lost its
        data can never hand an old token out again. 0 when the session does not exist."""
        ...

    async def fences(self, session_ids: Sequence[str]) -> dict[str, int]:
        """The newest token next_fence gave each of these sessions (absent: none exists)."""
        ...

    async def reserve_seq(self, reservations: Sequence[tuple[str, int]]) -> None:
        """Raise each session's seq_reserved to at least the seq given (never lower it):
        a log that loses the session's events continues after it (hub.py)."""
        ...

    async def find_user_message(self, session_id: str, message_id: str) -> MessageRecord | None:
        """A user message by its client id, or None."""
        ...

    async def note_accept_seq(self, session_id: str, message_id: str, seq: int) -> None:
        """Record the seq of a user message's acceptance event (0 until it is recorded)."""
        ...

    async def upsert_message(self, message: MessageRecord) -> None:
        """Insert a message, or update its text, status and tool calls."""
        ...

    async def update_run(self, run: RunRecord, *, user_message_status: str = "") -> None:
        """Replace a run's stored state; with `user_message_status`, set its user message's
        status in the same transaction (`complete` when it starts, `cancelled` or
        `interrupted` when it will never start)."""
        ...

    async def list_messages(
        self, session_id: str, limit: int, after_position: int
    ) -> list[MessageRecord]:
        """Messages oldest first, after a position (0: from the start)."""
        ...

    async def context_for_run(self, session_id: str, run_id: str) -> Sequence[MessageRecord]:
        """Messages the model reads for a run: everything stored up to the run's own
        user message and the run's own messages, without messages of later runs."""
        ...


def encode_tool_calls(calls: Sequence[StoredToolCall]) -> str:
    """Tool calls as both stores keep them: a JSON list of [call_id, tool_name, arguments]."""
    if not calls:  # most messages: json.dumps of an empty list was a tenth of storing one
        return "[]"
    return json.dumps(
        [[c.call_id, c.tool_name, c.arguments_json] for c in calls], separators=(",", ":")
    )


MESSAGE_COLUMNS = (
    "session_id, message_id, role, text, run_id, status, created_ms, tool_calls_json, call_id, "
    "accept_seq, duration_ms"
)


def message_values(m: MessageRecord) -> tuple[object, ...]:
    """A message's values in MESSAGE_COLUMNS order, as both stores insert them."""
    return (
        m.session_id,
        m.message_id,
        m.role,
        m.text,
        m.run_id,
        m.status,
        m.created_ms,
        encode_tool_calls(m.tool_calls),
        m.call_id,
        m.accept_seq,
        m.duration_ms,
    )


def session_from_row(row: Any) -> SessionRecord:
    """A sessions row (any mapping by column name: sqlite3.Row, asyncpg.Record)."""
    return SessionRecord(
        row["session_id"], row["user_id"], row["title"], row["created_ms"], row["seq_reserved"]
    )


def run_from_row(row: Any) -> RunRecord:
    """A runs row."""
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


def message_from_row(row: Any) -> MessageRecord:
    """A messages row."""
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
        duration_ms=row["duration_ms"],
        position=row["position"],
    )


def open_store(url: str) -> ConversationStore:
    """The store a URL names. Raises ValueError for an unknown scheme."""
    if url.startswith("sqlite://"):
        from agent_service.store_sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite://").removeprefix("/"))
    if url.startswith(("postgresql://", "postgres://")):
        from agent_service.store_postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///PATH or postgresql://...")
