"""The service's sessions: loading, accepting messages, starting and cancelling runs.

The Hub is what the servicer and the Chat streams talk to. It loads a session
on first use (its log window from the durable log, so `seq` continues where it
was), feeds each session's pure SessionState what happens (a message, a run's end,
a cancel, shutdown) and carries out the effects it returns in order: persist
an acceptance, append an event, start a run on the supervisor, cancel one, end
a queued run that will never start. Idle sessions are unloaded by a small loop
of their own. A run's work is the agent loop, handed in as `run_body` (the hub
knows no model).

Replicas. With a shared lease (lease.py: the log on Redis) a session is loaded
either as its owner (this replica holds its lease: what is above) or as a
follower (its window fed from the shared log, for Chat joins). Commands go to
the owner: `send_message` and the cancels resolve it (`_owner`), carry the
command out here when this replica owns the session, take the lease when
nobody holds it, and forward it (forward.py) when another replica does. When
this replica takes a session over (a command, or the takeover loop finding
runs in flight with no owner), runs the last owner started end `interrupted`
(recovery.end_run, idempotent) and the runs it had queued go on, here. A
session whose lease is lost (or whose append is fenced) stops its runs without
writing anything more and becomes a follower.

A Redis restart. The owner keeps its sessions when it lives through it: its
lease is put back, its writer writes what waited (and its window again, when
Redis lost it: log_writer.py), and its runs go on. Other replicas wait a TTL
before taking a lease Redis does not show (lease_redis.py), their followers
read again from their head, and a fenced session that cannot follow yet keeps
retrying with its subscribers. When the owner died too, the next one continues
after the store's seq reservation: clients are told of a gap. While the event
log does not answer, a message is refused before it is stored (UNAVAILABLE),
so one told to retry never runs unseen.

Calling rule: every method runs on the service's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from agent_relay.v1 import agent_pb2 as pb
from agent_service.config import ServiceSettings
from agent_service.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Overloaded,
    Unavailable,
)
from agent_service.eventlog import SessionLog
from agent_service.forward import POLICIES, Forwarder
from agent_service.ids import new_id, new_run_id, now_ms
from agent_service.lease import Holder, Lease, LocalLease
from agent_service.log import EventLog, Fenced
from agent_service.log_writer import LogWriter
from agent_service.recovery import end_run
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
from agent_service.store import (
    ConversationStore,
    DuplicateMessage,
    MessageRecord,
    RunRecord,
    SessionRecord,
)
from agent_service.tools.base import ToolRegistry
from agent_service.tools.executor import ToolCallRunner
from relay_shared.admission import Admission

log = logging.getLogger(__name__)

RunBody = Callable[[Session, RunHandle], Awaitable[None]]
"""A run's work (agent.AgentLoop): runs to the run's end, never raises."""

FOLLOW_RETRY_FIRST_S = 0.05
FOLLOW_RETRY_MAX_S = 2.0
TAKEOVER_PERIOD_S = 1.0


class Hub:
    """Every live session of this process. See the module docstring."""

    def __init__(
        self,
        settings: ServiceSettings,
        store: ConversationStore,
        event_log: EventLog,
        tools: ToolRegistry,
        run_body: RunBody,
        lease: Lease | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.event_log = event_log
        self.tools = tools
        self.lease: Lease = lease or LocalLease()
        # with replicas the log (Redis) may lose data: seqs are reserved in the store
        self.writer = LogWriter(
            event_log,
            retention_events=settings.retention_events,
            reserve=store.reserve_seq if self.lease.shared else None,
            hold_max_s=settings.delta_hold_ms / 1000,
        )
        self.supervisor = RunSupervisor()
        self.accepting = True
        self.direct_calls: dict[str, ToolCallRunner] = {}
        self._run_body = run_body
        self._sessions: dict[str, Session] = {}
        self._loading: dict[str, asyncio.Task[Session]] = {}
        self._unloader: asyncio.Task[None] | None = None
        self.forwarder = forwarder or Forwarder(
            self.lease.replica_id, timeout_s=settings.backend_timeout_s
        )
        self._promoting: dict[str, asyncio.Lock] = {}
        self.admission = Admission(settings.max_pending_accepts)
        self._taker: asyncio.Task[None] | None = None
        self._demotions: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the log writer and the idle-session unloader; with a shared lease, also
        the loop that takes over sessions whose owner is gone."""
        self.writer.start()
        if self._unloader is None:
            self._unloader = asyncio.create_task(self._unload_idle(), name="unload-idle")
        if self.lease.shared and self._taker is None:
            self.lease.on_lost(self._lease_lost)
            self._taker = asyncio.create_task(self._take_over_loop(), name="take-over")

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
        token = self.lease.held(session_id)
        session = await self._new_session(record, owner=token is not None, fence=token or 0)
        self._sessions[session_id] = session
        return session

    async def _new_session(self, record: SessionRecord, *, owner: bool, fence: int) -> Session:
        """A session with its window read from the durable log: an owner, or a follower
        whose window the log feeds from then on."""
        session_id = record.session_id
        capacity = self.settings.retention_events
        head = await self.event_log.head(session_id)
        tail = await self.event_log.read_tail(session_id, capacity) if head else []
        if tail and tail[-1].seq > head:
            head = tail[-1].seq  # the owner appended between the two reads (a follower's)
        # an owner whose log has none of the session's events (new, or lost with its Redis)
        # continues after the store's reservation: never at a seq a client may have seen.
        # A follower starts at the log's head: the owner may have reserved seqs it has not
        # appended yet, and a log that starts again later shows the follower a gap.
        start = (head or record.seq_reserved) if owner else head
        window = SessionLog(
            session_id,
            capacity=capacity,
            durable_head=start,
            merge_delta_chars=self.settings.merge_delta_chars,
        )
        window.restore(tail)
        session = Session(
            record, window, self.writer, owner=owner, fence=fence, on_refused=self._fenced
        )
        if not owner:
            session.follower_task = asyncio.create_task(
                self._follow(session), name=f"follow {session_id}"
            )
        return session

    async def _follow(self, session: Session) -> None:
        """Feed a follower's window from the shared log, for as long as it is loaded;
        a log that does not answer is retried with backoff, from the window's head."""
        delay = FOLLOW_RETRY_FIRST_S
        while True:
            try:
                async for events in self.event_log.follow(session.session_id, session.log.head_seq):
                    session.receive_followed(events)
                    delay = FOLLOW_RETRY_FIRST_S
            except Exception as exc:
                log.warning("following session %s: %s; retrying", session.session_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, FOLLOW_RETRY_MAX_S)

    async def catch_up(self, session: Session) -> None:
        """A follower reads what the log has beyond its window now (a client resumes at a
        seq the owner already sent it, before the follower's reader got there)."""
        if session.owner:
            return
        events = await self.event_log.read_after(
            session.session_id, session.log.head_seq, self.settings.retention_events
        )
        session.receive_followed(events)

    async def may_come_back(self, session: Session, seq: int) -> bool:
        """Whether a follower whose log is short of `seq` may yet reach it: the log holds
        nothing of the session (caught up: Redis restarted empty) and the seq is within
        what the store reserved, so some replica may have appended it before the loss. A
        subscriber there waits: the owner writes its window again (one append, past every
        seq a client saw), or a new owner continues past the reservation (a gap). Any other
        seq beyond the head is a client's error (OUT_OF_RANGE)."""
        if session.owner or not self.lease.shared or session.log.head_seq > 0:
            return False
        record = await self.store.get_session(session.session_id)
        return record is not None and seq <= record.seq_reserved

    def _replace(self, old: Session | None, new: Session) -> None:
        """`new` is the session's runtime from now on; `old`'s subscribers move over."""
        if old is not None:
            if old.follower_task is not None:
                old.follower_task.cancel()
            new.subscribers |= old.subscribers
            old.subscribers.clear()
        self._sessions[new.session_id] = new
        for subscriber in new.subscribers:
            subscriber.notify(new.session_id)

    # -- ownership ------------------------------------------------------------------

    async def _owner(self, session_id: str, *, forwarded: bool) -> Session | Holder:
        """The session when this replica owns it (taking the lease when nobody holds it),
        else who does. A forwarded command for a session this replica does not own is
        UNAVAILABLE (retryable): ownership is moving."""
        session = await self.session(session_id)
        if session.owner and not session.fenced and self.lease.held(session_id) is not None:
            return session
        timeout = self.settings.backend_timeout_s
        for _ in range(2):  # a lease that expires between the two calls: try once more
            async with asyncio.timeout(timeout):
                token = await self.lease.acquire(session_id)
                holder = None if token is not None else await self.lease.holder(session_id)
            if token is not None:
                return await self._promote(session_id, token)
            if holder is not None:
                if forwarded:
                    raise Unavailable(
                        f"replica {self.lease.replica_id} does not own session {session_id}; retry",
                        reason="NOT_OWNER",
                    )
                return holder
        raise Unavailable(f"session {session_id}: no owner could be settled", reason="NO_OWNER")

    async def _promote(self, session_id: str, token: int) -> Session:
        """This replica now holds the lease with `token`: the session's runtime becomes an
        owner, and takes over what the last owner left in flight."""
        lock = self._promoting.setdefault(session_id, asyncio.Lock())
        async with lock:
            current = self._sessions.get(session_id)
            if current is not None and current.owner and not current.fenced:
                if token != current.fence:  # the lease lapsed: another owner may have written
                    current.context.invalidate()
                current.fence = token
                return current
            record = await self.store.get_session(session_id)  # its reservation as of now
            if record is None:
                raise NotFound(f"no session {session_id!r}", reason="SESSION_NOT_FOUND")
            if current is not None and current.follower_task is not None:
                current.follower_task.cancel()
            session = await self._new_session(record, owner=True, fence=token)
            self._replace(current, session)
            try:
                async with (
                    session.accept_lock,
                    asyncio.timeout(2 * self.settings.backend_timeout_s),
                ):
                    await self._take_over(session)
            except Exception as exc:
                # give the session up whole: recovery is idempotent, and the next owner
                # (this replica's takeover loop, or another) starts it again
                log.warning("could not take session %s over: %s", session_id, exc)
                session.receive_refused(exc)
                with contextlib.suppress(Exception):
                    await self.lease.release(session_id)
                raise Unavailable(
                    f"session {session_id} is changing owner; retry", reason="TAKING_OVER"
                ) from exc
            return session

    async def _take_over(self, session: Session) -> None:
        """Runs the last owner left in flight in this session: a started one ends
        interrupted (recovery.end_run, idempotent); queued ones go on here, in order."""
        runs = await self.store.runs_in_flight(session.session_id)
        for run in runs:
            if run.status == "running":
                await end_run(self.store, session, run)
        for run in runs:
            if run.status == "queued" and run.run_id not in session.runs:
                log.info("run %s of session %s goes on here", run.run_id, run.session_id)
                session.runs[run.run_id] = RunHandle(
                    run.run_id, run.session_id, run.user_message_id
                )
                await self._carry_out(
                    session, session.state.receive_resumed(run.run_id, run.user_message_id)
                )

    async def _take_over_loop(self) -> None:
        """Every TAKEOVER_PERIOD_S (at most half a TTL): sessions with runs in flight and no
        owner are taken over, so a run a dead replica started ends, and its queue goes on,
        within about one TTL and one period. Costs one store query per period."""
        period = max(min(self.settings.lease_ttl_s / 2, TAKEOVER_PERIOD_S), 0.05)
        while True:
            try:
                await self.take_over_orphans()
            except Exception as exc:
                log.warning("looking for sessions to take over: %s", exc)
            await asyncio.sleep(period)

    async def take_over_orphans(self) -> None:
        """Take over every session with runs in flight whose owner is gone: nobody holds
        its lease, or an earlier process of this replica id does (a replica restarted
        under the same --replica-id takes its sessions back at once)."""
        if not self.accepting or not self.lease.settled:
            return  # after a Redis outage, live owners put their leases back first
        runs = await self.store.runs_in_flight()
        for session_id in dict.fromkeys(run.session_id for run in runs):
            loaded = self._sessions.get(session_id)
            if loaded is not None and loaded.owner and not loaded.fenced:
                continue
            holder = await self.lease.holder(session_id)
            if holder is not None and holder.replica_id != self.lease.replica_id:
                continue
            token = await self.lease.acquire(session_id)
            if token is not None:
                log.warning("taking over session %s: its owner is gone", session_id)
                await self._promote(session_id, token)

    def _lease_lost(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None and session.owner:
            session.receive_refused(Fenced(f"the lease of session {session_id} was lost"))

    def _fenced(self, session: Session) -> None:
        """The session lost its lease: stop its runs (they write nothing more: the session
        is fenced) and follow the log instead."""
        log.warning("session %s is owned elsewhere now: following it", session.session_id)
        for run in list(session.runs.values()):
            run.cancel("interrupted")
        session.runs.clear()
        task = asyncio.create_task(self._become_follower(session))
        self._demotions.add(task)
        task.add_done_callback(self._demotions.discard)

    async def _become_follower(self, session: Session) -> None:
        """Replace a fenced session by a follower, retrying with backoff while the log does
        not answer (it may be the outage that fenced it): its subscribers stay with it
        and move to the follower, so their streams go on."""
        lock = self._promoting.setdefault(session.session_id, asyncio.Lock())
        delay = FOLLOW_RETRY_FIRST_S
        while True:
            async with lock:
                if self._sessions.get(session.session_id) is not session:
                    return
                try:
                    follower = await self._new_session(session.record, owner=False, fence=0)
                except Exception as exc:
                    log.warning("cannot follow session %s yet: %s", session.session_id, exc)
                else:
                    self._replace(session, follower)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, FOLLOW_RETRY_MAX_S)

    def loaded_session(self, session_id: str) -> Session | None:
        """The session if it is loaded in this process, else None (no I/O)."""
        return self._sessions.get(session_id)

    def loaded(self) -> Iterable[Session]:
        """The sessions loaded in this process."""
        return self._sessions.values()

    def live_replies(self, session_id: str, through_seq: int) -> list[LiveReply]:
        """The replies a session's runs are streaming, as of log position `through_seq`
        (a follower reads them from its window)."""
        session = self._sessions.get(session_id)
        if session is not None and not session.owner:
            return session.followed_replies(through_seq)
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
                    self._promoting.pop(session_id, None)
                    if session.follower_task is not None:
                        session.follower_task.cancel()
                    elif self.lease.shared and session.owner and not session.fenced:
                        try:  # another replica may take it without waiting for the TTL
                            await self.lease.release(session_id)
                        except Exception as exc:
                            log.warning("could not release session %s: %s", session_id, exc)
                    log.debug("unloaded idle session %s", session_id)

    # -- messages and runs ----------------------------------------------------------

    async def send_message(
        self,
        session_id: str,
        message_id: str,
        text: str,
        policy: BusyPolicy | None,
        trace_context: dict[str, str] | None = None,
        *,
        forwarded: bool = False,
        accept_by_ms: int = 0,
    ) -> pb.MessageAccepted:
        """Accept a user message once per id; start or queue its run.

        Returns once the acceptance is durable. A retried id returns the first
        acceptance with `duplicate` set. Raises FailedPrecondition when the session
        is busy and the policy is `reject`, Unavailable when the store, the log or
        the owning replica does not answer within backend_timeout_s (retry with
        the same id: it is accepted once). A session owned by another replica is
        sent there (forwarded: only once).

        Raises Overloaded, before anything is stored, when this process already
        accepts max_pending_accepts messages or more than it can accept before
        `accept_by_ms` (wall-clock ms, 0: none), or when that has passed at the moment
        of acceptance: the sender has given up or is about to, so the message must not
        be accepted behind its back. A resend of an id accepted here is answered as
        such, however late or loaded.
        """
        self._check_accepting()
        args = (session_id, message_id, text, policy, trace_context)
        loaded = self.loaded_session(session_id)
        if loaded is not None and loaded.state.known_acceptance(message_id) is not None:
            return await self._send_admitted(*args, forwarded=forwarded, accept_by_ms=0)
        left_s = (accept_by_ms - now_ms()) / 1000 if accept_by_ms else None
        wait_ms = self.admission.try_enter(time.monotonic(), left_s)
        if wait_ms is not None:
            raise Overloaded(
                f"{self.admission.depth} messages wait to be accepted here, more than it "
                "takes in at once or accepts before this one's deadline; nothing was "
                f"stored: send it again in {wait_ms} ms",
                retry_after_ms=wait_ms,
                reason="BACKLOG_FULL",
            )
        try:
            return await self._send_admitted(*args, forwarded=forwarded, accept_by_ms=accept_by_ms)
        finally:
            self.admission.leave(time.monotonic())

    def _refuse_if_expired(self, accept_by_ms: int) -> None:
        if self.admission.expired(accept_by_ms, now_ms()):
            wait_ms = self.admission.refuse_expired()
            raise Overloaded(
                "the message waited past its deadline to be accepted; nothing was stored: "
                f"send it again in {wait_ms} ms",
                retry_after_ms=wait_ms,
                reason="DEADLINE_PASSED",
            )

    async def _send_admitted(
        self,
        session_id: str,
        message_id: str,
        text: str,
        policy: BusyPolicy | None,
        trace_context: dict[str, str] | None,
        *,
        forwarded: bool,
        accept_by_ms: int,
    ) -> pb.MessageAccepted:
        # The deadline is checked where the id is known to be new (below): a resent id
        # that was accepted before gets its acceptance back, however late.
        owner = await self._owner(session_id, forwarded=forwarded)
        if isinstance(owner, Holder):
            return await self.forwarder.send(
                owner,
                pb.SendMessage(
                    session_id=session_id,
                    message_id=message_id,
                    text=text,
                    busy_policy=POLICIES[policy],
                    trace_context=trace_context or {},
                    accept_by_unix_ms=accept_by_ms,
                ),
            )
        session = owner
        async with session.accept_lock:
            if session.fenced:
                raise Unavailable(
                    f"session {session_id} is owned elsewhere now; retry", reason="NOT_OWNER"
                )
            run_id = new_run_id()
            policy = policy or BusyPolicy(self.settings.busy_policy)
            before = session.state.snapshot()
            # An id this process does not remember is looked up in the store only when the
            # message would be refused: one accepted is stored with a check for its id
            # (DuplicateMessage below), which saves a store read per message.
            outcome = session.state.receive_message(message_id, text, run_id, policy)
            if isinstance(outcome, Busy):
                async with asyncio.timeout(self.settings.backend_timeout_s):
                    stored = await self._stored_acceptance(session_id, message_id)
                if stored is not None:
                    outcome = session.state.receive_message(
                        message_id, text, run_id, policy, stored
                    )
            if isinstance(outcome, Duplicate):
                await self._durable(session, outcome.accepted.seq)
                return outcome.accepted
            if isinstance(outcome, Busy):
                raise FailedPrecondition(
                    "a run is active in this session and busy_policy is reject", reason="BUSY"
                )
            try:
                # The moment of acceptance: what comes next stores the message.
                self._refuse_if_expired(accept_by_ms)
            except Overloaded:
                session.state.restore(before)
                raise
            session.runs[run_id] = RunHandle(
                run_id, session_id, message_id, dict(trace_context or {})
            )
            try:
                accepted = await self._carry_out(session, outcome.effects)
            except DuplicateMessage:
                # another owner stored this id first (the store's backstop): that one counts
                session.runs.pop(run_id, None)
                session.state.restore(before)
                stored = await self._stored_acceptance(session_id, message_id)
                if stored is None:  # the id is one of the session's replies or tool results
                    raise AlreadyExists(
                        f"message id {message_id!r} is taken in session {session_id}",
                        reason="MESSAGE_ID_TAKEN",
                        field="message_id",
                    ) from None
                stored.duplicate = True
                return stored
            except PersistFailed as failed:
                session.runs.pop(run_id, None)
                session.state.restore(before)
                raise failed.error from failed.error.__cause__
        assert accepted is not None, "an accepted message appends its acceptance"
        await self._durable(session, accepted.seq)
        return accepted

    async def _durable(self, session: Session, seq: int) -> None:
        """Wait until `seq` is durable, for at most backend_timeout_s: then UNAVAILABLE.
        The event stays queued for the log (the writer retries): nothing is lost, and a
        retry of the same message id gets the same acceptance."""
        try:
            async with asyncio.timeout(self.settings.backend_timeout_s):
                await session.durable(seq)
        except TimeoutError:
            raise Unavailable(
                "the event log did not answer in time; retry with the same message id",
                reason="LOG_UNAVAILABLE",
            ) from None

    async def _stored_acceptance(
        self, session_id: str, message_id: str
    ) -> pb.MessageAccepted | None:
        stored = await self.store.find_user_message(session_id, message_id)
        if stored is None:
            return None
        seq = stored.accept_seq
        window = self._sessions[session_id].log if session_id in self._sessions else None
        if window is not None and window.first_retained_seq <= seq <= window.head_seq:
            there = window.read_after(seq - 1, 1).events
            if not there or there[0].message_accepted.message_id != message_id:
                # stored with the seq its event was to get, and the event never came (the
                # write landed after its caller gave up): the seq is another event's
                seq = 0
        return pb.MessageAccepted(
            message_id=message_id, text=stored.text, run_id=stored.run_id, seq=seq
        )

    async def _carry_out(
        self, session: Session, effects: list[Effect]
    ) -> pb.MessageAccepted | None:
        """Carry out a SessionState's effects in order; returns the acceptance appended, if
        any, with its seq."""
        accepted = None
        stored_seq = 0  # the acceptance's seq as stored with its message (0: not known then)
        for effect in effects:
            if isinstance(effect, PersistAcceptance):
                stored_seq = await self._persist_acceptance(session, effect)
            elif isinstance(effect, AppendEvent):
                event = session.append(effect.event)
                if event.HasField("message_accepted"):
                    accepted = session.state.receive_appended(event.message_accepted, event.seq)
                    if accepted.seq != stored_seq:
                        await self._note_accept_seq(session, accepted)
            elif isinstance(effect, StartRun):
                self._start(session, session.runs[effect.run_id])
            elif isinstance(effect, CancelRun):
                run = session.runs.get(effect.run_id)
                if run is not None:
                    run.cancel(effect.reason)
            elif isinstance(effect, EndUnstarted):
                await self._end_unstarted(session, effect)
        return accepted

    async def _note_accept_seq(self, session: Session, accepted: pb.MessageAccepted) -> None:
        """Record the acceptance's seq in the store; the message is accepted either way
        (it is in the log, and this process answers retries from memory), so a store that
        does not answer only costs that record."""
        try:
            async with asyncio.timeout(self.settings.backend_timeout_s):
                await self.store.note_accept_seq(
                    session.session_id, accepted.message_id, accepted.seq
                )
        except Exception as exc:
            log.warning("could not record the seq of message %s: %s", accepted.message_id, exc)

    async def _persist_acceptance(self, session: Session, effect: PersistAcceptance) -> int:
        """Store the acceptance, while this replica is sure it owns the session (by its own
        clock: a replica paused past its lease refuses here before it learns it lost it).
        A failure other than a duplicate id raises PersistFailed: nothing was stored.
        Returns the seq stored as the acceptance event's (0: none; the caller notes it).

        A message that starts its run at once found the session idle: nothing else appends
        to it until its acceptance event (every other append comes from a run, a queued
        run's end or recovery, none of which a held accept_lock and an idle session
        leave), so that event's seq is known before it is stamped and is stored with the
        message, which saves a store write. The caller checks the seq it got."""
        if self.lease.held(session.session_id) is None:
            raise PersistFailed(
                Unavailable(
                    f"this replica's lease of session {session.session_id} ran out; retry",
                    reason="NOT_OWNER",
                )
            )
        if not self.writer.healthy:
            # refused before it is stored: the acceptance could not become durable in
            # time, and a message told UNAVAILABLE should not run later
            raise PersistFailed(
                Unavailable(
                    "the event log does not answer; retry with the same message id",
                    reason="LOG_UNAVAILABLE",
                )
            )
        created = now_ms()
        accept_seq = 0 if effect.queued else session.log.next_seq
        try:
            await self._store_acceptance(session, effect, created, accept_seq)
        except DuplicateMessage:
            raise
        except Exception as exc:
            log.warning("could not store message %s: %s", effect.message_id, exc)
            error = Unavailable(
                "the conversation store did not answer; retry with the same message id",
                reason="STORE_UNAVAILABLE",
            )
            error.__cause__ = exc
            raise PersistFailed(error) from exc
        return accept_seq

    async def _store_acceptance(
        self, session: Session, effect: PersistAcceptance, created: int, accept_seq: int
    ) -> None:
        message = MessageRecord(
            session.session_id,
            effect.message_id,
            "user",
            effect.text,
            effect.run_id,
            "queued" if effect.queued else "complete",
            created,
            accept_seq=accept_seq,
        )
        async with asyncio.timeout(self.settings.backend_timeout_s):
            await self.store.accept_user_message(
                message,
                RunRecord(
                    effect.run_id,
                    session.session_id,
                    effect.message_id,
                    "queued" if effect.queued else "running",
                    started_ms=created,
                ),
                title=effect.title,
            )
        session.context.receive_accepted(message)
        run = session.runs.get(effect.run_id)
        if run is not None:
            run.stored_running = not effect.queued

    async def _end_unstarted(self, session: Session, effect: EndUnstarted) -> None:
        """A queued run never starts: its run and user message say why, then its completion."""
        session.runs.pop(effect.run_id, None)
        session.context.receive_ended_unstarted(effect.run_id)
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
            if session.fenced:
                return  # another replica owns the session now: its queue is that one's
            if not self.accepting and self.lease.shared:
                return  # queued runs stay queued in the store: another replica goes on
            # After an acceptance in flight: the next run may be that message's, which
            # starts only once its acceptance is stored and appended.
            async with session.accept_lock:
                effects = session.state.receive_run_ended(ended.run_id, accepting=self.accepting)
                await self._carry_out(session, effects)
            if not session.busy:
                # The RunCompleted became visible while the run still stored its end
                # (agent.py: the store follows the log): a half-closed Chat stream that
                # waits for an idle session looks again now.
                for subscriber in session.subscribers:
                    subscriber.notify()

        self.supervisor.start(run, lambda: self._run_body(session, run), then)

    async def cancel_run(self, session_id: str, run_id: str, *, forwarded: bool = False) -> bool:
        """Cancel a run (`run_id` empty: the active one), on the session's owner. False
        when none is going."""
        owner = await self._owner(session_id, forwarded=forwarded)
        if isinstance(owner, Holder):
            return await self.forwarder.cancel(
                owner, pb.CancelRequest(session_id=session_id, run_id=run_id)
            )
        session = owner
        effects = session.state.receive_cancel(run_id)
        for effect in effects:
            if isinstance(effect, CancelRun):
                run = session.runs.get(effect.run_id)
                return run.cancel(effect.reason) if run is not None else False
        await self._carry_out(session, effects)
        return bool(effects)

    async def cancel_tool_call(
        self, session_id: str, call_id: str, *, forwarded: bool = False
    ) -> bool:
        """Cancel one tool call (of a session's run, on its owner, or a direct ExecuteTool
        call of this process)."""
        if not session_id:
            runner = self.direct_calls.get(call_id)
            return runner.cancel("requested") if runner else False
        owner = await self._owner(session_id, forwarded=forwarded)
        if isinstance(owner, Holder):
            return await self.forwarder.cancel(
                owner, pb.CancelRequest(session_id=session_id, call_id=call_id)
            )
        for run in owner.runs.values():
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
        every event durable. Queued runs end interrupted on a single machine; with
        replicas they stay queued and another replica runs them once the lease is
        released (lease.close(), after this)."""
        self.accepting = False
        if self._taker is not None:
            self._taker.cancel()
        await self.supervisor.shutdown(grace_s)
        if not self.lease.shared:  # with replicas, queued runs go on elsewhere
            for session in list(self._sessions.values()):
                if session.owner and not session.fenced:
                    await self._carry_out(session, session.state.receive_shutdown())
        for runner in list(self.direct_calls.values()):
            runner.cancel("interrupted")
        if self._unloader is not None:
            self._unloader.cancel()
        for session in self._sessions.values():
            if session.follower_task is not None:
                session.follower_task.cancel()
        await self.writer.stop()
        await self.forwarder.close()


class PersistFailed(Exception):
    """Storing an acceptance failed and nothing was stored: `error` says why."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.message)
        self.error = error
