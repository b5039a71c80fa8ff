"""Run one tool call: validate, time-limit, cancel, and emit its events.

`ToolCallRunner.run()` is meant to be the body of its own task. It emits, in
order, `started`, any `progress` / `output`, and exactly one final event
(`completed`, `failed` or `cancelled`), and returns a ToolOutcome whose `result`
is what the model reads. It never raises for the tool's faults; cancel() ends
the call with a `cancelled` event and returns normally.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from agent_relay.v1 import agent_pb2 as pb
from agent_service.tools.base import ToolError, ToolRegistry

log = logging.getLogger(__name__)

EmitToolEvent = Callable[[pb.ToolExecution], None]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """How a call ended and the text the model gets as its result."""

    status: Literal["completed", "failed", "cancelled"]
    result: str
    duration_ms: float
    code: str = ""


class _Context:
    """The ToolContext handed to a tool: turns its reports into events."""

    def __init__(self, runner: ToolCallRunner) -> None:
        self._runner = runner

    @property
    def call_id(self) -> str:
        return self._runner.call_id

    @property
    def cancelled(self) -> bool:
        return self._runner.cancel_reason is not None

    def progress(self, fraction: float, note: str = "") -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self._runner.emit_update(progress=pb.ToolProgress(fraction=fraction, note=note))

    def output(self, text: str, stream: str = "stdout") -> None:
        if text:
            self._runner.emit_update(output=pb.ToolOutput(text=text, stream=stream))


class ToolCallRunner:
    """One tool call. Create it, run() it in a task, cancel() it from anywhere."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        call_id: str,
        tool_name: str,
        arguments_json: str,
        emit: EmitToolEvent,
    ) -> None:
        self.call_id = call_id
        self.tool_name = tool_name
        self.arguments_json = arguments_json
        self.cancel_reason: str | None = None
        self._registry = registry
        self._emit = emit
        self._task: asyncio.Task[Any] | None = None
        self._finished = False

    def emit_update(self, **update: object) -> None:
        """Emit a ToolExecution with one `update` field set; nothing after the final one."""
        if self._finished:
            return
        self._emit(pb.ToolExecution(call_id=self.call_id, tool_name=self.tool_name, **update))

    def cancel(self, reason: str = "requested") -> bool:
        """Ask the call to stop. False when it has already finished."""
        if self._finished or self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        if self._task is not None:
            self._task.cancel()
        return True

    async def run(self) -> ToolOutcome:
        """Run the call to its end. Must run in its own task."""
        self._task = asyncio.current_task()
        started = time.perf_counter()
        self.emit_update(started=pb.ToolStarted(arguments_json=self.arguments_json))
        try:
            if self.cancel_reason is not None:
                raise asyncio.CancelledError
            outcome = await self._invoke(started)
        except asyncio.CancelledError:
            outcome = self._finish_cancelled(started)
        self._finished = True
        if self.cancel_reason is not None and outcome.status != "cancelled":
            await self._settle_late_cancel()
        return outcome

    async def _settle_late_cancel(self) -> None:
        """Absorb a cancel() that came after the tool's last await (for example from an
        emit callback): its request is still pending on this task, and would otherwise
        end the task cancelled although the final event said `completed` or `failed`."""
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass
        if self._task is not None:
            self._task.uncancel()

    async def _invoke(self, started: float) -> ToolOutcome:
        tool = self._registry.get(self.tool_name)
        if tool is None:
            return self._fail(started, "unknown_tool", f"no tool named {self.tool_name!r}")
        try:
            args = json.loads(self.arguments_json or "{}")
        except json.JSONDecodeError as exc:
            return self._fail(started, "invalid_arguments", f"arguments are not valid JSON: {exc}")
        problem = tool.validation_error(args)
        if problem is not None:
            return self._fail(started, "invalid_arguments", problem)
        try:
            async with asyncio.timeout(tool.spec.timeout_s):
                result = await tool.fn(args, _Context(self))
        except TimeoutError:
            return self._fail(started, "timeout", f"timed out after {tool.spec.timeout_s:g} s")
        except ToolError as exc:
            return self._fail(started, exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a tool's bug must not end the run
            log.exception("tool %s failed", self.tool_name)
            return self._fail(started, "internal", f"{type(exc).__name__}: {exc}")
        duration_ms = _ms_since(started)
        self.emit_update(completed=pb.ToolCompleted(result=result, duration_ms=duration_ms))
        return ToolOutcome("completed", result, duration_ms)

    def _fail(self, started: float, code: str, message: str) -> ToolOutcome:
        duration_ms = _ms_since(started)
        self.emit_update(failed=pb.ToolFailed(code=code, message=message, duration_ms=duration_ms))
        return ToolOutcome("failed", f"error ({code}): {message}", duration_ms, code)

    def _finish_cancelled(self, started: float) -> ToolOutcome:
        reason = self.cancel_reason or "run_cancelled"
        self.cancel_reason = reason
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        self.emit_update(cancelled=pb.ToolCancelled(reason=reason))
        return ToolOutcome("cancelled", f"cancelled ({reason})", _ms_since(started), reason)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
