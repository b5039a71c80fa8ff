"""One session as a client sees it: resume position, dedup, and messages assembled from events.

Pure and synchronous. Feed it events in the order they arrive
(`receive_event`) and history when it was (re)loaded (`receive_history`); read
`messages`, `tool_calls` and `last_seq`. It decides, per event, whether the
event is new (applied), a repeat (ignored: its `seq` was processed already), or
proof of a hole (a ReplayGap, or a `seq` that skips ahead): then the client
must reload history and join again after the history's `as_of_seq`; until it
does, events are dropped, because applying them on top of a hole would show a
wrong conversation.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent_relay_client.events import (
    FINAL_TOOL_STATUSES,
    MessageAccepted,
    ReplayGap,
    ResponseDelta,
    RunCompleted,
    RunError,
    RunStarted,
    SessionEvent,
    ToolExecution,
)


class Outcome(enum.Enum):
    """What `receive_event` did with one event."""

    APPLIED = "applied"  # new, in order: the conversation changed
    DUPLICATE = "duplicate"  # seq already processed: ignored
    GAP = "gap"  # a hole: reload history and rejoin (see `resyncing`)
    DROPPED = "dropped"  # arrived while resyncing: ignored, the rejoin replays it


# Message statuses that end a reply (the proto's MessageStatus names).
FINAL_STATUSES = frozenset({"complete", "cancelled", "failed", "interrupted"})
# Message statuses: the proto's MessageStatus names, plus two that only the client knows.
SENDING = "sending"  # in the outbox, no ack yet
REJECTED = "rejected"  # the service refused it for good (see ChatItem.error)
_FINISH_TO_STATUS = {
    "stop": "complete",
    "max_steps": "complete",
    "cancelled": "cancelled",
    "error": "failed",
    "interrupted": "interrupted",
}


@dataclass(slots=True)
class ToolCallView:
    """A tool call's latest state, with all its output so far."""

    call_id: str
    tool_name: str = ""
    run_id: str = ""
    status: str = "started"  # started, progress, output, completed, failed, cancelled
    arguments_json: str = ""
    fraction: float = 0.0
    note: str = ""
    output: str = ""  # every `output` event's text, concatenated
    result: str = ""
    error_code: str = ""
    error_message: str = ""
    cancel_reason: str = ""
    duration_ms: float = 0.0

    @property
    def finished(self) -> bool:
        """True once the call completed, failed or was cancelled."""
        return self.status in FINAL_TOOL_STATUSES


@dataclass(slots=True)
class ChatItem:
    """One message of the conversation: user, assistant or tool.

    Streamed text is kept as pieces and joined when read (`text`), so a reply of n
    deltas costs O(n) to assemble, not O(n^2) as repeated string concatenation would.
    """

    message_id: str
    role: str  # user, assistant, tool
    parts: list[str] = field(default_factory=list)  # the text, in pieces
    status: str = "complete"  # complete, streaming, queued, cancelled, failed, interrupted, ...
    run_id: str = ""
    tool_calls: list[str] = field(default_factory=list)  # call ids, in call order
    call_id: str = ""  # for a tool message: the call it answers
    error: str = ""  # why it failed, when it did

    @classmethod
    def of(cls, message_id: str, role: str, text: str = "", **kw: str) -> ChatItem:
        """A message with its whole text at once."""
        return cls(message_id=message_id, role=role, parts=[text] if text else [], **kw)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        """The whole text so far."""
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    @text.setter
    def text(self, value: str) -> None:
        self.parts[:] = [value] if value else []

    def append(self, piece: str) -> None:
        """Add streamed text."""
        if piece:
            self.parts.append(piece)


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    """One durable message as history returns it (both transports convert to this)."""

    message_id: str
    role: str  # user, assistant, tool
    text: str
    status: str  # complete, streaming, cancelled, failed, interrupted, queued
    run_id: str = ""
    call_id: str = ""
    tool_calls: tuple[tuple[str, str, str], ...] = ()  # (call_id, tool_name, arguments_json)
    created_unix_ms: int = 0


