"""The asyncio driver shared by both transports: connect, resume, replay, reconnect.

A `Link` is one live connection (a WebSocket to the edge, or one gRPC Chat
stream): it carries out commands and awaits their replies, and hands over
session events in arrival order. `ResilientChat` opens links one after the
other for as long as the `ConnectionMachine` says so, and on each carries out
what the `SessionCore` asks for. It holds no protocol rules of its own: those
are in the pure cores (`connection`, `session_core`, `conversation`, `outbox`).

Users read progress from `updates()` (an async iterator) or the
`conversation(session_id)` object, which always shows the assembled state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import propagate

from agent_relay_client.backoff import BackoffPolicy
from agent_relay_client.connection import ConnectionMachine, GiveUp, RefreshToken, State
from agent_relay_client.conversation import Conversation, HistoryMessage, Outcome
from agent_relay_client.errors import (
    AgentRelayError,
    ConnectionClosed,
    NotFound,
    ProtocolError,
    RequestError,
    TransportError,
)
from agent_relay_client.events import SessionEvent, UpstreamChanged
from agent_relay_client.outbox import Outbox, OutboxEntry
from agent_relay_client.session_core import Command, Join, Leave, LoadHistory, Send, SessionCore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The service accepted a user message (now, or earlier when `duplicate`)."""

    message_id: str
    seq: int
    run_id: str
    queued: bool = False
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """A session's durable messages and the log position they reflect."""

    messages: list[HistoryMessage]
    as_of_seq: int


class Link(Protocol):
    """One live connection. Every method raises TransportError once the connection is gone."""

    async def join(self, session_id: str, after_seq: int) -> int:
        """Follow a session after `after_seq`; returns the session's head seq."""
        ...

    async def leave(self, session_id: str) -> None:
        """Stop following a session."""
        ...

    async def send(self, entry: OutboxEntry) -> Accepted:
        """Send one user message; raises RequestError when refused."""
        ...

    async def cancel_run(self, session_id: str, run_id: str) -> bool:
        """Cancel a run ("": the active one); True when it was running."""
        ...

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        """Cancel one tool call; True when it was running."""
        ...

    async def next_event(self) -> SessionEvent | UpstreamChanged:
        """The next session event, or the edge's notice about the agent service behind it.
        Raises TransportError (with `.code`) when the link drops."""
        ...

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        ...


# ----- updates: what a user of the client observes ---------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The connection moved to `state`; `code`/`reason` say why it left the last one."""

    state: State
    code: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class EventApplied:
    """A new event changed `conversation` (repeats and events over a hole are never shown)."""

    event: SessionEvent
    conversation: Conversation


@dataclass(frozen=True, slots=True)
class MessageSent:
    """A user message was accepted by the service."""

    session_id: str
    accepted: Accepted


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """The service refused a user message for good; it left the outbox."""

    session_id: str
    message_id: str
    error: RequestError


@dataclass(frozen=True, slots=True)
class HistoryLoaded:
    """A conversation was rebuilt from history (after a gap): redraw it."""

    conversation: Conversation


@dataclass(frozen=True, slots=True)
class ClientError:
    """Something failed that the client could not fix on its own (for example a refused join)."""

    error: AgentRelayError
    session_id: str = ""


Update = (
    StateChanged
    | EventApplied
    | MessageSent
    | MessageRejected
    | HistoryLoaded
    | ClientError
    | UpstreamChanged
)

Connect = Callable[[], Awaitable[Link]]
LoadHistoryFn = Callable[[str], Awaitable[History]]


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the current OpenTelemetry span ({} when there is none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}


