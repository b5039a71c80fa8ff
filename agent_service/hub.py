"""Live sessions: their event logs, subscribers and runs, in this process.

The Hub is the service's state. It loads a session on first use, accepts user
messages (once per message id), starts and cancels runs by the session's
RunQueue, and wakes the subscribers of a session when its log grows. The
decisions live in the pure cores (eventlog.SessionLog, runs.RunQueue); this
module carries them out with asyncio and the store.

Calling rules: every method runs on the service's event loop. `append()` is
synchronous so that a model delta or a tool's progress report costs no await.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent_relay.v1 import agent_pb2 as pb
from agent_service.config import ServiceSettings
from agent_service.errors import FailedPrecondition, NotFound, Unavailable
from agent_service.eventlog import SessionLog
from agent_service.ids import new_id, now_ms
from agent_service.providers.base import ModelProvider
from agent_service.runs import BusyPolicy, RunQueue
from agent_service.store import ConversationStore, MessageRecord, RunRecord, SessionRecord
from agent_service.tools.base import ToolRegistry
from agent_service.tools.executor import ToolCallRunner

log = logging.getLogger(__name__)

# seq numbers a process reserves per session at a time; a new reservation is
# written when half of the current one is used (see store.py).
SEQ_RESERVATION = 10_000
# client message ids remembered per session for idempotent retries without a
# store read; older ones are found in the store.
ACCEPTED_CACHE = 1_000


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


@dataclass(eq=False)
class RunHandle:
    """A run of this process, queued or active."""

    run_id: str
    session_id: str
    user_message_id: str
    trace_context: dict[str, str] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None  # "cancelled" or "interrupted" once asked to stop
    tools: dict[str, ToolCallRunner] = field(default_factory=dict)
    # the assistant message being streamed: id, its text so far, whether its model
    # step is still going, and how many pieces of it the store has
    streaming_message_id: str = ""
    streaming_text: list[str] = field(default_factory=list)
    streaming: bool = False
    streaming_flushed: int = 0

    def cancel(self, reason: str) -> bool:
        """Ask the run to stop with `reason`. False when it already was asked."""
        if self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        if self.task is not None:
            self.task.cancel()
        return True


class SessionRuntime:
    """One loaded session: its log, subscribers, run queue and runs."""

    def __init__(self, record: SessionRecord, store: ConversationStore, capacity: int) -> None:
        self.record = record
        self.log = SessionLog(
            record.session_id, capacity=capacity, first_seq=record.seq_reserved + 1
        )
        self.queue = RunQueue()
        self.runs: dict[str, RunHandle] = {}
        self.subscribers: set[Subscriber] = set()
        self.accept_lock = asyncio.Lock()
        self.accepted: OrderedDict[str, pb.MessageAccepted] = OrderedDict()
        self._store = store
        self._reserved = record.seq_reserved
        self._held: list[pb.SessionEvent] = []
        self._reserving: asyncio.Task[None] | None = None
        self.idle_since: float | None = None  # monotonic time it was first seen idle

    @property
    def quiescent(self) -> bool:
        """No subscriber, no run, nothing waiting to be appended: safe to unload."""
        return not (
            self.subscribers
            or self.runs
            or self.queue.busy
            or self._held
            or (self._reserving is not None and not self._reserving.done())
        )

    @property
    def session_id(self) -> str:
        return self.record.session_id

    async def reserve_initial(self) -> None:
        """Reserve the first block of seq numbers before anything is appended."""
        self._reserved = self.log.next_seq - 1 + SEQ_RESERVATION
        await self._store.reserve_seq(self.session_id, self._reserved)

    def append(self, event: pb.SessionEvent) -> None:
        """Append to the log and wake subscribers. Never reuses a seq: events beyond
        the written reservation wait (in order) until the next one is written."""
        event.time_unix_ms = now_ms()
        if self._held or self.log.next_seq > self._reserved:
            self._held.append(event)
            self._reserve_more()
            return
        self.log.append(event)
        if self.log.next_seq > self._reserved - SEQ_RESERVATION // 2:
            self._reserve_more()
        for subscriber in self.subscribers:
            subscriber.notify(self.session_id)

    def _reserve_more(self) -> None:
        if self._reserving is None or self._reserving.done():
            self._reserving = asyncio.create_task(self._write_reservation())

    async def _write_reservation(self) -> None:
        upto = self.log.next_seq - 1 + len(self._held) + SEQ_RESERVATION
        await self._store.reserve_seq(self.session_id, upto)
        self._reserved = upto
        held, self._held = self._held, []
        for event in held:
            self.append(event)

    def remember(self, accepted: pb.MessageAccepted) -> None:
        """Keep an acceptance for quick idempotent retries."""
        self.accepted[accepted.message_id] = accepted
        if len(self.accepted) > ACCEPTED_CACHE:
            self.accepted.popitem(last=False)

    def to_proto(self) -> pb.Session:
        """The session's summary."""
        active = self.queue.active or ""
        return pb.Session(
            session_id=self.session_id,
            title=self.record.title,
            user_id=self.record.user_id,
            created_unix_ms=self.record.created_ms,
            head_seq=self.log.head_seq,
            run_state=pb.RUN_STATE_RUNNING if active else pb.RUN_STATE_IDLE,
            active_run_id=active,
        )


