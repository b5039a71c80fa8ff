"""Every write to one SQLite file of this process: one connection, group-committed.

The store (store_sqlite.py) and the event log (log_sqlite.py) share the service's file;
both hand their writes to one SqliteWriter, so a batch of events and the messages
and runs stored beside them are one transaction, and the two never wait for each
other's write lock. A write is a function of the connection. One that finds the
writer idle (nothing queued, nothing on the thread) is a batch of its own at once,
so its caller does not wait a turn of the loop; the writes queued behind a batch
in one turn form the next batch: one transaction, each write in a savepoint of its
own (one that raises is undone alone and gets its exception).

Where a batch runs. A thread hand-off costs more CPU than a small commit: py-spy had
the worker's wake-up and the loop's (sem_post, the self-pipe) as a fifth of the
service's samples on a message's round trip, 6 hand-offs per message at about 60-90
us each beside an inline commit of about 30 us (WAL, synchronous=NORMAL: a commit
writes the log file and does not fsync). So a batch of at most `inline_max_weight`
rows commits on the event loop, up to `inline_commits_per_s` (a token bucket); a
larger one (a busy writer's batch of many sessions' events), or one past that
rate, goes to the thread, where SQLite's work runs beside the loop's Python and
the writes that arrive meanwhile gather into the next batch. Under a burst that
gathering is what counts (one commit, one publish and one response for many
sessions' events, instead of a small one per loop turn: 100 sessions sending at
once cost 30 % more service CPU per message with every batch inline); at a
message's round trip it is the hand-offs saved. While the thread has a batch,
new writes queue and go together after it.

Nothing that may wait runs on the loop: its connection's busy timeout is 0 there,
and a batch that finds the file locked by another process goes to the thread,
which waits up to `busy_timeout_ms`. Checkpoints (which fsync) never run on the loop
either: the connection's automatic checkpoint is off and the writer asks for a
passive one on its thread every `checkpoint_every` commits. Given a `checkpoint_db`
(another connection to the file, the owner's reads'), the checkpoint runs there and
writes go on meanwhile, on the loop (a passive checkpoint waits for no writer);
without one it holds the connection, and the writes that come queue behind it (a
fresh session's first delta waited for its fsync at the round trip's p99).

With `inline=False` (an in-memory database, which has no second connection to read
with) every batch runs on the thread, serialized with the owner's reads there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

INLINE_MAX_WEIGHT = 32  # rows a batch may write on the event loop
INLINE_MAX_JOBS = 2  # writes a batch may hold to commit on the loop
INLINE_COMMITS_PER_S = 2_000.0  # inline commits per second, on average
INLINE_COMMITS_BURST = 16  # inline commits in a row
CHECKPOINT_EVERY = 256  # commits between two passive checkpoints (the thread's)
BUSY_TIMEOUT_MS = 10_000  # the thread's wait for a lock another process holds

Write = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Job:
    fn: Write
    future: asyncio.Future[Any]
    weight: int


class SqliteWriter:
    """The writes of one connection. `write()` on the event loop; see the module doc."""

    def __init__(
        self,
        db: sqlite3.Connection,
        thread: ThreadPoolExecutor,
        *,
        inline: bool,
        inline_max_weight: int = INLINE_MAX_WEIGHT,
        inline_commits_per_s: float = INLINE_COMMITS_PER_S,
        checkpoint_every: int = CHECKPOINT_EVERY,
        checkpoint_db: sqlite3.Connection | None = None,
    ) -> None:
        """`db` must be opened with isolation_level=None and check_same_thread=False;
        `thread` is a one-worker executor (it may run the owner's reads too);
        `checkpoint_db`, a connection to the same file used only on `thread`."""
        self._db = db
        self._thread = thread
        self._inline = inline
        self._inline_max_weight = inline_max_weight
        self._checkpoint_every = checkpoint_every
        self._queued: list[_Job] = []
        self._scheduled = False  # a drain is scheduled on the loop
        self._on_thread = False  # a batch runs on the thread
        self._commits = 0  # since the last checkpoint
        self._checkpoint_db = checkpoint_db
        self._checkpointing = False  # a checkpoint runs on checkpoint_db
        self._first_of_turn = True  # no write committed at once in this turn of the loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop its writes come from
        self.rollbacks = 0  # transactions rolled back whole: what they wrote is not there
        self._inline_rate = inline_commits_per_s
        self._inline_tokens = float(INLINE_COMMITS_BURST)
        self._inline_at = time.monotonic()
        if inline:
            db.execute("PRAGMA busy_timeout=0")
            db.execute("PRAGMA wal_autocheckpoint=0")
        else:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def write(self, fn: Write, weight: int = 1) -> asyncio.Future[Any]:
        """Queue `fn(db)` for the next batch (run now when the writer is idle); the future
        gets its result or exception.
        `weight`: about how many rows it writes (a batch past the inline bound goes to
        the thread). A write whose future is cancelled before its batch begins is
        skipped; one whose batch began lands (or is rolled back) whole."""
        loop = self._loop
        if loop is None:  # asked once: get_running_loop() is a getpid() system call
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append(_Job(fn, future, weight))
        if self._first_of_turn and not self._scheduled and not self._on_thread:
            if len(self._queued) == 1:  # alone and idle: now, the caller need not wait a turn
                self._first_of_turn = False
                loop.call_soon(self._next_turn)  # writes behind it in this turn batch
                self._drain(loop)
                return future
        if not self._scheduled and not self._on_thread:
            self._scheduled = True
            loop.call_soon(self._drain, loop)
        return future

    def _next_turn(self) -> None:
        self._first_of_turn = True

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: the queued writes as one batch, here or on the thread."""
        self._scheduled = False
        if self._on_thread:
            return  # the thread has the connection: _thread_done drains again
        jobs = [job for job in self._queued if not job.future.cancelled()]
        self._queued = []
        if not jobs:
            return
        if self._may_inline(len(jobs), sum(job.weight for job in jobs)):
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                pass  # locked by another process: the thread waits for it
            else:
                _settle(jobs, self._commit_begun(jobs))
                self._committed(loop)
                return
        self._on_thread = True
        self._thread.submit(self._run_on_thread, loop, jobs)

    def _may_inline(self, jobs: int, weight: int) -> bool:
        """Whether a batch of `jobs` writing `weight` rows commits on the loop (and takes
        a token)."""
        if not self._inline or jobs > INLINE_MAX_JOBS or weight > self._inline_max_weight:
            return False
        now = time.monotonic()
        tokens = self._inline_tokens + (now - self._inline_at) * self._inline_rate
        self._inline_tokens = min(tokens, float(INLINE_COMMITS_BURST))
        self._inline_at = now
        if self._inline_tokens < 1.0:
            return False
        self._inline_tokens -= 1.0
        return True

    def _run_on_thread(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        db = self._db
        try:
            if self._inline:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            try:
                db.execute("BEGIN IMMEDIATE")
            finally:
                if self._inline:
                    db.execute("PRAGMA busy_timeout=0")
        except Exception as exc:
            outcomes: list[tuple[bool, Any]] = [(False, exc)] * len(jobs)
        else:
            outcomes = self._commit_begun(jobs)
        loop.call_soon_threadsafe(self._thread_done, loop, jobs, outcomes)

    def _thread_done(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], outcomes: list[tuple[bool, Any]]
    ) -> None:
        self._on_thread = False
        if jobs:
            _settle(jobs, outcomes)
            self._committed(loop)  # may hand the connection to the thread again
        if self._queued and not self._scheduled and not self._on_thread:
            self._scheduled = True
            loop.call_soon(self._drain, loop)

    def _commit_begun(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """In the transaction just begun: every job in a savepoint, then commit. A failed
        commit rolls back and fails them all."""
        db = self._db
        try:
            if len(jobs) == 1:  # alone, its failure is the transaction's: no savepoint
                try:
                    outcomes = [(True, jobs[0].fn(db))]
                except Exception as exc:
                    self.rollbacks += 1
                    db.execute("ROLLBACK")
                    return [(False, exc)]
            else:
                outcomes = [in_savepoint(db, job.fn) for job in jobs]
            db.execute("COMMIT")
        except Exception as exc:
            self.rollbacks += 1
            if db.in_transaction:
                db.execute("ROLLBACK")
            return [(False, exc)] * len(jobs)
        return outcomes

    def _committed(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count a commit; every checkpoint_every, a passive checkpoint on the thread."""
        if not self._inline:
            return
        self._commits += 1
        if self._commits < self._checkpoint_every:
            return
        if self._checkpoint_db is not None:
            if not self._checkpointing:  # beside the writes: the connection stays free
                self._commits = 0
                self._checkpointing = True
                self._thread.submit(self._checkpoint_beside, loop, self._checkpoint_db)
        elif not self._on_thread:
            self._commits = 0
            self._on_thread = True
            self._thread.submit(self._checkpoint_on_thread, loop)

    def _checkpoint_beside(self, loop: asyncio.AbstractEventLoop, db: sqlite3.Connection) -> None:
        _passive_checkpoint(db)
        loop.call_soon_threadsafe(self._checkpoint_done)

    def _checkpoint_done(self) -> None:
        self._checkpointing = False

    def _checkpoint_on_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        _passive_checkpoint(self._db)
        loop.call_soon_threadsafe(self._thread_done, loop, [], [])


def _passive_checkpoint(db: sqlite3.Connection) -> None:
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error:
        pass  # the next one tries again; SQLite checkpoints at close too


def in_savepoint(db: sqlite3.Connection, fn: Write) -> tuple[bool, Any]:
    """Run `fn` in a savepoint of the open transaction: (True, its result), or (False,
    its exception) with what it did undone and the transaction still open. Savepoints
    nest, so `fn` may call this again."""
    db.execute("SAVEPOINT one_write")
    try:
        result = fn(db)
    except Exception as exc:
        db.execute("ROLLBACK TO one_write")
        db.execute("RELEASE one_write")
        return False, exc
    db.execute("RELEASE one_write")
    return True, result


def _settle(jobs: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
    """On the event loop: each write's caller gets its result or its exception."""
    for job, (ok, value) in zip(jobs, outcomes, strict=True):
        if job.future.done():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
