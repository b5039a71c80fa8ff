"""The model's context: built from stored messages, and kept per loaded session.

`ContextBuilder` turns stored messages, in history order, into the conversation a
model reads, one message at a time (`context_from_history` feeds it a whole
history at once).

`SessionContext` keeps a loaded session's context in memory and extends it run by
run, so a run does not re-read (and re-decode) the whole history from the store:
that read grew with the conversation and cost more than everything else a message
does once a session had a few hundred messages. It is pure (no I/O) and is fed
what the store was told: a user message stored with its run (`receive_accepted`),
a message a run stored (`receive_stored`), a queued run that ended unstarted. The
store stays the truth: `start()` answers None whenever the memory cannot vouch for
the context (nothing read since the session was loaded, a write that failed or was
cancelled and so may or may not have landed, another writer, a run out of order),
and the caller then reads the store (`context_for_run`) and `load()`s that.

Calling rule: one SessionContext per loaded owner session, fed on the event loop
by that session's runs and acceptances only, each write fed after the store
confirmed it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from agent_service.providers.base import ChatMessage, ToolCallRequested
from agent_service.store import MessageRecord


def unfinished_call_result(reason: str) -> str:
    """The tool result the model reads for a call its run ended before it finished."""
    return f"error (not_finished): the run was {reason} before this call finished"


class ContextBuilder:
    """The conversation a model reads, from stored messages fed in history order.

    Valid for every provider's ordering rules: an assistant message's tool calls are
    each followed by a result (one is made up for a call that has none stored, as
    in a file written before results were kept for unfinished calls), and a reply
    that never got a word out is left out."""

    def __init__(self) -> None:
        self._conversation: list[ChatMessage] = []
        self._names: dict[str, str] = {}  # call id -> tool name
        self._unanswered: dict[str, None] = {}  # calls of the last assistant message

    def add(self, m: MessageRecord) -> None:
        """The next stored message in history order."""
        if m.role == "tool" and m.call_id in self._unanswered:
            del self._unanswered[m.call_id]
            self._conversation.append(
                ChatMessage("tool", m.text, call_id=m.call_id, name=self._names.get(m.call_id, ""))
            )
            return
        self._answer_the_rest(self._conversation)
        if m.role == "tool":
            return  # a result whose call is not in the context
        if m.role == "assistant":
            if not m.text and not m.tool_calls:
                return
            calls = tuple(
                ToolCallRequested(c.call_id, c.tool_name, c.arguments_json) for c in m.tool_calls
            )
            for c in calls:
                self._names[c.call_id] = c.name
                self._unanswered[c.call_id] = None
            self._conversation.append(ChatMessage("assistant", m.text, calls))
        else:
            self._conversation.append(ChatMessage("user", m.text))

    def conversation(self) -> list[ChatMessage]:
        """The conversation so far, as a new list (the caller may extend it)."""
        conversation = list(self._conversation)
        for call_id in self._unanswered:
            conversation.append(self._made_up_result(call_id))
        return conversation

    def _answer_the_rest(self, into: list[ChatMessage]) -> None:
        for call_id in self._unanswered:
            into.append(self._made_up_result(call_id))
        self._unanswered.clear()

    def _made_up_result(self, call_id: str) -> ChatMessage:
        result = unfinished_call_result("interrupted")
        return ChatMessage("tool", result, call_id=call_id, name=self._names[call_id])


def context_from_history(records: Iterable[MessageRecord]) -> list[ChatMessage]:
    """The conversation a model reads, from stored messages in history order."""
    builder = ContextBuilder()
    for record in records:
        builder.add(record)
    return builder.conversation()


@dataclass(slots=True)
class _Accepted:
    """A user message stored with its run, not yet in the context."""

    record: MessageRecord
    ended_unstarted: bool = False


class SessionContext:
    """A loaded session's model context, in memory. See the module docstring."""

    def __init__(self) -> None:
        self._builder: ContextBuilder | None = None  # None: unknown, read the store
        self._accepted: OrderedDict[str, _Accepted] = OrderedDict()  # by run id, in order
        self._feeding = ""  # the run whose stored messages extend the context
        self._fed: set[str] = set()  # message ids that run stored
        self.generation = 0  # grows at each invalidate()

    @property
    def known(self) -> bool:
        """The memory vouches for the context (start() may answer without the store)."""
        return self._builder is not None

    def receive_accepted(self, user_message: MessageRecord) -> None:
        """The store took a user message and its run (runs are accepted in this order)."""
        self._accepted[user_message.run_id] = _Accepted(user_message)

    def receive_ended_unstarted(self, run_id: str) -> None:
        """A queued run will never start; its user message stays in the history."""
        accepted = self._accepted.get(run_id)
        if accepted is None:
            self.invalidate()  # accepted elsewhere: where its message goes is not known here
        else:
            accepted.ended_unstarted = True

    def start(self, run_id: str) -> list[ChatMessage] | None:
        """The context of run `run_id`, starting now, or None: read the store and load().
        From here on the run's stored messages extend the context."""
        if self._builder is None or self._feeding:
            return None
        before: list[MessageRecord] = []
        for accepted_run, accepted in self._accepted.items():
            if accepted_run == run_id:
                break
            if not accepted.ended_unstarted:
                return None  # a run before this one has not ended: not in order
            before.append(accepted.record)
        else:
            return None  # not accepted through this session (a run taken over)
        for record in before:
            self._builder.add(record)
            del self._accepted[record.run_id]
        self._builder.add(self._accepted.pop(run_id).record)
        self._feed(run_id)
        return self._builder.conversation()

    def load(
        self, run_id: str, records: Iterable[MessageRecord], generation: int
    ) -> list[ChatMessage]:
        """Run `run_id` starts with `records`, what the store holds for it (read while
        `generation` was current). Returns its context."""
        builder = ContextBuilder()
        included: set[str] = set()
        for record in records:
            builder.add(record)
            if record.role == "user":
                included.add(record.run_id)
        for accepted_run in included:
            self._accepted.pop(accepted_run, None)
        if generation == self.generation:
            self._builder = builder
            self._feed(run_id)
        return builder.conversation()

    def receive_stored(self, run_id: str, message: MessageRecord) -> None:
        """Run `run_id` stored `message` (the store confirmed it)."""
        if self._builder is None:
            return
        if run_id != self._feeding or message.message_id in self._fed:
            self.invalidate()  # not the run being fed, or an update of a message in place
            return
        self._fed.add(message.message_id)
        self._builder.add(message)

    def receive_write_failed(self, run_id: str) -> None:
        """A write of run `run_id` failed or was cancelled: it may or may not have landed."""
        self.invalidate()

    def receive_run_ended(self, run_id: str) -> None:
        """Run `run_id` stored everything it will."""
        if run_id == self._feeding:
            self._feeding = ""
            self._fed = set()

    def invalidate(self) -> None:
        """Forget the context: the next run reads the store."""
        self._builder = None
        self._feeding = ""
        self._fed = set()
        self.generation += 1

    def _feed(self, run_id: str) -> None:
        self._feeding = run_id
        self._fed = set()
