"""One loaded session: its decisions, its log window, its subscribers and run handles.

A Session joins the pure parts (session_state.SessionState for what to accept
and run, eventlog.SessionLog for seq and the window) to the things that do I/O
(the log writer, subscribers' wake-ups, run handles). Appending is synchronous:
`append()` stamps the event and hands it to the log writer, which makes it
durable and then calls `receive_durable()`, which publishes it and wakes the
subscribers. `durable(seq)` waits for that, for replies that must not promise
more than the log holds.
"""

from __future__ import annotations

import asyncio

from agent_relay.v1 import agent_pb2 as pb
from agent_service.eventlog import SessionLog
from agent_service.ids import now_ms
from agent_service.log_writer import LogWriter
from agent_service.run_supervisor import RunHandle
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

    def __init__(self, record: SessionRecord, log: SessionLog, writer: LogWriter) -> None:
        self.record = record
        self.state = SessionState(record.title)
        self.log = log
        self.runs: dict[str, RunHandle] = {}  # queued and active
        self.subscribers: set[Subscriber] = set()
        self.accept_lock = asyncio.Lock()  # one message at a time through the state
        self.idle_since: float | None = None  # monotonic time it was first seen idle
        self._writer = writer
        self._durable_waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def quiescent(self) -> bool:
        """No subscriber, no run, nothing waiting to be durable: safe to unload."""
        return not (self.subscribers or self.runs or self.state.busy or self.log.unpublished)

    def append(self, event: pb.SessionEvent) -> pb.SessionEvent:
        """Stamp the event (time, session, seq) and queue it for the durable log."""
        event.time_unix_ms = now_ms()
        self.log.stamp(event)
        self._writer.submit(self)
        return event

    def take_unsubmitted(self) -> list[pb.SessionEvent]:
        return self.log.take_unsubmitted()

    def receive_durable(self, seq: int) -> None:
        """The log writer made events through `seq` durable: publish, wake, resolve."""
        self.log.publish_through(seq)
        for subscriber in self.subscribers:
            subscriber.notify(self.session_id)
        if self._durable_waiters:
            still = []
            for upto, future in self._durable_waiters:
                if upto <= seq:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((upto, future))
            self._durable_waiters = still

    async def durable(self, seq: int) -> None:
        """Return once the event with `seq` is durable and visible."""
        if seq <= self.log.head_seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable_waiters.append((seq, future))
        await future

    def to_proto(self) -> pb.Session:
        """The session's summary."""
        active = self.state.queue.active or ""
        return pb.Session(
            session_id=self.session_id,
            title=self.state.title,
            user_id=self.record.user_id,
            created_unix_ms=self.record.created_ms,
            head_seq=self.log.head_seq,
            run_state=pb.RUN_STATE_RUNNING if active else pb.RUN_STATE_IDLE,
            active_run_id=active,
        )
