"""One loaded session: its decisions, its log window, its subscribers and run handles.

A Session joins the pure parts (session_state.SessionState for what to accept
and run, eventlog.SessionLog for seq and the window) to the things that do I/O
(the log writer, subscribers' wake-ups, run handles). Appending is synchronous:
`append()` stamps the event and hands it to the log writer, which makes it
durable and then calls `receive_durable()`, which publishes it and wakes the
subscribers. `durable(seq)` waits for that, for replies that must not promise
more than the log holds.

A session is loaded as the owner (this replica holds its lease: it decides,
runs and appends, with the lease's fencing token) or as a follower (another
replica owns it: the window is fed from the shared log by `receive_followed()`,
and the session never appends). An owner whose appends the log refuses (it lost
the lease) becomes `fenced`: it appends nothing more, its waiters fail with
UNAVAILABLE, and the hub replaces it by a follower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from agent_relay.v1 import agent_pb2 as pb
from agent_service.context import SessionContext
from agent_service.errors import Unavailable
from agent_service.eventlog import SessionLog
from agent_service.ids import now_ms
from agent_service.log import StoreWrite
from agent_service.log_writer import LogWriter
from agent_service.run_supervisor import LiveReply, RunHandle
from agent_service.session_state import SessionState
from agent_service.store import SessionRecord


class Subscriber:
    """A reader of some sessions' logs (one Chat stream): a cursor per session, the
    sessions that grew since it last read (so a read costs what changed, not what
    is joined), and one wake-up for all of them."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.cursors: dict[str, int] = {}
        self.dirty: dict[str, None] = {}  # an ordered set: first grown, first read

    def notify(self, session_id: str = "") -> None:
        """Something new may be readable (in session_id, when given)."""
        if session_id:
            self.dirty[session_id] = None
        self.wake.set()


