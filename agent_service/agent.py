"""The agent loop: one run from its user message to its completion event.

model step -> tool calls (concurrently) -> results back to the model -> ... until
the model stops or `max_steps` is reached. Everything a run does is an event in
its session's log; what the model must remember is written to the store before
the event that announces it. A run always ends with exactly one RunCompleted
whose finish reason says why (stop, cancelled, error, interrupted, max_steps) and
whose text keeps whatever was written, also when it ended early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from agent_relay.v1 import agent_pb2 as pb
from agent_service.hub import Hub, RunHandle, SessionRuntime
from agent_service.ids import now_ms
from agent_service.providers.base import (
    ChatMessage,
    ModelError,
    StepFinished,
    TextDelta,
    ToolCallRequested,
)
from agent_service.store import MessageRecord, RunRecord, StoredToolCall
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


def install(hub: Hub, telemetry: AgentTelemetry | None = None) -> None:
    """Make the hub start runs with this module's loop (traced with `telemetry`)."""
    telemetry = telemetry or AgentTelemetry(None)

    def start(rt: SessionRuntime, run: RunHandle) -> None:
        run.task = asyncio.create_task(
            RunExecution(hub, rt, run, telemetry).execute(), name=f"run {run.run_id}"
        )

    hub.set_run_starter(start)


@dataclass
class _Step:
    """The assistant message of the model step being streamed."""

    message_id: str
    text: list[str]
    calls: list[ToolCallRequested]


class RunExecution:
    """Carries out one run. `execute()` is the body of the run's task."""

    def __init__(
        self,
        hub: Hub,
        rt: SessionRuntime,
        run: RunHandle,
        telemetry: AgentTelemetry | None = None,
    ) -> None:
        self.hub = hub
        self.telemetry = telemetry or AgentTelemetry(None)
        self.rt = rt
        self.run = run
        self.settings = hub.settings
        self.started = time.perf_counter()
        self.started_ms = now_ms()
        self.input_tokens = 0
        self.output_tokens = 0
        self.texts: list[str] = []  # every step's text, for the completion event
        self.step: _Step | None = None
        self.first_message_id = f"{run.run_id}.0"

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

    async def _execute(self) -> tuple[str, pb.RunError | None]:
        """Run to the end; never raises (a fault becomes an `error` completion)."""
        reason, error = "stop", None
        try:
            await self.hub.store.update_run(
                RunRecord(
                    self.run.run_id,
                    self.rt.session_id,
                    self.run.user_message_id,
                    "running",
                    started_ms=self.started_ms,
                )
            )
            self.emit(
                run_started=pb.RunStarted(
                    message_id=self.run.user_message_id,
                    assistant_message_id=self.first_message_id,
                    model=self.hub.provider.name,
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
        try:
            await self._finish(reason, error)
        finally:
            await self.hub.run_ended(self.rt, self.run)
        return reason, error

    async def _loop(self) -> str:
        conversation = await self._context()
        specs = self.hub.tools.specs()
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
        step = _Step(f"{self.run.run_id}.{index}", [], [])
        self.step = step
        run = self.run  # the hub's partial writer stores the text while it streams
        run.streaming_message_id, run.streaming_text = step.message_id, step.text
        run.streaming, run.streaming_flushed = True, 0
        provider = self.hub.provider
        stream = provider.stream(conversation, specs)  # type: ignore[arg-type]
        with self.telemetry.model_call(
            provider=provider, step=index, conversation=conversation
        ) as call:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    call.saw(item)
                    if isinstance(item, TextDelta):
                        if item.text:
                            step.text.append(item.text)
                            self.emit(response_delta=pb.ResponseDelta(text=item.text, step=index))
                    elif isinstance(item, ToolCallRequested):
                        step.calls.append(item)
                    elif isinstance(item, StepFinished):
                        usage = item.usage
                        self.input_tokens += usage.input_tokens
                        self.output_tokens += usage.output_tokens
        self.step = None  # from here on, an early end must not add its text twice
        run.streaming = False
        self.texts.append("".join(step.text))
        await self._save_step(step, "complete")
        return step

    async def _save_step(self, step: _Step, status: str) -> None:
        await self.hub.store.upsert_message(
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
                self.hub.tools,
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
            await self.hub.store.upsert_message(
                MessageRecord(
                    self.rt.session_id,
                    call.call_id,
                    "tool",
                    outcome.result,
                    self.run.run_id,
                    "complete" if outcome.status == "completed" else "failed",
                    now_ms(),
                    call_id=call.call_id,
                )
            )
        return outcomes

    async def _context(self) -> list[ChatMessage]:
        """The conversation the model reads, from the store."""
        records = await self.hub.store.context_for_run(self.rt.session_id, self.run.run_id)
        names: dict[str, str] = {}
        conversation: list[ChatMessage] = []
        for m in records:
            if m.role == "assistant" and not m.text and not m.tool_calls:
                continue  # a reply that never got a word out (interrupted at once)
            if m.role == "assistant":
                calls = tuple(
                    ToolCallRequested(c.call_id, c.tool_name, c.arguments_json)
                    for c in m.tool_calls
                )
                names.update((c.call_id, c.name) for c in calls)
                conversation.append(ChatMessage("assistant", m.text, calls))
            elif m.role == "tool":
                conversation.append(
                    ChatMessage("tool", m.text, call_id=m.call_id, name=names.get(m.call_id, ""))
                )
            else:
                conversation.append(ChatMessage("user", m.text))
        return conversation

    async def _finish(self, reason: str, error: pb.RunError | None) -> None:
        """Store the outcome, then announce it: RunError (if any), then RunCompleted."""
        step, self.step = self.step, None
        self.run.streaming = False
        if step is not None:
            self.texts.append("".join(step.text))
            await self._save_step(step, PARTIAL_STATUS.get(reason, "complete"))
        ended_ms = now_ms()
        await self.hub.store.update_run(
            RunRecord(
                self.run.run_id,
                self.rt.session_id,
                self.run.user_message_id,
                "ended",
                finish_reason=reason,
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                started_ms=self.started_ms,
                ended_ms=ended_ms,
            )
        )
        if error is not None:
            self.emit(run_error=error)
        self.emit(
            run_completed=pb.RunCompleted(
                finish_reason=FINISH[reason],
                usage=pb.Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens),
                assistant_message_id=self.first_message_id,
                text="".join(self.texts),
                duration_ms=round((time.perf_counter() - self.started) * 1000.0, 3),
            )
        )


def _uncancel() -> None:
    """Clear this task's cancel request so the run can still write its outcome."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
