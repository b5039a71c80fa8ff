"""The durable event log: one seam, backends chosen by URL.

A session's events live in the log before anyone sees them; the in-memory
window (eventlog.SessionLog) only mirrors its newest part. The interface is made
for a log that may live outside the process (the Redis backend to come):

- `append(batch)` writes events of several sessions in one step (one
  transaction: this is the group commit). Each session's events must continue
  its log: the first one's seq is the `expected_seq` the caller names, and a
  backend refuses the whole batch with SeqConflict otherwise, so a writer that
  lost track (or lost ownership) can never fork a log.
- `head()`, `read_after()` and `read_tail()` read what is durable.
- `follow()` waits for events after a seq, for readers in other processes; in
  this process the session wakes its subscribers itself.
- `trim()` drops events older than the retention window.

A log in the conversation store's SQLite file writes through the store's writer
(`joins_store_writes`): an append may then carry store writes (`Append.then`) that
commit in the same transaction, after its events; other logs never get any.

Backends: `memory://` (in-process, gone at exit: for tests),
`sqlite:///PATH` (the default, in the conversation store's file) and
`redis://HOST:PORT/DB` (Redis Streams, for several replicas).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent_relay.v1 import agent_pb2 as pb

StoreWrite = Callable[[sqlite3.Connection], None]
"""A write to the store's SQLite file that joins an append's transaction (Append.then)."""


@dataclass(frozen=True, slots=True)
class Append:
    """Events of one session for one batch; `events[0].seq` must be the log's head + 1."""

    session_id: str
    events: Sequence[pb.SessionEvent]
    # the writer's fencing token for the session (lease.py); 0: no lease to check (one
    # process owns every session). A backend that keeps leases refuses a batch whose
    # token is no longer the session's current one with Fenced.
    fence: int = 0
    # a re-seed (log_writer.py): the log lost events this writer had made durable (its
    # Redis came back with less, or with nothing), and the writer, still the fenced
    # owner, writes them again from its window; events[0].seq may then be beyond the
    # log's head + 1 (what the window no longer holds is a gap). Needs a fence.
    reseed: bool = False
    # store writes that commit in the same transaction, after the events (only for a log
    # whose `joins_store_writes` is true). Each runs in a savepoint of its own: one that
    # raises is undone alone, and the events are written all the same.
    then: Sequence[StoreWrite] = ()

    @property
    def expected_seq(self) -> int:
        return int(self.events[0].seq)


class SeqConflict(RuntimeError):
    """An append did not continue its session's log (another writer got there first)."""


class Fenced(SeqConflict):
    """An append carried a fencing token that is no longer the session's lease: the writer
    lost ownership (paused, cut off) and another replica may be writing."""


class LeaseMissing(SeqConflict):
    """An append carried a fencing token but the session has no lease at all now (its
    Redis restarted): refused, but not for good. The holder may put its lease back
    (lease_redis.py) and write; the log writer retries later."""


class LogBehind(SeqConflict):
    """The log's head is below the seq the writer continues from: the log lost events
    this writer had made durable (Redis restarted with less). `head` is what it holds;
    the writer, still the fenced owner, re-seeds (Append.reseed)."""

    def __init__(self, message: str, head: int) -> None:
        super().__init__(message)
        self.head = head


class EventLog(Protocol):
    """Durable per-session event logs. Methods may be called concurrently."""

    async def open(self) -> None:
        """Create what the backend needs; safe to call when it exists."""
        ...

    async def close(self) -> None:
        """Release connections; appends already returned stay durable."""
        ...

    async def append(self, batch: Sequence[Append]) -> None:
        """Make every event of the batch durable, all or none. Raises SeqConflict (or
        Fenced); a log that keeps leases and can lose data also LeaseMissing or LogBehind."""
        ...

    async def head(self, session_id: str) -> int:
        """The seq of the session's newest durable event; 0 for none."""
        ...

    async def read_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[pb.SessionEvent]:
        """Up to `limit` durable events with seq > after_seq, oldest first. The first may be
        later than after_seq + 1 when older ones were trimmed."""
        ...

    async def read_tail(self, session_id: str, count: int) -> list[pb.SessionEvent]:
        """The newest `count` durable events, oldest first."""
        ...

    def follow(self, session_id: str, after_seq: int) -> AsyncIterator[list[pb.SessionEvent]]:
        """Every durable event after `after_seq`, as it arrives, in batches."""
        ...

    async def trim(self, session_id: str, keep_after_seq: int) -> int:
        """Drop events with seq <= keep_after_seq; returns how many went."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise when it does not (health checks)."""
        ...


def open_log(url: str, *, store_url: str = "", store: object = None) -> EventLog:
    """The log a URL names; an empty URL means the store's SQLite file (or memory:// when
    the store is in memory). A SQLite log in the file of `store` (an open SqliteStore)
    writes through the store's writer: one connection, one transaction for both
    (sqlite_writer.py). Raises ValueError for an unknown scheme."""
    if not url:
        in_memory = not store_url.startswith("sqlite://") or store_url.endswith(":memory:")
        url = "memory://" if in_memory else store_url
    if url.startswith("memory://"):
        from agent_service.log_memory import MemoryLog

        return MemoryLog()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://").removeprefix("/")
        if path == ":memory:":
            from agent_service.log_memory import MemoryLog

            return MemoryLog()
        from agent_service.log_sqlite import SqliteLog
        from agent_service.store_sqlite import SqliteStore

        if isinstance(store, SqliteStore) and _same_file(store.path, path):
            shared = store
            return SqliteLog(path, writer=lambda: shared.writer)
        return SqliteLog(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from agent_service.log_redis import RedisLog

        return RedisLog(url)
    raise ValueError(
        f"unsupported log URL {url!r}: expected memory://, sqlite:///PATH or redis://HOST:PORT"
    )


def _same_file(a: str, b: str) -> bool:
    return a != ":memory:" and Path(a).resolve() == Path(b).resolve()
