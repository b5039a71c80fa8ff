"""How the terminal chat shows a conversation: text in, text out, no I/O of its own.

`Renderer` is fed the client's updates and writes what a person should see to
a text stream: the reply as it streams, tool calls with their progress and
output, how each run ended. It knows which run it is in the middle of
printing, so after history is reloaded (a gap) it prints only what is missing.
"""

from __future__ import annotations

import json
from typing import TextIO

from agent_relay_client.conversation import ChatItem, Conversation
from agent_relay_client.events import (
    MessageAccepted,
    ResponseDelta,
    RunCompleted,
    RunError,
    RunStarted,
    ToolExecution,
    UpstreamChanged,
)
from agent_relay_client.resilient import (
    ClientError,
    EventApplied,
    HistoryLoaded,
    MessageRejected,
    Update,
)

ASSISTANT = "agent> "
USER = "you> "


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _arguments(arguments_json: str) -> str:
    try:
        args = json.loads(arguments_json or "{}")
    except ValueError:
        return _short(arguments_json, 80)
    if isinstance(args, dict):
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    return _short(arguments_json, 80)


class Renderer:
    """Writes a session's updates to `out` as a person would want to read them."""

    def __init__(self, out: TextIO, session_id: str, *, live_progress: bool | None = None) -> None:
        self.out = out
        self.session_id = session_id
        # On a terminal a tool's progress redraws one line instead of adding one per update.
        self.live_progress = out.isatty() if live_progress is None else live_progress
        self._progress_line = False  # the cursor is on a progress line that may be redrawn
        self.own_messages: set[str] = set()  # typed here: not echoed again
        self._printing_run = ""  # the run whose text is being streamed
        self._printed = ""  # its text printed so far
        self._need_prefix = False  # tool lines interrupted the reply: prefix its next text
        self._at_line_start = True

    # ----- writing ---------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if text:
            if self._progress_line:  # leave the finished progress line as it stands
                self._progress_line = False
                self._at_line_start = False
                if not text.startswith("\n"):
                    text = "\n" + text
            self.out.write(text)
            self.out.flush()
            self._at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        """Print a line of its own (breaking the current one if needed)."""
        if not self._at_line_start:
            self._write("\n")
        self._write(text + "\n")

    # ----- the whole conversation (on open) -----------------------------------------------------

    def show_history(self, conv: Conversation) -> None:
        """Print a conversation's messages as they were shown live: a reply's text, then
        the tool calls it made and their results, then its next text; a reply that ended
        early keeps its mark ([cancelled], [failed], [interrupted]), even with no text. A
        reply still streaming is left open to continue."""
        for item in conv.messages:
            self._show_item(item, conv)

    def _show_item(self, item: ChatItem, conv: Conversation) -> None:
        if item.role == "user":
            self.line(f"{USER}{item.text}")
        elif item.role == "assistant":
            ended_early = item.status in ("cancelled", "failed", "interrupted")
            if item.text or item.status == "streaming" or (ended_early and not item.tool_calls):
                if not self._at_line_start:
                    self._write("\n")
                self._write(ASSISTANT + item.text)
                if item.status == "streaming":
                    self._printing_run, self._printed = item.run_id, item.text
                    self._need_prefix = bool(item.tool_calls)
                elif item.text:
                    self._end_note(item.status)
                else:
                    self._write(f"[{item.status}]\n")
            for call_id in item.tool_calls:
                view = conv.tool_calls.get(call_id)
                if view is not None:
                    self.line(f"  [tool {view.tool_name}({_arguments(view.arguments_json)})]")
            if ended_early and item.tool_calls:
                self.line(f"  [{item.status}]")
        elif item.role == "tool":
            label = "failed" if item.status == "failed" else "result"
            self.line(f"  [{label}: {_short(item.text)}]")

    def _end_note(self, status: str, detail: str = "") -> None:
        notes = {"cancelled": "[cancelled]", "failed": "[failed]", "interrupted": "[interrupted]"}
        note = notes.get(status, "")
        if detail:
            note = f"[{status}: {detail}]"
        self._write((" " + note if note else "") + "\n")

    # ----- live updates -----------------------------------------------------------------------

    def receive(self, update: Update) -> None:
        """Show one update of the client."""
        if isinstance(update, EventApplied) and update.event.session_id == self.session_id:
            self._event(update)
        elif (
            isinstance(update, HistoryLoaded) and update.conversation.session_id == self.session_id
        ):
            self._resynced(update.conversation)
        elif isinstance(update, MessageRejected) and update.session_id == self.session_id:
            self.line(f"[message not sent: {update.error}]")
        elif isinstance(update, ClientError):
            self.line(f"[error: {update.error}]")
        elif isinstance(update, UpstreamChanged) and update.session_id == self.session_id:
            self.note(
                "[the agent service is back]"
                if update.state == "available"
                else "[the agent service is unavailable: waiting for it to come back]"
            )

    def note(self, text: str) -> None:
        """A line about the connection, between the reply's lines: the reply's next text
        starts a fresh "agent>" line."""
        self.line(text)
        if self._printing_run:
            self._need_prefix = True

    def _event(self, update: EventApplied) -> None:
        event = update.event
        if isinstance(event, MessageAccepted):
            if event.message_id not in self.own_messages:
                self.line(f"{USER}{event.text}")
            if event.queued:
                self.line("[queued behind the reply in progress]")
        elif isinstance(event, RunStarted):
            self._start_reply(event.run_id)
        elif isinstance(event, ResponseDelta):
            if self._printing_run != event.run_id:
                self._start_reply(event.run_id)
            elif self._need_prefix:
                if not self._at_line_start:
                    self._write("\n")
                self._write(ASSISTANT)
            self._need_prefix = False
            self._write(event.text)
            self._printed += event.text
        elif isinstance(event, ToolExecution):
            self._tool(event)
        elif isinstance(event, RunError):
            self.line(f"[error: {event.code}: {event.message}]")
        elif isinstance(event, RunCompleted):
            self._completed(event)

    def _start_reply(self, run_id: str) -> None:
        if not self._at_line_start:
            self._write("\n")
        self._printing_run, self._printed = run_id, ""
        self._need_prefix = False
        self._write(ASSISTANT)

    def _tool(self, event: ToolExecution) -> None:
        name = event.tool_name
        if event.status == "started":
            self.line(f"  [tool {name}({_arguments(event.arguments_json)})]")
        elif event.status == "progress":
            note = f" {event.note}" if event.note else ""
            text = f"  [{name} {round(event.fraction * 100)}%{note}]"
            if self.live_progress:
                redraw = self._progress_line
                self._progress_line = False
                self._write(("\r\x1b[K" if redraw else "" if self._at_line_start else "\n") + text)
                self._progress_line = True
            else:
                self.line(text)
        elif event.status == "output":
            for text_line in event.text.rstrip("\n").splitlines():
                self.line(f"  | {text_line}")
        elif event.status == "completed":
            self.line(f"  [{name} done in {event.duration_ms:.0f} ms: {_short(event.result)}]")
        elif event.status == "failed":
            self.line(f"  [{name} failed ({event.code}): {_short(event.message)}]")
        elif event.status == "cancelled":
            self.line(f"  [{name} cancelled: {event.reason}]")
        if self._printing_run == event.run_id:
            self._need_prefix = True  # the reply's next text starts a fresh "agent>" line

    def _completed(self, event: RunCompleted) -> None:
        if self._printing_run != event.run_id:
            self._start_reply(event.run_id)
            self._write(event.text)
        if self._need_prefix and not self._at_line_start:
            self._write("\n")
        reason = event.finish_reason
        if self._need_prefix and reason in ("stop", "max_steps"):
            self._at_line_start = True  # nothing to close: the tool lines ended the line
        else:
            self._end_note({"stop": "complete", "max_steps": "complete"}.get(reason, reason))
        self._printing_run, self._printed, self._need_prefix = "", "", False

    def _resynced(self, conv: Conversation) -> None:
        """History replaced the conversation: print what the screen misses of the open reply."""
        if not self._printing_run:
            return
        item = conv.assistant_for_run(self._printing_run)
        if item is None:
            return
        if item.text.startswith(self._printed):
            self._write(item.text[len(self._printed) :])
        else:
            self.line("[reply resynced]")
            self._write(ASSISTANT + item.text)
        self._printed = item.text
        if item.status != "streaming":  # it ended while out of reach: close it here
            self._end_note(item.status)
            self._printing_run, self._printed, self._need_prefix = "", "", False