class Conversation:
    """A session's state on the client. Does no I/O.

    Calling rule: feed every event of this session to `receive_event` in arrival
    order. When it returns GAP, fetch history and pass it to `receive_history`,
    then join again with `after_seq=last_seq`.
    """

    def __init__(self, session_id: str, *, contiguous: bool = True) -> None:
        self.session_id = session_id
        # With `deltas: "final"` or `tool_output: "final"` the edge skips seqs on purpose;
        # pass contiguous=False then, and only ReplayGap counts as a hole.
        self.contiguous = contiguous
        self.last_seq = 0  # the last seq processed: join with after_seq=last_seq to resume
        self.resyncing = False  # a hole was seen; history must be reloaded
        self.messages: list[ChatItem] = []
        self.tool_calls: dict[str, ToolCallView] = {}
        self.active_run_id = ""
        self.last_error: RunError | None = None
        # Runs whose completion text differed from the deltas assembled (should stay empty).
        self.corrected_runs: list[str] = []

    # ----- reading ------------------------------------------------------------------------

    def find(self, message_id: str) -> ChatItem | None:
        """The message with this id, if any."""
        for item in reversed(self.messages):
            if item.message_id == message_id:
                return item
        return None

    def run_finished(self, run_id: str) -> ChatItem | None:
        """The run's last assistant message when the run has ended (by events or history)."""
        item = self.assistant_for_run(run_id)
        return item if item is not None and item.status in FINAL_STATUSES else None

    def assistant_for_run(self, run_id: str) -> ChatItem | None:
        """The run's latest assistant message, if any."""
        for item in reversed(self.messages):
            if item.role == "assistant" and item.run_id == run_id:
                return item
        return None

    # ----- feeding ------------------------------------------------------------------------

    def add_local_message(self, message_id: str, text: str) -> ChatItem:
        """A user message just typed (status SENDING until its MessageAccepted arrives)."""
        item = self.find(message_id)
        if item is None:
            item = ChatItem.of(message_id, "user", text, status=SENDING)
            self.messages.append(item)
        return item

    def accept_local_message(self, message_id: str) -> None:
        """The service acked a typed message (its MessageAccepted may follow, or came first)."""
        item = self.find(message_id)
        if item is not None and item.status == SENDING:
            item.status = "complete"

    def reject_local_message(self, message_id: str, error: str) -> None:
        """The service refused a typed message for good."""
        item = self.find(message_id)
        if item is not None and item.status == SENDING:
            item.status = REJECTED
            item.error = error

    def receive_event(self, event: SessionEvent) -> Outcome:
        """Apply one event if it is the next one; say what was done with it."""
        if isinstance(event, ReplayGap):
            self.resyncing = True
            return Outcome.GAP
        if self.resyncing:
            return Outcome.DROPPED
        if event.seq <= self.last_seq:
            return Outcome.DUPLICATE
        first = event.first_seq if isinstance(event, ResponseDelta) else event.seq
        if first <= self.last_seq or (self.contiguous and first != self.last_seq + 1):
            # A hole, or a batch straddling what was processed (cannot be split): resync.
            self.resyncing = True
            return Outcome.GAP
        self._apply(event)
        self.last_seq = event.seq
        return Outcome.APPLIED

    def receive_history(self, history: Iterable[HistoryMessage], as_of_seq: int) -> None:
        """Replace the conversation with history that reflects the log up to `as_of_seq`.

        Typed messages still waiting for their ack stay, at the end.
        """
        unsent = [m for m in self.messages if m.status == SENDING]
        self.messages = []
        self.tool_calls = {}
        self.active_run_id = ""
        for msg in history:
            item = ChatItem.of(
                msg.message_id,
                msg.role,
                msg.text,
                status=msg.status,
                run_id=msg.run_id,
                call_id=msg.call_id,
            )
            for call_id, tool_name, arguments_json in msg.tool_calls:
                item.tool_calls.append(call_id)
                self.tool_calls[call_id] = ToolCallView(
                    call_id=call_id,
                    tool_name=tool_name,
                    run_id=msg.run_id,
                    arguments_json=arguments_json,
                )
            if msg.role == "tool" and msg.call_id in self.tool_calls:
                view = self.tool_calls[msg.call_id]
                view.status, view.result = "completed", msg.text
            if msg.status == "streaming":
                self.active_run_id = msg.run_id
            self.messages.append(item)
        known = {m.message_id for m in self.messages}
        self.messages.extend(m for m in unsent if m.message_id not in known)
        self.last_seq = as_of_seq
        self.resyncing = False

    # ----- one handler per event kind -----------------------------------------------------

    def _apply(self, event: SessionEvent) -> None:
        if isinstance(event, MessageAccepted):
            self._on_accepted(event)
        elif isinstance(event, RunStarted):
            self._on_run_started(event)
        elif isinstance(event, ResponseDelta):
            self._assistant(event.run_id).append(event.text)
        elif isinstance(event, ToolExecution):
            self._on_tool(event)
        elif isinstance(event, RunError):
            self.last_error = event
            self._assistant(event.run_id).error = f"{event.code}: {event.message}"
        elif isinstance(event, RunCompleted):
            self._on_completed(event)

    def _on_accepted(self, event: MessageAccepted) -> None:
        item = self.find(event.message_id)
        if item is None:  # typed elsewhere (another tab or client)
            item = ChatItem.of(event.message_id, "user", event.text)
            self.messages.append(item)
        item.status = "queued" if event.queued else "complete"
        item.run_id = event.run_id

    def _on_run_started(self, event: RunStarted) -> None:
        self.active_run_id = event.run_id
        user = self.find(event.message_id)
        if user is not None and user.status == "queued":
            user.status = "complete"
        if self.assistant_for_run(event.run_id) is None:
            self.messages.append(
                ChatItem(
                    message_id=event.assistant_message_id or f"a_{event.run_id}",
                    role="assistant",
                    status="streaming",
                    run_id=event.run_id,
                )
            )

    def _assistant(self, run_id: str) -> ChatItem:
        item = self.assistant_for_run(run_id)
        if item is None:
            item = ChatItem(
                message_id=f"a_{run_id}", role="assistant", status="streaming", run_id=run_id
            )
            self.messages.append(item)
        return item

    def _on_tool(self, event: ToolExecution) -> None:
        view = self.tool_calls.get(event.call_id)
        if view is None:
            view = ToolCallView(call_id=event.call_id, tool_name=event.tool_name)
            self.tool_calls[event.call_id] = view
        view.run_id = event.run_id or view.run_id
        view.tool_name = event.tool_name or view.tool_name
        view.status = event.status
        if event.status == "started":
            view.arguments_json = event.arguments_json
        elif event.status == "progress":
            view.fraction, view.note = event.fraction, event.note
        elif event.status == "output":
            view.output += event.text
        elif event.status == "completed":
            view.result, view.duration_ms, view.fraction = event.result, event.duration_ms, 1.0
        elif event.status == "failed":
            view.error_code, view.error_message = event.code, event.message
            view.duration_ms = event.duration_ms
        elif event.status == "cancelled":
            view.cancel_reason = event.reason
        if event.run_id:
            assistant = self._assistant(event.run_id)
            if event.call_id not in assistant.tool_calls:
                assistant.tool_calls.append(event.call_id)

    def _on_completed(self, event: RunCompleted) -> None:
        item = self._assistant(event.run_id)
        if event.assistant_message_id and item.message_id == f"a_{event.run_id}":
            item.message_id = event.assistant_message_id
        # The completion's text is authoritative; a difference means deltas were lost.
        if event.text and item.text != event.text:
            self.corrected_runs.append(event.run_id)
            item.text = event.text
        item.status = _FINISH_TO_STATUS.get(event.finish_reason, "complete")
        if self.active_run_id == event.run_id:
            self.active_run_id = ""
