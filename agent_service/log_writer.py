"""The group commit: one task makes stamped events durable, then visible.

Sessions stamp events synchronously (a model delta costs no await) and call
`submit()`. The writer takes every session's stamped events that wait, appends
them to the durable log in one batch, and only then publishes them: the session
wakes its subscribers. While one batch commits the next one gathers, so an idle
service commits an event after IDLE_GATHER_TURNS turns of the loop (what the tasks
woken with it stamp joins it) and a busy one commits many per transaction.

A session whose append is refused (SeqConflict, or Fenced: this replica lost
the session's lease) is told so through `receive_refused()` and its events are
dropped, never retried: they would fork the log. The other sessions of the batch
are written on their own. Any other failure is retried with backoff.

Two refusals are not final; both come from a log that lost data (Redis
restarted), and both leave the session's events in order:

- LeaseMissing (the lease key is gone): the session's events are handed back
  and submitted again with backoff, until the lease is put back (lease_redis.py)
  or lost (then the session is fenced and submits nothing more).
- LogBehind (the log's head is short of the events'): the log lost what this
  owner had made durable. The writer appends the session's window after the
  log's head, then its new events, as one re-seed (log.Append.reseed): the same
  events at the same seqs, so nobody who saw them sees them differently.

With a `reserve` callback (replicas: the store's reserve_seq) a session's seqs
are reserved in the store, RESERVE_AHEAD at a time, before they are appended:
a replica that takes a session over from a log that lost all of it continues
after the reservation, never at a seq a client may have seen. A task of its own
reserves the next block once a session is half way through its current one, so
the writer does not wait for the store; only events past the reservation (a new
session's first, or a store that has not answered for a while) are held back
until it is stored, and only their session's.

On a log in the store's file (SQLite, `joins_store_writes`) a session may hand store
writes that must not land before some of its events (a run's end after its
RunCompleted, agent.py): they commit in the same transaction, after the events. One
that is dropped (a refused or parked append) or fails is not retried here: its owner
sees it did not happen and writes it itself.

Under load the writer widens its window for deltas (`hold_max_s`, the service's
--delta-hold-ms). A paced stream's next word comes after its previous one was taken, so
the merge of deltas waiting for the writer (eventlog.extend_unsubmitted_delta) seldom
joins paced words, and each word costs a whole event in the service, the edge and on
the wire. So when the batches carry many deltas (the load: an average of the model
deltas appended per batch, merged or not), a new delta that continues its step's
stream, and whose previous delta came at most `hold_s` before, is stamped but held
back, not taken, for `hold_s` (0 when idle, growing with the load up to `hold_max_s`):
the step's words made meanwhile join it; it goes once a word joined it and the next is
not due before the window ends (`joined()`). A stream slower than the window is not held
(its next word would not come in time: the wait would buy nothing). A run's first
delta is never held, nor any other event: one appended (a run's end, a tool
call) submits its session, and the held delta goes first with it, in order. `flush()`
(shutdown) takes the held ones too. A held delta is not durable and nobody has seen it.

Retention runs beside it: every `trim_interval_s` the sessions that grew are
trimmed to their newest `retention_events`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from agent_relay.v1 import agent_pb2 as pb
from agent_service.log import (
    Append,
    EventLog,
    LeaseMissing,
    LogBehind,
    SeqConflict,
    StoreWrite,
)

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
RESERVE_AHEAD = 10_000  # seqs a session reserves in the store at a time
# Loop turns an idle writer lets pass before it takes its batch. A message's acceptance
# (turn 0), its run's start (1), first delta (2, after the model's first wait) and, for a
# short reply, the stored reply and the completion (4) then share one commit and one
# response; with 2 the completion took a commit and a response of its own.
IDLE_GATHER_TURNS = 4
LOAD_ALPHA = 1 / 16  # weight of a batch in the load (an average of deltas per batch)
HOLD_LOAD_FROM = 2.0  # deltas per batch below which nothing is held
HOLD_LOAD_FULL = 8.0  # deltas per batch from which a delta is held the whole hold_max_s
HOLD_TICK_S = 0.001  # held deltas due in one tick of this grid share its timer

Reserve = Callable[[Sequence[tuple[str, int]]], Awaitable[None]]
"""Raise sessions' seq reservations (store.ConversationStore.reserve_seq)."""


