"""The agent loop: one run from its user message to its completion event.

model step -> tool calls (concurrently) -> results back to the model -> ... until
the model stops or `max_steps` is reached. Everything a run does is an event in
its session's log; what the model must remember is written to the store before
the event that announces it. A run always ends with exactly one RunCompleted
whose finish reason says why (stop, cancelled, error, interrupted, max_steps) and
whose text keeps whatever was written, also when it ended early.

The model's context is always valid: every tool call an assistant message made
has a tool result after it, also when the run ended with the call in flight
(the result then says the call did not finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from agent_relay.v1 import agent_pb2 as pb
from agent_service.config import ServiceSettings
from agent_service.context import unfinished_call_result
from agent_service.errors import Unavailable
from agent_service.ids import now_ms
from agent_service.providers.base import (
    ChatMessage,
    ModelError,
    ModelProvider,
    StepFinished,
    TextDelta,
    ToolCallRequested,
)
from agent_service.run_supervisor import RunHandle
from agent_service.session import Session
from agent_service.store import ConversationStore, MessageRecord, RunRecord, StoredToolCall
from agent_service.tools.base import ToolRegistry
from agent_service.tools.executor import ToolCallRunner, ToolOutcome
from relay_shared.agent_telemetry import AgentTelemetry

log = logging.getLogger(__name__)

FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "cancelled": pb.FINISH_REASON_CANCELLED,
    "error": pb.FINISH_REASON_ERROR,
    "interrupted": pb.FINISH_REASON_INTERRUPTED,
    "max_steps": pb.FINISH_REASON_MAX_STEPS,
}
# the status a partial assistant message keeps when its run ends this way
PARTIAL_STATUS = {"cancelled": "cancelled", "error": "failed", "interrupted": "interrupted"}
# the status a tool message gets from its call's outcome
TOOL_STATUS = {"completed": "complete", "failed": "failed", "cancelled": "cancelled"}


@dataclass(frozen=True)
class AgentLoop:
    """A run's work (hub.RunBody): everything a run needs, and nothing of the hub."""

    settings: ServiceSettings
    store: ConversationStore
    provider: ModelProvider
    tools: ToolRegistry
    telemetry: AgentTelemetry

    async def __call__(self, session: Session, run: RunHandle) -> None:
        await RunExecution(self, session, run).execute()


@dataclass
class _Step:
    """The assistant message of the model step being streamed."""

    message_id: str
    text: list[str]
    calls: list[ToolCallRequested]


