"""What a chat client must do on any transport: follow sessions, resume, replay the outbox.

Pure and synchronous, shared by the WebSocket and the gRPC adapters. The core
is told what happened (`receive_*`) and answers with commands for the
transport to carry out, in order:

- `Join(session_id, after_seq)`: follow a session from after a seq;
- `Leave(session_id)`: stop following it (sent before a rejoin after a gap);
- `Send(entry)`: send one outbox entry (a user message);
- `LoadHistory(session_id)`: fetch the session's history, then `receive_history`.

The rules it keeps: every followed session is joined again after a reconnect at
its last processed seq (so nothing is missed or repeated); an outbox entry is
sent once per connection, only after its session is joined (entries an earlier
run of the client left in the outbox file go out once their session is followed
again); a hole in the log (a `chat:gap`, or a `seq` that skips ahead) drops
events until history is reloaded, then leaves and joins again after the
history's `as_of_seq`; a refused join reloads history (`out_of_range`), retries
later (a retryable code) or unfollows (any other).

clients/web/src/lib/sessionCore.ts is the same core in TypeScript; the scenario
files in clients/spec/ run against both (tests/clients_python/test_spec.py,
clients/web/src/lib/spec.test.ts).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from agent_relay_client import codes_gen
from agent_relay_client.conversation import Conversation, HistoryMessage, Outcome
from agent_relay_client.errors import is_retryable
from agent_relay_client.events import MessageAccepted, SessionEvent
from agent_relay_client.outbox import ErrorOutcome, Outbox, OutboxEntry


@dataclass(frozen=True, slots=True)
class Join:
    """Follow `session_id`, replaying events after `after_seq`."""

    session_id: str
    after_seq: int


@dataclass(frozen=True, slots=True)
class Leave:
    """Stop following `session_id` on this connection."""

    session_id: str


@dataclass(frozen=True, slots=True)
class Send:
    """Send this user message (the entry stays in the outbox until acked)."""

    entry: OutboxEntry


@dataclass(frozen=True, slots=True)
class LoadHistory:
    """Fetch the session's history and pass it to `receive_history`."""

    session_id: str


Command = Join | Leave | Send | LoadHistory


