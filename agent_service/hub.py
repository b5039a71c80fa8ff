"""The service's sessions: loading, accepting messages, starting and cancelling runs.

The Hub is what the servicer and the Chat streams talk to. It loads a session
on first use (its log window from the durable log, so `seq` continues where it
was), feeds each session's pure SessionState what happens (a message, a run's end,
a cancel, shutdown) and carries out the effects it returns in order: persist
an acceptance, append an event, start a run on the supervisor, cancel one, end
a queued run that will never start. Idle sessions are unloaded by a small loop
of their own. A run's work is the agent loop, handed in as `run_body` (the hub
knows no model).

Calling rule: every method runs on the service's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from agent_relay.v1 import agent_pb2 as pb
from agent_service.config import ServiceSettings
from agent_service.errors import FailedPrecondition, NotFound, Unavailable
from agent_service.eventlog import SessionLog
from agent_service.ids import new_id, now_ms
from agent_service.log import EventLog
from agent_service.log_writer import LogWriter
from agent_service.run_supervisor import LiveReply, RunHandle, RunSupervisor
from agent_service.runs import BusyPolicy
from agent_service.session import Session
from agent_service.session_state import (
    AppendEvent,
    Busy,
    CancelRun,
    Duplicate,
    Effect,
    EndUnstarted,
    PersistAcceptance,
    StartRun,
    completion_of_unstarted,
)
from agent_service.store import ConversationStore, MessageRecord, RunRecord, SessionRecord
from agent_service.tools.base import ToolRegistry
from agent_service.tools.executor import ToolCallRunner

log = logging.getLogger(__name__)

RunBody = Callable[[Session, RunHandle], Awaitable[None]]
"""A run's work (agent.AgentLoop): runs to the run's end, never raises."""


class Hub:
    """Every live session of this process. See the module docstring."""

    def __init__(
        self,
        settings: ServiceSettings,
        store: ConversationStore,
        event_log: EventLog,
        tools: ToolRegistry,
        run_body: RunBody,
    ) -> None:
        self.settings = settings
        self.store = store
        self.event_log = event_log
        self.tools = tools
        self.writer = LogWriter(event_log, retention_events=settings.retention_events)
        self.supervisor = RunSupervisor()
        self.accepting = True
        self.direct_calls: dict[str, ToolCallRunner] = {}
        self._run_body = run_body
        self._sessions: dict[str, Session] = {}
        self._loading: dict[str, asyncio.Task[Session]] = {}
        self._unloader: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the log writer and the idle-session unloader."""
        self.writer.start()
        if self._unloader is None:
            self._unloader = asyncio.create_task(self._unload_idle(), name="unload-idle")

    # -- sessions ---------------------------------------------------------------

    async def create_session(self, user_id: str, title: str) -> pb.Session:
        """Create and store a new session. It is loaded where it is first used, which may be
        another replica."""
        self._check_accepting()
        record = SessionRecord(new_id("s"), user_id, title, now_ms())
        await self.store.create_session(record)
        return pb.Session(
            session_id=record.session_id,
            title=title,
            user_id=user_id,
            created_unix_ms=record.created_ms,
            run_state=pb.RUN_STATE_IDLE,
        )

    async def session(self, session_id: str) -> Session:
        """The loaded session. Raises NotFound when it does not exist."""
        loaded = self._sessions.get(session_id)
        if loaded is not None:
            return loaded
        task = self._loading.get(session_id)
        if task is None:
            task = asyncio.ensure_future(self._load(session_id))
            self._loading[session_id] = task
            task.add_done_callback(lambda _: self._loading.pop(session_id, None))
        return await asyncio.shield(task)

    async def _load(self, session_id: str) -> Session:
        record = await self.store.get_session(session_id)
        if record is None:
            raise NotFound(f"no session {session_id!r}", reason="SESSION_NOT_FOUND")
        capacity = self.settings.retention_events
        head = await self.event_log.head(session_id)
        window = SessionLog(
            session_id, capacity=capacity, durable_head=max(head, record.seq_reserved)
        )
        if head:
            window.restore(await self.event_log.read_tail(session_id, capacity))
        session = Session(record, window, self.writer)
        self._sessions[session_id] = session
        return session

    def loaded_session(self, session_id: str) -> Session | None:
        """The session if it is loaded in this process, else None (no I/O)."""
        return self._sessions.get(session_id)

    def loaded(self) -> Iterable[Session]:
        """The sessions loaded in this process."""
        return self._sessions.values()

    def live_replies(self, session_id: str, through_seq: int) -> list[LiveReply]:
        """The replies a session's runs are streaming, as of log position `through_seq`."""
        return self.supervisor.live_replies(session_id, through_seq)

    async def _unload_idle(self) -> None:
        """Drop sessions idle for session_idle_unload_s, so memory follows the sessions in
        use. Their logs stay durable: a later load continues at the same seq."""
        idle_s = self.settings.session_idle_unload_s
        period = min(max(idle_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session_id, session in list(self._sessions.items()):
                if not session.quiescent:
                    session.idle_since = None
                elif session.idle_since is None:
                    session.idle_since = now
                elif now - session.idle_since >= idle_s:
                    del self._sessions[session_id]
                    log.debug("unloaded idle session %s", session_id)

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

        Returns once the acceptance is durable. A retried id returns the first
        acceptance with `duplicate` set. Raises FailedPrecondition when the session
        is busy and the policy is `reject`.
        """
        self._check_accepting()
        session = await self.session(session_id)
        async with session.accept_lock:
            stored = None
            if session.state.known_acceptance(message_id) is None:
                stored = await self._stored_acceptance(session_id, message_id)
            run_id = new_id("r")
            outcome = session.state.receive_message(
                message_id, text, run_id, policy or BusyPolicy(self.settings.busy_policy), stored
            )
            if isinstance(outcome, Duplicate):
                return outcome.accepted
            if isinstance(outcome, Busy):
                raise FailedPrecondition(
                    "a run is active in this session and busy_policy is reject", reason="BUSY"
                )
            session.runs[run_id] = RunHandle(
                run_id, session_id, message_id, dict(trace_context or {})
            )
            accepted = await self._carry_out(session, outcome.effects)
        assert accepted is not None, "an accepted message appends its acceptance"
        await session.durable(accepted.seq)
        return accepted

    async def _stored_acceptance(
        self, session_id: str, message_id: str
    ) -> pb.MessageAccepted | None:
        stored = await self.store.find_user_message(session_id, message_id)
        if stored is None:
            return None
        return pb.MessageAccepted(
            message_id=message_id, text=stored.text, run_id=stored.run_id, seq=stored.accept_seq
        )

    async def _carry_out(
        self, session: Session, effects: list[Effect]
    ) -> pb.MessageAccepted | None:
        """Carry out a SessionState's effects in order; returns the acceptance appended, if
        any, with its seq."""
        accepted = None
        for effect in effects:
            if isinstance(effect, PersistAcceptance):
                await self._persist_acceptance(session, effect)
            elif isinstance(effect, AppendEvent):
                event = session.append(effect.event)
                if event.HasField("message_accepted"):
                    accepted = session.state.receive_appended(event.message_accepted, event.seq)
                    await self.store.note_accept_seq(
                        session.session_id, accepted.message_id, event.seq
                    )
            elif isinstance(effect, StartRun):
                self._start(session, session.runs[effect.run_id])
            elif isinstance(effect, CancelRun):
                run = session.runs.get(effect.run_id)
                if run is not None:
                    run.cancel(effect.reason)
            elif isinstance(effect, EndUnstarted):
                await self._end_unstarted(session, effect)
        return accepted

    async def _persist_acceptance(self, session: Session, effect: PersistAcceptance) -> None:
        created = now_ms()
        await self.store.accept_user_message(
            MessageRecord(
                session.session_id,
                effect.message_id,
                "user",
                effect.text,
                effect.run_id,
                "queued" if effect.queued else "complete",
                created,
            ),
            RunRecord(
                effect.run_id,
                session.session_id,
                effect.message_id,
                "queued" if effect.queued else "running",
                started_ms=created,
            ),
            title=effect.title,
        )

    async def _end_unstarted(self, session: Session, effect: EndUnstarted) -> None:
        """A queued run never starts: its run and user message say why, then its completion."""
        session.runs.pop(effect.run_id, None)
        await self.store.update_run(
            RunRecord(
                effect.run_id,
                session.session_id,
                effect.user_message_id,
                "ended",
                finish_reason=effect.reason,
                ended_ms=now_ms(),
            ),
            user_message_status=effect.reason,
        )
        session.append(completion_of_unstarted(effect.run_id, effect.reason))

    def _start(self, session: Session, run: RunHandle) -> None:
        async def then(ended: RunHandle) -> None:
            session.runs.pop(ended.run_id, None)
            effects = session.state.receive_run_ended(ended.run_id, accepting=self.accepting)
            await self._carry_out(session, effects)

        self.supervisor.start(run, lambda: self._run_body(session, run), then)

    async def cancel_run(self, session_id: str, run_id: str) -> bool:
        """Cancel a run (`run_id` empty: the active one). False when none is going."""
        session = await self.session(session_id)
        effects = session.state.receive_cancel(run_id)
        for effect in effects:
            if isinstance(effect, CancelRun):
                run = session.runs.get(effect.run_id)
                return run.cancel(effect.reason) if run is not None else False
        await self._carry_out(session, effects)
        return bool(effects)

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        """Cancel one tool call (of a session's run, or a direct ExecuteTool call)."""
        if not session_id:
            runner = self.direct_calls.get(call_id)
            return runner.cancel("requested") if runner else False
        session = await self.session(session_id)
        for run in session.runs.values():
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
        """Stop accepting; let runs finish for grace_s; end the rest as interrupted; make
        every event durable."""
        self.accepting = False
        await self.supervisor.shutdown(grace_s)
        for session in list(self._sessions.values()):
            await self._carry_out(session, session.state.receive_shutdown())
        for runner in list(self.direct_calls.values()):
            runner.cancel("interrupted")
        if self._unloader is not None:
            self._unloader.cancel()
        await self.writer.stop()