class LogTail(Protocol):
    """What the writer needs of a session (session.Session)."""

    @property
    def session_id(self) -> str: ...

    def take_unsubmitted(self) -> list[pb.SessionEvent]:
        """Stamped events not yet handed to the writer, oldest first."""
        ...

    def untake(self, first_seq: int) -> None:
        """Events from `first_seq` on count as not handed to the writer again."""
        ...

    def retained_after(self, seq: int) -> list[pb.SessionEvent]:
        """Durable events still in the window with a seq above `seq`, oldest first."""
        ...

    seq_reserved: int  # no event of the session may have a larger seq (see Reserve)

    @property
    def fence(self) -> int:
        """The fencing token its appends carry (log.Append.fence)."""
        ...

    def receive_durable(self, seq: int) -> None:
        """Events through `seq` are durable: publish them."""
        ...

    def receive_refused(self, error: SeqConflict) -> None:
        """The log refused its events (another writer owns the session): they are gone."""
        ...

    def take_joined_writes(self, through_seq: int) -> list[StoreWrite]:
        """Store writes to commit with the events through `through_seq` (only asked of a
        log that joins store writes, Append.then)."""
        ...


class LogWriter:
    """Owns the writing task. `start()` on the loop; `submit()` from anywhere on it."""

    def __init__(
        self,
        event_log: EventLog,
        *,
        retention_events: int,
        trim_interval_s: float = 5.0,
        reserve: Reserve | None = None,
        hold_max_s: float = 0.0,
    ):
        self.log = event_log
        # the log is in the store's file: a session's store writes may join its append
        self.joins_store_writes = bool(getattr(event_log, "joins_store_writes", False))
        self.hold_max_s = hold_max_s
        self.hold_s = 0.0  # how long a continuing delta is held now (see the module doc)
        self.deltas = 0  # model deltas appended since the last batch (Session.append_delta)
        self._load = 0.0  # deltas per batch, averaged
        # the sessions whose delta is held: session -> (it, the tick of its release, when
        # that is due: time.monotonic()). Public so a session appending a word tests it
        # for emptiness as a plain attribute (a property call was 3 % at full speed)
        self.held: dict[str, tuple[LogTail, int, float]] = {}
        self._hold_ticks: dict[int, list[str]] = {}  # tick -> the sessions it releases
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it holds deltas on
        self.reserve = reserve
        self._parked: dict[str, float] = {}  # session -> its next wait for a lease back
        self._to_reserve: dict[str, tuple[LogTail, int]] = {}  # session -> its newest seq
        self._held_back: set[str] = set()  # sessions whose events wait for a reservation
        self._reserve_wake = asyncio.Event()
        self.retention_events = retention_events
        self.trim_interval_s = trim_interval_s
        self.healthy = True  # False while appends fail (reported by health checks)
        self._waiting: dict[str, LogTail] = {}
        self._wake = asyncio.Event()
        self._grown: dict[str, int] = {}  # session -> head, since the last trim
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._write_loop(), name="log-writer"),
                asyncio.create_task(self._trim_loop(), name="log-trim"),
            ]
            if self.reserve is not None:
                self._tasks.append(
                    asyncio.create_task(self._reserve_loop(), name="log-seq-reservation")
                )

    def submit(self, tail: LogTail) -> None:
        """`tail` has stamped events to write."""
        if self.held:
            self.held.pop(tail.session_id, None)  # its tick finds it gone
        self._waiting[tail.session_id] = tail
        self._idle.clear()
        self._wake.set()

    def hold(self, tail: LogTail, delay_s: float) -> None:
        """`tail` has a stamped delta to write within `delay_s`: it waits that long for
        the words after it, unless the session is submitted (or flushed) first."""
        sid = tail.session_id
        if sid in self._waiting or sid in self.held:
            return  # it goes with what is already coming
        loop = self._loop
        if loop is None:  # asked once: get_running_loop() is a getpid() system call
            loop = self._loop = asyncio.get_running_loop()
        # released on a grid of HOLD_TICK_S (at most a tick early), by one timer per tick:
        # nearly every held delta goes before its release (a word joins it, `joined()`),
        # and a timer of its own, armed and cancelled, was most of what a hold cost
        tick = int((loop.time() + delay_s) / HOLD_TICK_S)
        sids = self._hold_ticks.get(tick)
        if sids is None:
            sids = self._hold_ticks[tick] = []
            loop.call_at(tick * HOLD_TICK_S, self._release_tick, tick)
        sids.append(sid)
        self.held[sid] = (tail, tick, time.monotonic() + delay_s)
        self._idle.clear()

    def joined(self, tail: LogTail, next_due: float) -> None:
        """A word joined `tail`'s held delta and the stream's next is due at `next_due`
        (time.monotonic()): past the hold's end, the delta goes now, not idle till then."""
        held = self.held.get(tail.session_id)
        if held is not None and next_due > held[2]:
            self.submit(tail)  # which cancels the release

    def _release_tick(self, tick: int) -> None:
        held = self.held
        for sid in self._hold_ticks.pop(tick, ()):
            entry = held.get(sid)
            if entry is not None and entry[1] == tick:  # not submitted, nor held again since
                self.submit(entry[0])

    def _release_all(self) -> None:
        held, self.held = self.held, {}
        for tail, _, _ in held.values():
            self.submit(tail)

    async def flush(self) -> None:
        """Return once everything submitted so far is durable and published."""
        while self._waiting or self._held_back or self.held or not self._idle.is_set():
            if self.held:
                self._release_all()
            if not self._tasks:
                if self._to_reserve and not await self._reserve_once():
                    await asyncio.sleep(RETRY_FIRST_S)
                await self._write_once()
            elif self._held_back:
                await asyncio.sleep(RETRY_FIRST_S)  # the reservation loop submits them
            else:
                await self._idle.wait()

    async def stop(self) -> None:
        """Flush, then end the tasks."""
        await self.flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _write_loop(self) -> None:
        while True:
            if not self._wake.is_set():
                await self._wake.wait()
                # Woken from idle: let the tasks woken with it run first (IDLE_GATHER_TURNS
                # turns of the loop), so a message's acceptance, its run's start, first
                # delta (and a short reply's end) share one commit and one response. A busy
                # writer (events waiting when its batch ends) goes on at once.
                for _ in range(IDLE_GATHER_TURNS):
                    await asyncio.sleep(0)
            self._wake.clear()
            await self._write_once()

    async def _write_once(self) -> None:
        tails, self._waiting = self._waiting, {}
        if self.hold_max_s:
            self._follow_load()
        batch: list[tuple[LogTail, Append]] = []
        for tail in tails.values():
            events = tail.take_unsubmitted()
            if events and not self._needs_reservation(tail, events):
                joined = tail.take_joined_writes(events[-1].seq) if self.joins_store_writes else ()
                batch.append((tail, Append(tail.session_id, events, tail.fence, then=joined)))
        if batch:
            try:
                await self._append_until_done([a for _, a in batch])
            except SeqConflict:
                await self._write_each(batch)
            else:
                for tail, item in batch:
                    self._written(tail, item)
        if not self._waiting and not self.held:
            self._idle.set()

    def _follow_load(self) -> None:
        """Fold the deltas appended since the last batch into the load; set hold_s."""
        deltas, self.deltas = self.deltas, 0
        self._load += (deltas - self._load) * LOAD_ALPHA
        share = (self._load - HOLD_LOAD_FROM) / (HOLD_LOAD_FULL - HOLD_LOAD_FROM)
        self.hold_s = self.hold_max_s * min(max(share, 0.0), 1.0)

    def _written(self, tail: LogTail, item: Append) -> None:
        head = item.events[-1].seq
        self._grown[tail.session_id] = head
        self._parked.pop(tail.session_id, None)
        tail.receive_durable(head)

    async def _write_each(self, batch: list[tuple[LogTail, Append]]) -> None:
        """A batch was refused: write each session alone, and tell the refused ones."""
        for tail, item in batch:
            try:
                try:
                    await self._append_until_done([item])
                except LogBehind as behind:
                    await self._append_until_done([self._reseed(tail, item, behind.head)])
            except LeaseMissing:
                self._park(tail, item)
            except SeqConflict as exc:
                log.warning("the log refused events of session %s: %s", tail.session_id, exc)
                tail.receive_refused(exc)
            else:
                self._written(tail, item)

    def _reseed(self, tail: LogTail, item: Append, head: int) -> Append:
        """The append that writes again what the log lost of this session (its window
        after the log's head), then the new events."""
        again = tail.retained_after(head)
        first = again[0].seq if again else item.expected_seq
        log.warning(
            "the log of session %s lost events: it holds up to %d, this owner wrote up to %d; "
            "writing %d again from %d%s",
            tail.session_id,
            head,
            item.expected_seq - 1,
            len(again),
            first,
            f" (events {head + 1}-{first - 1} are gone)" if first > head + 1 else "",
        )
        return Append(
            tail.session_id, [*again, *item.events], item.fence, reseed=True, then=item.then
        )

    def _park(self, tail: LogTail, item: Append) -> None:
        """The session's lease is missing for now: hand its events back, submit it later."""
        delay = self._parked.get(tail.session_id, RETRY_FIRST_S)
        self._parked[tail.session_id] = min(delay * 2, RETRY_MAX_S)
        tail.untake(item.expected_seq)
        asyncio.get_running_loop().call_later(delay, self.submit, tail)

    def _needs_reservation(self, tail: LogTail, events: list[pb.SessionEvent]) -> bool:
        """Ask for a reservation when the session nears its end (in the background, so the
        writer never waits for the store); True when these events pass it: they wait."""
        last = events[-1].seq
        if self.reserve is None or last <= tail.seq_reserved - RESERVE_AHEAD // 2:
            return False
        self._to_reserve[tail.session_id] = (tail, last)
        self._reserve_wake.set()
        if last <= tail.seq_reserved:
            return False
        tail.untake(events[0].seq)  # submitted again once the reservation is stored
        self._held_back.add(tail.session_id)
        return True

    async def _reserve_loop(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await self._reserve_wake.wait()
            self._reserve_wake.clear()
            while self._to_reserve:
                if await self._reserve_once():
                    delay = RETRY_FIRST_S
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)

    async def _reserve_once(self) -> bool:
        """Store the reservations asked for (one statement); the sessions held back for
        them are submitted again. False when the store failed (they are asked again)."""
        todo, self._to_reserve = self._to_reserve, {}
        wanted = {sid: last + RESERVE_AHEAD for sid, (_, last) in todo.items()}
        try:
            assert self.reserve is not None
            await self.reserve(list(wanted.items()))
        except Exception as exc:
            log.warning("could not reserve seqs of %d sessions: %s; retrying", len(todo), exc)
            for sid, entry in todo.items():
                self._to_reserve.setdefault(sid, entry)
            return False
        for sid, (tail, _) in todo.items():
            tail.seq_reserved = max(tail.seq_reserved, wanted[sid])
            if sid in self._held_back:
                self._held_back.discard(sid)
                self.submit(tail)
        return True

    async def _append_until_done(self, batch: list[Append]) -> None:
        """Retry a failed append with backoff: its events were stamped, and seq must stay
        dense, so they are written before anything after them. A refusal (SeqConflict)
        is raised at once: retrying cannot succeed."""
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.log.append(batch)
            except SeqConflict:
                self.healthy = True  # the log answered
                raise
            except Exception:
                self.healthy = False
                log.exception("could not write %d sessions' events; retrying", len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                self.healthy = True
                return

    async def _trim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.trim_interval_s)
            grown, self._grown = self._grown, {}
            for session_id, head in grown.items():
                keep_after = head - self.retention_events
                if keep_after > 0:
                    try:
                        await self.log.trim(session_id, keep_after)
                    except Exception:
                        log.exception("could not trim the log of %s", session_id)