class SessionCore:
    """Followed sessions, their conversations, and the outbox, for one client. Does no I/O.

    Calling rule: `receive_connected()` after each (re)connection, `receive_disconnected()`
    when it drops; every reply and event goes to the matching `receive_*`; carry out the
    returned commands in order; call `take_due()` when `next_due_ms()` has passed.
    """

    def __init__(self, *, outbox: Outbox | None = None, contiguous: bool = True) -> None:
        self.outbox = outbox if outbox is not None else Outbox()
        self.contiguous = contiguous
        self.conversations: dict[str, Conversation] = {}
        self.connected = False
        self._joined: set[str] = set()  # sessions whose join was acked on this connection
        self._joining: set[str] = set()  # join sent, reply pending
        self._loading: set[str] = set()  # history requested after a gap
        self._join_due: dict[str, float] = {}  # refused joins to try again, and when (ms)

    # ----- what the user does ---------------------------------------------------------------

    def follow(self, session_id: str) -> list[Command]:
        """Start following a session (a no-op when followed already)."""
        self._conversation(session_id)
        if self.connected and session_id not in self._joined | self._joining:
            return [self._join(session_id)]
        return []

    def send_message(
        self,
        session_id: str,
        text: str,
        *,
        message_id: str = "",
        busy_policy: str = "",
        trace_context: dict[str, str] | None = None,
        now_ms: float,
    ) -> tuple[OutboxEntry, list[Command]]:
        """Queue a user message (following its session if needed); send it now if joined."""
        if not text:
            raise ValueError("a message needs text")
        commands = self.follow(session_id)
        entry = OutboxEntry(
            session_id=session_id,
            message_id=message_id or str(uuid.uuid4()),
            text=text,
            busy_policy=busy_policy,
            trace_context=dict(trace_context or {}),
        )
        self.outbox.add(entry)
        self.conversations[session_id].add_local_message(entry.message_id, text)
        commands += self.take_due(now_ms)
        return entry, commands

    # ----- what the connection does ---------------------------------------------------------

    def receive_connected(self) -> list[Command]:
        """A connection is up (authenticated): join every followed session where it was."""
        self.connected = True
        self._joined.clear()
        self._joining.clear()
        self._join_due.clear()
        return [self._join(sid) for sid in self.conversations if sid not in self._loading]

    def receive_disconnected(self) -> None:
        """The connection dropped: joins and in-flight sends are void."""
        self.connected = False
        self._joined.clear()
        self._joining.clear()
        self._loading.clear()
        self.outbox.receive_disconnected()

    def receive_joined(self, session_id: str, now_ms: float) -> list[Command]:
        """A join was acked: its session's waiting messages go out now."""
        self._joining.discard(session_id)
        if not self.connected or session_id not in self.conversations:
            return []
        self._joined.add(session_id)
        return self.take_due(now_ms)

    def receive_join_failed(
        self, session_id: str, code: str = "", retry_after_ms: int = 0, now_ms: float = 0.0
    ) -> list[Command]:
        """A join was refused. The code decides (the same rule as the TypeScript client):

        - `out_of_range` (the log restarted below our position): reload history, then join
          after it;
        - a retryable code (codes.json): join again once `retry_after_ms` (at least
          MIN_MESSAGE_RETRY_MS) has passed, through `take_due()`;
        - any other (for example `forbidden`): the session is no longer followed.
        """
        self._joining.discard(session_id)
        if session_id not in self.conversations:
            return []
        if code == "out_of_range":
            self._loading.add(session_id)
            return [LoadHistory(session_id)]
        if is_retryable(code):
            wait = max(retry_after_ms, codes_gen.MIN_MESSAGE_RETRY_MS)
            self._join_due[session_id] = now_ms + wait
            return []
        self.conversations.pop(session_id, None)
        return []

    def receive_event(self, event: SessionEvent) -> tuple[Outcome, list[Command]]:
        """One event from the transport. A gap asks for history."""
        conv = self.conversations.get(event.session_id)
        if conv is None:
            return Outcome.DROPPED, []
        outcome = conv.receive_event(event)
        if outcome is Outcome.GAP and event.session_id not in self._loading:
            self._loading.add(event.session_id)
            return outcome, [LoadHistory(event.session_id)]
        if outcome is Outcome.APPLIED and isinstance(event, MessageAccepted):
            # The log says the service has it (a replay after a lost ack): it leaves the
            # outbox, so it is not sent again on the next connection.
            self.outbox.receive_ack(event.message_id)
        return outcome, []

    def receive_history(
        self, session_id: str, history: Iterable[HistoryMessage], as_of_seq: int
    ) -> list[Command]:
        """History arrived (after a gap, or to open a session with its past): (re)join after it.

        A session not followed yet becomes followed, starting after `as_of_seq`.
        """
        conv = self._conversation(session_id)
        conv.receive_history(history, as_of_seq)
        self._loading.discard(session_id)
        if not self.connected:
            return []
        if session_id in self._joined or session_id in self._joining:
            self._joined.discard(session_id)
            return [Leave(session_id), self._join(session_id)]
        return [self._join(session_id)]

    def receive_sent(self, message_id: str) -> OutboxEntry | None:
        """The service accepted a message (now or before): it leaves the outbox."""
        entry = self.outbox.receive_ack(message_id)
        for conv in self.conversations.values():
            conv.accept_local_message(message_id)
        return entry

    def receive_send_failed(
        self, message_id: str, code: str, message: str, retry_after_ms: int, now_ms: float
    ) -> ErrorOutcome:
        """The service refused a message: retry later ("retry"; "reauth" once the driver renewed
        the credentials), or drop it and mark it rejected ("dropped")."""
        entry = next((e for e in self.outbox.entries() if e.message_id == message_id), None)
        outcome = self.outbox.receive_error(message_id, code, retry_after_ms, now_ms)
        if outcome == "dropped" and entry is not None:
            conv = self.conversations.get(entry.session_id)
            if conv is not None:
                conv.reject_local_message(message_id, f"{code}: {message}".rstrip(": "))
        return outcome

    def receive_not_joined(self, message_id: str) -> list[Command]:
        """A message was refused because its session is not joined here (the edge lost the
        join, for example after its upstream restarted): join again; the message follows."""
        entry = next((e for e in self.outbox.entries() if e.message_id == message_id), None)
        if entry is None:
            return []
        entry.in_flight = False
        self._joined.discard(entry.session_id)
        if not self.connected or entry.session_id in self._joining:
            return []
        return [self._join(entry.session_id)]

    def take_due(self, now_ms: float) -> list[Command]:
        """Joins refused for a while, then outbox entries of joined sessions, due now."""
        if not self.connected:
            return []
        rejoin: list[Command] = []
        for sid, due in list(self._join_due.items()):
            if due <= now_ms:
                del self._join_due[sid]
                if sid in self.conversations:
                    rejoin.append(self._join(sid))
        return rejoin + [Send(e) for e in self.outbox.take_due(self._joined, now_ms)]

    def next_due_ms(self) -> float | None:
        """When the next refused join or waiting outbox entry may go (None: nothing waits)."""
        if not self.connected:
            return None
        times = list(self._join_due.values())
        entry_due = self.outbox.next_due_ms(self._joined)
        if entry_due is not None:
            times.append(entry_due)
        return min(times) if times else None

    def is_joined(self, session_id: str) -> bool:
        """True once the session's join was acked on this connection."""
        return session_id in self._joined

    def _conversation(self, session_id: str) -> Conversation:
        """The session's conversation, made on first use with any messages an earlier run of
        the client left in the outbox file (they go out once the session is joined)."""
        conv = self.conversations.get(session_id)
        if conv is None:
            conv = self.conversations[session_id] = Conversation(
                session_id, contiguous=self.contiguous
            )
            for entry in self.outbox.entries():
                if entry.session_id == session_id:
                    conv.add_local_message(entry.message_id, entry.text)
        return conv

    def _join(self, session_id: str) -> Join:
        self._joining.add(session_id)
        return Join(session_id, self.conversations[session_id].last_seq)