class ResilientChat:
    """Keeps a chat connection alive across drops, resuming every followed session exactly.

    Use as an async context manager, or call `start()` and `close()`. Methods may be
    called in any state: messages wait in the outbox until their session is joined.
    """

    def __init__(
        self,
        connect: Connect,
        load_history: LoadHistoryFn,
        *,
        outbox: Outbox | None = None,
        backoff: BackoffPolicy | None = None,
        max_attempts: int | None = None,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
        retry_tick_s: float = 0.25,
    ) -> None:
        self._connect = connect
        self._load_history = load_history
        self.core = SessionCore(outbox=outbox)
        self.machine = ConnectionMachine(backoff=backoff, random=random, max_attempts=max_attempts)
        self._clock = clock
        self._retry_tick_s = retry_tick_s  # how often waiting outbox entries are looked at
        self._link: Link | None = None
        self._listeners: list[asyncio.Queue[Update | None]] = []
        self._main: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self.closed_by: GiveUp | None = None  # why the client stopped for good, once it has

    # ----- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> ResilientChat:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def state(self) -> State:
        """The connection's state."""
        return self.machine.state

    async def start(self) -> None:
        """Begin connecting (returns at once; see `wait_connected`)."""
        if self._main is not None:
            raise RuntimeError("already started")
        self.machine.receive_start()
        self._publish(StateChanged(self.machine.state))
        self._main = asyncio.create_task(self._run(), name="agent-relay-client")

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until connected. Raises ConnectionClosed when the client stopped for good."""
        waiter = asyncio.ensure_future(self._connected.wait())
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            stopper.cancel()
        if self._stopped.is_set() or not self._connected.is_set():
            if self.closed_by is not None:
                raise ConnectionClosed(self.closed_by.code, self.closed_by.reason)
            raise TransportError("not connected in time")

    async def close(self) -> None:
        """Stop for good: close the link, end `updates()` iterators."""
        self.machine.receive_stop()
        if self._main is not None:
            self._main.cancel()
            try:
                await self._main
            except asyncio.CancelledError:
                pass
            except Exception:  # closing must not fail on what the loop died of
                log.exception("connection loop failed")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._link is not None:
            await self._link.close()
            self._link = None
        if self.closed_by is None:
            self.closed_by = GiveUp(1000, "closed by the client")
        self._stopped.set()
        self._publish(StateChanged(State.DISCONNECTED, 1000, "closed by the client"))
        for queue in self._listeners:
            queue.put_nowait(None)

    # ----- what a user does -----------------------------------------------------------------

    def conversation(self, session_id: str) -> Conversation:
        """The assembled state of a followed session."""
        return self.core.conversations[session_id]

    async def follow(self, session_id: str, *, with_history: bool = True) -> Conversation:
        """Follow a session. With history, its past is loaded first and the join resumes after
        it (no replay of the whole log); without, the join replays the retained log."""
        if session_id in self.core.conversations:
            return self.core.conversations[session_id]
        if with_history:
            history = await self._load_history(session_id)
            commands = self.core.receive_history(session_id, history.messages, history.as_of_seq)
        else:
            commands = self.core.follow(session_id)
        self._carry_out_soon(commands)
        return self.core.conversations[session_id]

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        message_id: str = "",
        busy_policy: str = "",
        trace_context: dict[str, str] | None = None,
    ) -> str:
        """Queue a user message; returns its message id. It goes out once its session is joined,
        and again after a reconnect until acked (the id makes that safe).

        Without `trace_context`, the current OpenTelemetry span (if any) is sent as the
        message's W3C `traceparent`, so the agent's run joins the caller's trace.
        """
        if trace_context is None:
            trace_context = current_trace_context()
        entry, commands = self.core.send_message(
            session_id,
            text,
            message_id=message_id,
            busy_policy=busy_policy,
            trace_context=trace_context,
            now_ms=self._now_ms(),
        )
        self._carry_out_soon(commands)
        return entry.message_id

    async def cancel_run(self, session_id: str, run_id: str = "") -> bool:
        """Cancel a run ("": the session's active run). Needs a live connection."""
        return await self._require_link().cancel_run(session_id, run_id)

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        """Cancel one tool call. Needs a live connection."""
        return await self._require_link().cancel_tool_call(session_id, call_id)

    def updates(self) -> AsyncIterator[Update]:
        """Every update from this call on, until `close()`.

        Subscribes at once (not at the first iteration), so nothing between the call and
        the loop is missed; iterate what it returns, or updates pile up for it.
        """
        queue: asyncio.Queue[Update | None] = asyncio.Queue()
        if self._stopped.is_set():
            queue.put_nowait(None)
        self._listeners.append(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Update | None]) -> AsyncIterator[Update]:
        try:
            while (update := await queue.get()) is not None:
                yield update
        finally:
            with contextlib.suppress(ValueError):
                self._listeners.remove(queue)

    def add_listener(self, queue: asyncio.Queue[Update | None]) -> None:
        """Deliver every update to `queue` (None after close)."""
        self._listeners.append(queue)

    # ----- the connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            code, reason = await self._one_connection()
            decision = self.machine.receive_closed(code, reason)
            self._connected.clear()
            if isinstance(decision, GiveUp):
                self.closed_by = decision
                self._stopped.set()
                self._publish(StateChanged(State.DISCONNECTED, decision.code, decision.reason))
                for queue in self._listeners:
                    queue.put_nowait(None)
                return
            if isinstance(decision, RefreshToken):
                # Renew first: a token that cannot be renewed stops without a reconnect.
                if not await self._refresh_credentials():
                    self.machine.receive_stop()
                    self.closed_by = GiveUp(code, f"the token was refused: {reason}".strip(": "))
                    self._stopped.set()
                    self._publish(StateChanged(State.DISCONNECTED, code, self.closed_by.reason))
                    for queue in self._listeners:
                        queue.put_nowait(None)
                    return
                self._publish(StateChanged(State.RECONNECTING, code, reason))
            else:
                self._publish(StateChanged(State.RECONNECTING, code, reason))
                await asyncio.sleep(decision.delay_s)
            self.machine.receive_attempt()

    async def _refresh_credentials(self) -> bool:
        """Renew the credentials after the edge refused them (4501); False: cannot, stop.

        This driver has none to renew; the WebSocket client renews its token."""
        return False

    async def _one_connection(self) -> tuple[int, str]:
        """Open a link, serve it until it drops; returns the close code and reason."""
        try:
            link = await self._connect()
        except ConnectionClosed as exc:
            return exc.code, exc.reason
        except TransportError as exc:  # the close code, if the peer sent one, decides
            return exc.code, str(exc)
        except OSError as exc:
            return 1006, str(exc)
        if self.machine.state is State.DISCONNECTED:  # close() ran while this connected
            await link.close()
            return 1000, "closed by the client"
        self._link = link
        self.machine.receive_connected()
        self._connected.set()
        self._publish(StateChanged(State.CONNECTED))
        ticker = self._spawn(self._retry_ticker(link))
        self._carry_out_soon(self.core.receive_connected())
        try:
            while True:
                try:
                    event = await link.next_event()
                except ProtocolError as exc:  # one unreadable frame; the link goes on
                    self._publish(ClientError(exc))
                    continue
                if isinstance(event, UpstreamChanged):
                    self._publish(event)  # the edge's word on the agent service: show it
                    continue
                self._on_event(link, event)
        except ConnectionClosed as exc:
            return exc.code, exc.reason
        except TransportError as exc:
            return exc.code, str(exc)
        finally:
            ticker.cancel()
            self._link = None
            self.core.receive_disconnected()
            await link.close()

    def _on_event(self, link: Link, event: SessionEvent) -> None:
        outcome, commands = self.core.receive_event(event)
        if outcome is Outcome.APPLIED:
            conv = self.core.conversations[event.session_id]
            self._publish(EventApplied(event, conv))
        if commands:
            self._spawn(self._carry_out(link, commands))

    async def _retry_ticker(self, link: Link) -> None:
        while True:
            await asyncio.sleep(self._retry_tick_s)
            due = self.core.next_due_ms()
            if due is not None and due <= self._now_ms():
                await self._carry_out(link, self.core.take_due(self._now_ms()))

    # ----- carrying out the core's commands ---------------------------------------------------

    def _carry_out_soon(self, commands: Sequence[Command]) -> None:
        if commands and self._link is not None:
            self._spawn(self._carry_out(self._link, commands))

    async def _carry_out(self, link: Link, commands: Sequence[Command]) -> None:
        try:
            for command in commands:
                await self._carry_out_one(link, command)
        except TransportError:
            pass  # the link dropped: the connection loop sees it too and reconnects

    async def _carry_out_one(self, link: Link, command: Command) -> None:
        if isinstance(command, Join):
            try:
                await link.join(command.session_id, command.after_seq)
            except RequestError as exc:
                commands = self.core.receive_join_failed(
                    command.session_id, exc.code, exc.retry_after_ms, self._now_ms()
                )
                if command.session_id not in self.core.conversations:  # unfollowed
                    self._publish(ClientError(exc, command.session_id))
                await self._carry_out(link, commands)
                return
            await self._carry_out(
                link, self.core.receive_joined(command.session_id, self._now_ms())
            )
        elif isinstance(command, Leave):
            with contextlib.suppress(NotFound):
                await link.leave(command.session_id)
        elif isinstance(command, Send):
            await self._send(link, command.entry)
        elif isinstance(command, LoadHistory):
            await self._reload(link, command.session_id)

    async def _send(self, link: Link, entry: OutboxEntry) -> None:
        try:
            accepted = await link.send(entry)
        except RequestError as exc:
            if exc.code == "not_joined" and entry.attempts < 5:  # bounded: never a hot loop
                await self._carry_out(link, self.core.receive_not_joined(entry.message_id))
                return
            outcome = self.core.receive_send_failed(
                entry.message_id, exc.code, exc.message, exc.retry_after_ms, self._now_ms()
            )
            if outcome == "reauth":  # the token lapsed, not the message's fault: renew it
                self._spawn(self._refresh_credentials())
            if outcome == "dropped":
                self._publish(MessageRejected(entry.session_id, entry.message_id, exc))
            return
        self.core.receive_sent(entry.message_id)
        self._publish(MessageSent(entry.session_id, accepted))

    async def _reload(self, link: Link, session_id: str) -> None:
        try:
            history = await self._load_history(session_id)
        except RequestError as exc:
            self._publish(ClientError(exc, session_id))
            return
        commands = self.core.receive_history(session_id, history.messages, history.as_of_seq)
        self._publish(HistoryLoaded(self.core.conversations[session_id]))
        await self._carry_out(link, commands)

    def rewind(self, session_id: str, after_seq: int) -> None:
        """Replay a followed session from after `after_seq` (its conversation starts empty)."""
        self._carry_out_soon(self.core.receive_history(session_id, [], after_seq))

    # ----- helpers ------------------------------------------------------------------------

    def _require_link(self) -> Link:
        if self._link is None:
            raise TransportError("not connected")
        return self._link

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("client task failed", exc_info=task.exception())

    def _publish(self, update: Update) -> None:
        for queue in self._listeners:
            queue.put_nowait(update)

    def _now_ms(self) -> float:
        return self._clock() * 1000.0