class Session:
    """A loaded session. Every method runs on the service's event loop."""

    def __init__(
        self,
        record: SessionRecord,
        log: SessionLog,
        writer: LogWriter,
        *,
        owner: bool = True,
        fence: int = 0,
        on_refused: Callable[[Session], None] | None = None,
    ) -> None:
        self.record = record
        self.owner = owner  # False: a follower of a session another replica owns
        self.fence = fence  # the lease token its appends carry
        self.seq_reserved = record.seq_reserved  # the log writer raises it (log_writer.py)
        self.fenced = False  # the log refused its appends: it lost the lease
        self.follower_task: asyncio.Task[None] | None = None  # feeds a follower's window
        self._on_refused = on_refused
        self.state = SessionState(record.title)
        self.context = SessionContext()  # the model's context, kept between runs
        self.log = log
        self.runs: dict[str, RunHandle] = {}  # queued and active
        self.subscribers: set[Subscriber] = set()
        self.accept_lock = asyncio.Lock()  # one message at a time through the state
        self.idle_since: float | None = None  # monotonic time it was first seen idle
        self._writer = writer
        self._durable_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._joined: list[tuple[int, StoreWrite]] = []  # store writes for the log's commit
        self._delta_at = 0.0  # monotonic time of its newest model delta (append_delta)

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def busy(self) -> bool:
        """A run is active or queued (a follower knows the runs its window shows going)."""
        if self.owner:
            return self.state.busy
        return bool(self.followed_replies(self.log.head_seq))

    @property
    def quiescent(self) -> bool:
        """No subscriber, no run, nothing waiting to be durable: safe to unload."""
        return not (self.subscribers or self.runs or self.state.busy or self.log.unpublished)

    def append(self, event: pb.SessionEvent) -> pb.SessionEvent:
        """Stamp the event (time, session, seq) and queue it for the durable log. A fenced
        session drops it (its seq stays 0): it is no longer the session's writer."""
        if not self.owner:
            raise RuntimeError(f"session {self.session_id}: a follower never appends")
        if self.fenced:
            return event
        event.time_unix_ms = now_ms()
        self.log.stamp(event)
        self._writer.submit(self)
        return event

    def append_delta(self, run_id: str, step: int, text: str) -> pb.SessionEvent:
        """A model delta of `run_id`'s `step`: added to the newest event when that is a delta
        of the same step the log writer has not taken yet (SessionLog), else appended as a
        new event, which a loaded writer holds back a moment when it continues the step's
        stream and the previous delta came within the window (LogWriter.hold_s). Either
        way the text is under the returned event's seq (a merged word is in its text once
        the log writer has taken it: SessionLog.extend_unsubmitted_delta)."""
        if self.owner and not self.fenced:
            writer = self._writer
            writer.deltas += 1
            now = time.monotonic()
            gap, self._delta_at = now - self._delta_at, now
            log = self.log
            merged = log.extend_unsubmitted_delta(run_id, step, text)
            if merged is not None:
                if writer.held:
                    writer.joined(self, now + gap)
                return merged
            # the writer is loaded and the stream's next word is due within its window: this
            # delta waits for it unsubmitted (LogWriter.hold). A run's first never waits, nor
            # one of a stream slower than the window (it would wait alone)
            hold_s = writer.hold_s
            hold = bool(
                hold_s
                and gap <= hold_s
                and log.merge_delta_chars
                and log.continues_delta(run_id, step)  # asked before this delta is stamped
            )
            # the delta's fields as a mapping: protobuf builds it in place, a third of the
            # cost of building a ResponseDelta and copying it in
            event = pb.SessionEvent(run_id=run_id, response_delta={"text": text, "step": step})
            event.time_unix_ms = now_ms()
            log.stamp_delta(event, run_id, step, text)
            if hold:
                writer.hold(self, hold_s)
            else:
                writer.submit(self)
            return event
        return self.append(
            pb.SessionEvent(run_id=run_id, response_delta={"text": text, "step": step})
        )

    def join_commit(self, seq: int, write: StoreWrite) -> bool:
        """Have `write` commit in the transaction that makes the event `seq` durable, after
        it (log_writer.py). False when the log cannot join store writes, or `seq` was
        already taken by the writer: then nothing is queued. A write that was queued may
        still be dropped or fail (its caller checks that it ran, and writes it itself)."""
        if not self._writer.joins_store_writes or self.fenced or not self.owner:
            return False
        if seq <= self.log.head_seq or self.log.submitted_seq >= seq:
            return False
        self._joined.append((seq, write))
        return True

    def take_joined_writes(self, through_seq: int) -> list[StoreWrite]:
        if not self._joined:
            return []
        taken = [write for seq, write in self._joined if seq <= through_seq]
        self._joined = [(seq, write) for seq, write in self._joined if seq > through_seq]
        return taken

    def take_unsubmitted(self) -> list[pb.SessionEvent]:
        if self.fenced:
            return []  # no longer the session's writer: nothing of it may be written
        return self.log.take_unsubmitted()

    def untake(self, first_seq: int) -> None:
        self.log.untake(first_seq)

    def retained_after(self, seq: int) -> list[pb.SessionEvent]:
        return self.log.retained_after(seq)

    def receive_durable(self, seq: int) -> None:
        """The log writer made events through `seq` durable: publish, resolve, wake. The
        waiters go first: a command that waited for its event (an acceptance) queues its
        reply before the subscribers' streams collect, so reply and event share one
        response."""
        self.log.publish_through(seq)
        if self._durable_waiters:
            still = []
            for upto, future in self._durable_waiters:
                if upto <= seq:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((upto, future))
            self._durable_waiters = still
        for subscriber in self.subscribers:
            subscriber.notify(self.session_id)

    def receive_refused(self, error: Exception) -> None:
        """The log refused this session's appends: this replica is no longer its writer."""
        if self.fenced:
            return
        self.fenced = True
        for _, future in self._durable_waiters:
            if not future.done():
                future.set_exception(_lost_ownership(self.session_id))
        self._durable_waiters = []
        if self._on_refused is not None:
            self._on_refused(self)

    def receive_followed(self, events: Iterable[pb.SessionEvent]) -> None:
        """A follower's window gets events the owner made durable: wake the subscribers."""
        if self.log.receive(events):
            for subscriber in self.subscribers:
                subscriber.notify(self.session_id)

    async def durable(self, seq: int) -> None:
        """Return once the event with `seq` is durable and visible."""
        if seq <= self.log.head_seq:
            return
        if self.fenced:
            raise _lost_ownership(self.session_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable_waiters.append((seq, future))
        await future

    def followed_replies(self, through_seq: int) -> list[LiveReply]:
        """A follower's view of the replies being streamed, from its window: the text of
        each unfinished run's newest step, through `through_seq`."""
        return followed_replies(self.log.retained(), through_seq)

    def to_proto(self) -> pb.Session:
        """The session's summary."""
        active = self.state.queue.active or ""
        if not self.owner:
            active = next(iter(r.run_id for r in self.followed_replies(self.log.head_seq)), "")
        return pb.Session(
            session_id=self.session_id,
            title=self.state.title,
            user_id=self.record.user_id,
            created_unix_ms=self.record.created_ms,
            head_seq=self.log.head_seq,
            run_state=pb.RUN_STATE_RUNNING if active else pb.RUN_STATE_IDLE,
            active_run_id=active,
        )


def followed_replies(events: Iterable[pb.SessionEvent], through_seq: int) -> list[LiveReply]:
    """The replies in progress as durable events tell them: for each run started and not
    completed through `through_seq`, the text of its newest step (message `<run>.<step>`)."""
    steps: dict[str, tuple[int, list[str]]] = {}
    for event in events:
        if event.seq > through_seq:
            break
        kind = event.WhichOneof("kind")
        if kind == "run_started":
            steps[event.run_id] = (0, [])
        elif kind == "response_delta" and event.run_id in steps:
            step, pieces = steps[event.run_id]
            if event.response_delta.step != step:
                step, pieces = event.response_delta.step, []
            pieces.append(event.response_delta.text)
            steps[event.run_id] = (step, pieces)
        elif kind == "run_completed":
            steps.pop(event.run_id, None)
    return [
        LiveReply(run_id, f"{run_id}.{step}", "".join(pieces))
        for run_id, (step, pieces) in steps.items()
    ]


def _lost_ownership(session_id: str) -> Unavailable:
    return Unavailable(
        f"this replica lost the ownership of session {session_id}; retry",
        reason="OWNERSHIP_LOST",
    )