RunStarter = Callable[[SessionRuntime, RunHandle], None]


class Hub:
    """Every live session of this process. See the module docstring."""

    def __init__(
        self,
        settings: ServiceSettings,
        store: ConversationStore,
        provider: ModelProvider,
        tools: ToolRegistry,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.tools = tools
        self.accepting = True
        self.direct_calls: dict[str, ToolCallRunner] = {}
        self._sessions: dict[str, SessionRuntime] = {}
        self._loading: dict[str, asyncio.Task[SessionRuntime]] = {}
        self._start_run: RunStarter | None = None
        self._partials: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background writer of streaming replies (see _write_partials)."""
        if self._partials is None:
            self._partials = asyncio.create_task(self._write_partials(), name="partials")

    async def _write_partials(self) -> None:
        """Every partial_flush_interval_s, store the text so far of every reply still
        streaming, all in one transaction: a crash keeps most of each reply, at one
        commit per interval however many runs stream."""
        while True:
            await asyncio.sleep(self.settings.partial_flush_interval_s)
            self._unload_idle_sessions()
            batch = []
            for rt in self._sessions.values():
                for run in rt.runs.values():
                    if run.streaming and len(run.streaming_text) != run.streaming_flushed:
                        run.streaming_flushed = len(run.streaming_text)
                        batch.append(
                            MessageRecord(
                                rt.session_id,
                                run.streaming_message_id,
                                "assistant",
                                "".join(run.streaming_text),
                                run.run_id,
                                "streaming",
                                now_ms(),
                            )
                        )
            if batch:
                try:
                    await self.store.upsert_partials(batch)
                except Exception:
                    log.exception("could not store %d partial replies", len(batch))

    def _unload_idle_sessions(self) -> None:
        """Drop sessions idle for session_idle_unload_s, so memory follows the sessions
        in use, not every session ever touched. The store keeps everything durable."""
        now = time.monotonic()
        for session_id, rt in list(self._sessions.items()):
            if not rt.quiescent:
                rt.idle_since = None
            elif rt.idle_since is None:
                rt.idle_since = now
            elif now - rt.idle_since >= self.settings.session_idle_unload_s:
                del self._sessions[session_id]

    def set_run_starter(self, start: RunStarter) -> None:
        """Install the function that starts a run's task (agent.start_run)."""
        self._start_run = start

    # -- sessions ---------------------------------------------------------------

    async def create_session(self, user_id: str, title: str) -> SessionRuntime:
        """Create, store and load a new session."""
        self._check_accepting()
        record = SessionRecord(new_id("s"), user_id, title, now_ms(), 0)
        await self.store.create_session(record)
        return await self.session(record.session_id)

    async def session(self, session_id: str) -> SessionRuntime:
        """The loaded session. Raises NotFound when it does not exist."""
        runtime = self._sessions.get(session_id)
        if runtime is not None:
            return runtime
        task = self._loading.get(session_id)
        if task is None:
            task = asyncio.ensure_future(self._load(session_id))
            self._loading[session_id] = task
            task.add_done_callback(lambda _: self._loading.pop(session_id, None))
        return await asyncio.shield(task)

    async def _load(self, session_id: str) -> SessionRuntime:
        record = await self.store.get_session(session_id)
        if record is None:
            raise NotFound(f"no session {session_id!r}", reason="SESSION_NOT_FOUND")
        runtime = SessionRuntime(record, self.store, self.settings.retention_events)
        await runtime.reserve_initial()
        self._sessions[session_id] = runtime
        return runtime

    async def announce_interrupted(self, runs: Iterable[RunRecord]) -> None:
        """Start-up: end each run the last process left in flight with an `interrupted`
        completion in its session's new log, so every subscriber sees it end."""
        for run in runs:
            rt = await self.session(run.session_id)
            records = await self.store.context_for_run(run.session_id, run.run_id)
            text = "".join(
                m.text for m in records if m.run_id == run.run_id and m.role == "assistant"
            )
            rt.append(
                pb.SessionEvent(
                    run_id=run.run_id,
                    run_completed=pb.RunCompleted(
                        finish_reason=pb.FINISH_REASON_INTERRUPTED,
                        assistant_message_id=f"{run.run_id}.0" if run.status == "running" else "",
                        text=text,
                    ),
                )
            )

    def loaded_session(self, session_id: str) -> SessionRuntime | None:
        """The session if it is loaded in this process, else None (no I/O)."""
        return self._sessions.get(session_id)

    def loaded(self) -> Iterable[SessionRuntime]:
        """The sessions loaded in this process."""
        return self._sessions.values()

    # -- messages and runs ----------------------------------------------------------

    async def send_message(
        self,
        session_id: str,
        message_id: str,
        text: str,
        policy: BusyPolicy | None,
        trace_context: dict[str, str] | None = None,
    ) -> pb.MessageAccepted:
        """Accept a user message once per id; start or queue its run.

        A retried id returns the first acceptance with `duplicate` set. Raises
        FailedPrecondition when the session is busy and the policy is `reject`.
        """
        self._check_accepting()
        rt = await self.session(session_id)
        async with rt.accept_lock:
            earlier = await self._earlier_acceptance(rt, message_id)
            if earlier is not None:
                return earlier
            run = RunHandle(new_id("r"), session_id, message_id, dict(trace_context or {}))
            decision = rt.queue.receive_message(
                run.run_id, policy or BusyPolicy(self.settings.busy_policy)
            )
            if decision.rejected:
                raise FailedPrecondition(
                    "a run is active in this session and busy_policy is reject", reason="BUSY"
                )
            rt.runs[run.run_id] = run
            created = now_ms()
            if not rt.record.title:
                rt.record = _with_title(rt.record, text)
            await self.store.accept_user_message(
                MessageRecord(
                    session_id, message_id, "user", text, run.run_id, "complete", created
                ),
                RunRecord(
                    run.run_id,
                    session_id,
                    message_id,
                    "queued" if decision.queued else "running",
                    started_ms=created,
                ),
                title=rt.record.title,
            )
            accepted = pb.MessageAccepted(
                message_id=message_id, text=text, run_id=run.run_id, queued=decision.queued
            )
            event = pb.SessionEvent(run_id=run.run_id, message_accepted=accepted)
            rt.append(event)
            accepted = pb.MessageAccepted()
            accepted.CopyFrom(event.message_accepted)
            accepted.seq = event.seq
            rt.remember(accepted)
            await self.store.note_accept_seq(session_id, message_id, event.seq)
        for dropped in decision.dropped:
            await self._end_unstarted(rt, dropped, "cancelled")
        if decision.cancel_active:
            rt.runs[decision.cancel_active].cancel("cancelled")
        if decision.start_now:
            self._launch(rt, run)
        return accepted

    async def _earlier_acceptance(
        self, rt: SessionRuntime, message_id: str
    ) -> pb.MessageAccepted | None:
        cached = rt.accepted.get(message_id)
        if cached is None:
            stored = await self.store.find_user_message(rt.session_id, message_id)
            if stored is None:
                return None
            cached = pb.MessageAccepted(
                message_id=message_id, text=stored.text, run_id=stored.run_id, seq=stored.accept_seq
            )
        duplicate = pb.MessageAccepted()
        duplicate.CopyFrom(cached)
        duplicate.duplicate = True
        return duplicate

    def _launch(self, rt: SessionRuntime, run: RunHandle) -> None:
        if self._start_run is None:
            raise RuntimeError("no run starter installed")
        self._start_run(rt, run)

    async def run_ended(self, rt: SessionRuntime, run: RunHandle) -> None:
        """Called by a run as its very last step: start whatever waits behind it."""
        rt.runs.pop(run.run_id, None)
        next_id = rt.queue.receive_run_ended(run.run_id)
        if next_id is None:
            return
        if not self.accepting:
            await self._end_unstarted(rt, next_id, "interrupted")
            return
        self._launch(rt, rt.runs[next_id])

    async def _end_unstarted(self, rt: SessionRuntime, run_id: str, reason: str) -> None:
        """End a queued run that never started, with a completion saying why."""
        rt.queue.remove_waiting(run_id)
        run = rt.runs.pop(run_id, None)
        finish = (
            pb.FINISH_REASON_CANCELLED if reason == "cancelled" else pb.FINISH_REASON_INTERRUPTED
        )
        user_message_id = run.user_message_id if run else ""
        await self.store.update_run(
            RunRecord(
                run_id,
                rt.session_id,
                user_message_id,
                "ended",
                finish_reason=reason,
                ended_ms=now_ms(),
            )
        )
        rt.append(
            pb.SessionEvent(run_id=run_id, run_completed=pb.RunCompleted(finish_reason=finish))
        )

    async def cancel_run(self, session_id: str, run_id: str) -> bool:
        """Cancel a run (`run_id` empty: the active one). False when none is going."""
        rt = await self.session(session_id)
        target = run_id or rt.queue.active or ""
        if target in rt.queue.waiting:
            await self._end_unstarted(rt, target, "cancelled")
            return True
        run = rt.runs.get(target)
        return run.cancel("cancelled") if run is not None and run.task is not None else False

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        """Cancel one tool call (of a session's run, or a direct ExecuteTool call)."""
        if not session_id:
            runner = self.direct_calls.get(call_id)
            return runner.cancel("requested") if runner else False
        rt = await self.session(session_id)
        for run in rt.runs.values():
            runner = run.tools.get(call_id)
            if runner is not None:
                return runner.cancel("requested")
        return False

    # -- shutdown -----------------------------------------------------------------

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise Unavailable(
                "the service is shutting down; retry on another replica", reason="SHUTTING_DOWN"
            )

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting; let runs finish for grace_s; end the rest as interrupted."""
        self.accepting = False
        tasks = [r.task for rt in self._sessions.values() for r in rt.runs.values() if r.task]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for rt in self._sessions.values():
                for run in list(rt.runs.values()):
                    if run.task in pending:
                        run.cancel("interrupted")
            if pending:
                await asyncio.wait(pending, timeout=max(grace_s, 5.0))
        for rt in self._sessions.values():
            for run_id in list(rt.queue.waiting):
                await self._end_unstarted(rt, run_id, "interrupted")
        for runner in list(self.direct_calls.values()):
            runner.cancel("interrupted")
        if self._partials is not None:
            self._partials.cancel()


def _with_title(record: SessionRecord, text: str) -> SessionRecord:
    title = " ".join(text.split())
    if len(title) > 80:
        title = title[:77] + "..."
    return SessionRecord(
        record.session_id, record.user_id, title, record.created_ms, record.seq_reserved
    )
