"""The conversation store: durable sessions, messages and run outcomes.

One interface, chosen by URL (`open_store`): `sqlite:///PATH` today. The store
keeps what becomes the model's context and what history shows; the live event
log is not stored here (see eventlog.py). It also keeps each session's `seq`
reservation: the highest seq a process may hand out before it writes a new
reservation, so that after a restart a session's log starts past every seq ever
seen and never repeats one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session."""

    session_id: str
    user_id: str
    title: str
    created_ms: int
    seq_reserved: int


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


@dataclass(frozen=True, slots=True)
class Recovered:
    """What start-up recovery changed: runs that were in flight when the process died."""

    interrupted_runs: list[RunRecord] = field(default_factory=list)


class ConversationStore(Protocol):
    """Durable conversation state. Every method is safe to call concurrently."""

    async def open(self) -> Recovered:
        """Create the schema if needed and mark runs left in flight as interrupted."""
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

    async def reserve_seq(self, session_id: str, upto: int) -> None:
        """Record that seq numbers up to `upto` may be handed out."""
        ...

    async def accept_user_message(
        self, message: MessageRecord, run: RunRecord, *, title: str
    ) -> None:
        """Store a user message and the run it starts, and set the session's title, atomically."""
        ...

    async def find_user_message(self, session_id: str, message_id: str) -> MessageRecord | None:
        """A user message by its client id, or None."""
        ...

    async def note_accept_seq(self, session_id: str, message_id: str, seq: int) -> None:
        """Record the seq of a user message's acceptance event. It is made durable with the
        store's next write (it costs no commit of its own); until then it reads as 0."""
        ...

    async def upsert_message(self, message: MessageRecord) -> None:
        """Insert a message, or update its text, status and tool calls."""
        ...

    async def upsert_partials(self, messages: Sequence[MessageRecord]) -> None:
        """Write the text so far of replies still streaming, in one transaction. A message
        already stored with a final status keeps it: a late partial never overwrites it."""
        ...

    async def update_run(self, run: RunRecord) -> None:
        """Replace a run's stored state."""
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


def open_store(url: str) -> ConversationStore:
    """The store a URL names. Raises ValueError for an unknown scheme."""
    if url.startswith("sqlite://"):
        from agent_service.store_sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite://").removeprefix("/"))
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///PATH")