class RunExecution:
    """Carries out one run. `execute()` is the body of the run's task."""

    def __init__(self, loop: AgentLoop, session: Session, run: RunHandle) -> None:
        self.store = loop.store
        self.provider = loop.provider
        self.tools = loop.tools
        self.telemetry = loop.telemetry
        self.settings = loop.settings
        self.rt = session
        self.run = run
        self.started = time.perf_counter()
        self.started_ms = now_ms()
        self.input_tokens = 0
        self.output_tokens = 0
        self.texts: list[str] = []  # every step's text, for the completion event
        self.step: _Step | None = None
        self.first_message_id = f"{run.run_id}.0"
        self.unanswered: list[ToolCallRequested] = []  # stored calls with no stored result
        self.completion: pb.SessionEvent | None = None  # the RunCompleted, once emitted
        self.joined_end: _JoinedWrite | None = None  # the run's end, joined to its commit

    def emit(self, **kind: object) -> pb.SessionEvent:
        """Append an event of this run to the session's log."""
        event = pb.SessionEvent(run_id=self.run.run_id, **kind)
        self.rt.append(event)
        return event

    async def execute(self) -> None:
        """Run to the end inside the run's span, a child of the message's trace context."""
        with self.telemetry.run(
            self.run.trace_context,
            run_id=self.run.run_id,
            session_id=self.rt.session_id,
            message_id=self.run.user_message_id,
        ) as run_trace:
            reason, error = await self._execute()
            run_trace.ended(reason, error.code if error else "", error.message if error else "")
            log.info(  # inside the run's span: the line carries its trace and span ids
                "run %s ended: %s",
                self.run.run_id,
                reason,
                extra={"run_id": self.run.run_id, "session_id": self.rt.session_id},
            )
            await self._store_run_ended(reason)

    async def _execute(self) -> tuple[str, pb.RunError | None]:
        """Run to the end; never raises (a fault becomes an `error` completion)."""
        reason, error = "stop", None
        try:
            if not self.run.stored_running:  # a queued run: the store learns it started
                await self.store.update_run(
                    RunRecord(
                        self.run.run_id,
                        self.rt.session_id,
                        self.run.user_message_id,
                        "running",
                        started_ms=self.started_ms,
                    ),
                    user_message_status="complete",
                )
            self.emit(
                run_started=pb.RunStarted(
                    message_id=self.run.user_message_id,
                    assistant_message_id=self.first_message_id,
                    model=self.provider.name,
                )
            )
            async with asyncio.timeout(self.settings.run_timeout_s):
                reason = await self._loop()
        except asyncio.CancelledError:
            _uncancel()
            reason = self.run.cancel_reason or "cancelled"
        except TimeoutError:
            reason = "error"
            error = pb.RunError(
                code="timeout",
                retryable=True,
                message=(f"the run took longer than {self.settings.run_timeout_s:g} s"),
            )
        except ModelError as exc:
            reason = "error"
            error = pb.RunError(
                code=exc.code,
                message=exc.message,
                retryable=exc.retryable,
                retry_after_ms=exc.retry_after_ms,
            )
        except Exception as exc:
            log.exception("run %s failed", self.run.run_id)
            reason = "error"
            error = pb.RunError(
                code="internal", message=f"{type(exc).__name__}: {exc}", retryable=True
            )
        await self._finish(reason, error)
        return reason, error

    async def _loop(self) -> str:
        conversation = await self._context()
        specs = self.tools.specs()
        for index in range(self.settings.max_steps):
            step = await self._model_step(index, conversation, specs)
            calls = step.calls
            if not calls:
                return "stop"
            conversation.append(ChatMessage("assistant", "".join(step.text), tuple(calls)))
            outcomes = await self._run_tools(calls)
            for call, outcome in zip(calls, outcomes, strict=True):
                conversation.append(
                    ChatMessage("tool", outcome.result, call_id=call.call_id, name=call.name)
                )
        return "max_steps"

    async def _model_step(
        self, index: int, conversation: list[ChatMessage], specs: Sequence[object]
    ) -> _Step:
        """Stream one model step and store its assistant message."""
        message_id = f"{self.run.run_id}.{index}"
        reply = self.run.reply  # history reads the text so far from here
        pieces, seqs = reply.begin(message_id)
        step = _Step(message_id, pieces, [])
        self.step = step
        provider = self.provider
        stream = provider.stream(conversation, specs)  # type: ignore[arg-type]
        # what each chunk touches, named once: at full speed this runs for every word
        run_id, add_piece, add_seq = self.run.run_id, pieces.append, seqs.append
        append_delta = self.rt.append_delta
        with self.telemetry.model_call(
            provider=provider, step=index, conversation=conversation
        ) as call:
            saw_text = call.saw_text
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    if isinstance(item, TextDelta):
                        text = item.text
                        saw_text(text)
                        if text:
                            add_piece(text)
                            # under load it may join the previous delta's event (Session)
                            add_seq(append_delta(run_id, index, text).seq)
                        continue
                    call.saw(item)
                    if isinstance(item, ToolCallRequested):
                        step.calls.append(item)
                    elif isinstance(item, StepFinished):
                        usage = item.usage
                        self.input_tokens += usage.input_tokens
                        self.output_tokens += usage.output_tokens
        self.step = None  # from here on, an early end must not add its text twice
        self.texts.append("".join(step.text))
        await self._save_step(step, "complete")
        reply.end()
        return step

    async def _save_step(self, step: _Step, status: str) -> None:
        self.unanswered = list(step.calls)
        if self.rt.fenced:
            return  # another replica owns the session now: it writes the run's outcome
        await self._store_message(
            MessageRecord(
                self.rt.session_id,
                step.message_id,
                "assistant",
                "".join(step.text),
                self.run.run_id,
                status,
                now_ms(),
                tool_calls=tuple(
                    StoredToolCall(c.call_id, c.name, c.arguments_json) for c in step.calls
                ),
            )
        )

    async def _run_tools(self, calls: list[ToolCallRequested]) -> list[ToolOutcome]:
        """Run the step's tool calls concurrently; store each result for the model."""
        runners = [
            ToolCallRunner(
                self.tools,
                call_id=c.call_id,
                tool_name=c.name,
                arguments_json=c.arguments_json,
                emit=lambda ex: self.emit(tool_execution=ex),
            )
            for c in calls
        ]
        for runner in runners:
            self.run.tools[runner.call_id] = runner
        tasks = [
            asyncio.create_task(
                self.telemetry.tool_call(
                    tool_name=r.tool_name,
                    call_id=r.call_id,
                    run=r.run(),
                    arguments_json=r.arguments_json,
                ),
                name=f"tool {r.call_id}",
            )
            for r in runners
        ]
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            # the run is ending: stop every call and let each report its cancel
            for runner in runners:
                runner.cancel("run_cancelled")
            await asyncio.wait(tasks)
            raise
        finally:
            for runner in runners:
                self.run.tools.pop(runner.call_id, None)
        outcomes = [cast(ToolOutcome, t.result()) for t in tasks]
        for call, outcome in zip(calls, outcomes, strict=True):
            await self._save_tool_result(
                call, outcome.result, TOOL_STATUS[outcome.status], outcome.duration_ms
            )
        return outcomes

    async def _save_tool_result(
        self, call: ToolCallRequested, result: str, status: str, duration_ms: float = 0.0
    ) -> None:
        if self.rt.fenced:
            return
        await self._store_message(
            MessageRecord(
                self.rt.session_id,
                call.call_id,
                "tool",
                result,
                self.run.run_id,
                status,
                now_ms(),
                call_id=call.call_id,
                duration_ms=duration_ms,
            )
        )
        self.unanswered = [c for c in self.unanswered if c.call_id != call.call_id]

    async def _store_message(self, message: MessageRecord) -> None:
        """Store a message of this run; the session's context in memory follows what the
        store confirmed (a write that failed or was cancelled may or may not have landed:
        the next run reads the store)."""
        try:
            await self.store.upsert_message(message)
        except BaseException:
            self.rt.context.receive_write_failed(self.run.run_id)
            raise
        self.rt.context.receive_stored(self.run.run_id, message)

    async def _context(self) -> list[ChatMessage]:
        """The conversation the model reads: the session's context in memory, extended by
        this run's user message, or read from the store when memory cannot vouch for it
        (see context.py)."""
        context = self.rt.context
        conversation = context.start(self.run.run_id)
        if conversation is None:
            generation = context.generation
            records = await self.store.context_for_run(self.rt.session_id, self.run.run_id)
            conversation = context.load(self.run.run_id, records, generation)
        return conversation

    async def _finish(self, reason: str, error: pb.RunError | None) -> None:
        """Store what the model must remember, announce the outcome (RunError if any, then
        RunCompleted), and only once the RunCompleted is durable (or in the transaction
        that makes it durable: _join_run_end) mark the run ended in the store. A crash
        before that leaves the run `running` in the store, so the next start's recovery,
        which appends only what the log lacks, settles it without a second RunCompleted;
        marking it ended first lost the RunCompleted for good when the process died
        before the log's commit (recovery skips ended runs). A store
        that fails here does not keep the completion out of the log. A fenced session (its
        lease was lost) writes nothing: the new owner ends the run."""
        if self.rt.fenced:
            self.run.reply.end()
            return
        try:
            await self._store_outcome(reason)
        except Exception:
            log.exception("could not store the end of run %s", self.run.run_id)
        self.rt.context.receive_run_ended(self.run.run_id)
        self.run.reply.end()
        if error is not None:
            self.emit(run_error=error)
        completed = self.emit(
            run_completed=pb.RunCompleted(
                finish_reason=FINISH[reason],
                usage=pb.Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens),
                assistant_message_id=self.first_message_id,
                text="".join(self.texts),
                duration_ms=round((time.perf_counter() - self.started) * 1000.0, 3),
            )
        )
        self.completion = completed
        self._join_run_end(completed.seq, reason)

    def _join_run_end(self, seq: int, reason: str) -> None:
        """With the log in the store's file, the run's end goes in the transaction that
        makes its RunCompleted durable (log.Append.then): one commit, not two, and never
        before the RunCompleted. Else (or when that write did not land) _store_run_ended
        writes it once the RunCompleted is durable."""
        make = getattr(self.store, "run_update_write", None)
        if make is None:
            return
        write = _JoinedWrite(make(self._ended_record(reason)))
        if self.rt.join_commit(seq, write):
            self.joined_end = write

    async def _store_run_ended(self, reason: str) -> None:
        """Once the RunCompleted is durable, mark the run ended in the store (see _finish)."""
        if self.completion is None or self.rt.fenced:
            return
        try:
            await self.rt.durable(self.completion.seq)
        except Unavailable:
            return  # the lease was lost meanwhile: the new owner settles the run
        if self.joined_end is not None and self.joined_end.ran:
            return  # it committed with the RunCompleted
        try:
            await self.store.update_run(self._ended_record(reason))
        except Exception:
            log.exception("could not store the end of run %s", self.run.run_id)

    async def _store_outcome(self, reason: str) -> None:
        """The run's last step and a result for each call left in flight."""
        step, self.step = self.step, None
        if step is not None:
            self.texts.append("".join(step.text))
            await self._save_step(step, PARTIAL_STATUS.get(reason, "complete"))
        self.run.reply.end()
        for call in list(self.unanswered):  # the run ended with these calls in flight
            await self._save_tool_result(
                call, unfinished_call_result(reason), PARTIAL_STATUS.get(reason, "failed")
            )

    def _ended_record(self, reason: str) -> RunRecord:
        return RunRecord(
            self.run.run_id,
            self.rt.session_id,
            self.run.user_message_id,
            "ended",
            finish_reason=reason,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            started_ms=self.started_ms,
            ended_ms=now_ms(),
        )


class _JoinedWrite:
    """A store write joined to the log's commit; `ran`: it succeeded in the last
    transaction it ran in (the one that committed, once its events are durable)."""

    __slots__ = ("ran", "write")

    def __init__(self, write: Callable[[sqlite3.Connection], None]) -> None:
        self.write = write
        self.ran = False

    def __call__(self, db: sqlite3.Connection) -> None:
        self.ran = False  # a retried append runs it again
        self.write(db)
        self.ran = True


def _uncancel() -> None:
    """Clear this task's cancel request so the run can still write its outcome."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
