"""Turning the openai SDK's streamed chunks into model events. Pure: no I/O.

The SDK decodes the stream into ChatCompletionChunk objects but leaves one gap:
a tool call arrives in pieces (`choices[0].delta.tool_calls[i]` with an `index`,
the id and name in the first piece, the arguments split over many), and nothing
in `chat.completions.create(stream=True)` joins them. StepAssembler does: text
deltas are passed on as they arrive, the calls are assembled and handed on when
the step ends, in index order, before StepFinished.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from agent_service.providers.base import (
    ModelError,
    ModelEvent,
    StepFinished,
    TextDelta,
    ToolCallRequested,
    Usage,
)

FinishReason = Literal["stop", "tool_calls", "length"]
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "length",
    "content_filter": "stop",
}


@dataclass
class _PendingCall:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StepAssembler:
    """Turns the chunks of one streamed step into model events.

    feed() takes one chunk and returns the events to pass on now (text);
    finish() returns the assembled tool calls and StepFinished. `finished` is
    set once a chunk carried a finish_reason.
    """

    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    response_id: str = ""
    response_model: str = ""
    _calls: dict[int, _PendingCall] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """True once the model said why it stopped."""
        return self.finish_reason is not None

    def feed(self, chunk: ChatCompletionChunk) -> list[ModelEvent]:
        """The events one chunk yields now."""
        self.response_id = chunk.id or self.response_id
        self.response_model = chunk.model or self.response_model
        if chunk.usage is not None:
            self.usage = Usage(
                input_tokens=chunk.usage.prompt_tokens or 0,
                output_tokens=chunk.usage.completion_tokens or 0,
            )
        events: list[ModelEvent] = []
        for choice in chunk.choices or []:
            if choice.index not in (0, None):
                continue  # n > 1 is never asked for
            delta = choice.delta
            if delta is not None and delta.content:
                events.append(TextDelta(delta.content))
            for piece in (delta.tool_calls if delta is not None else None) or []:
                self._take_call_piece(piece)
            if choice.finish_reason:
                self.finish_reason = str(choice.finish_reason)
        return events

    def finish(self) -> list[ModelEvent]:
        """The tool calls, in index order, then StepFinished."""
        events: list[ModelEvent] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                raise ModelError("model_error", f"the model sent tool call {index} without a name")
            events.append(
                ToolCallRequested(
                    call_id=call.call_id or f"call_{uuid.uuid4().hex[:24]}",
                    name=call.name,
                    arguments_json="".join(call.arguments) or "{}",
                )
            )
        reason = _FINISH_REASONS.get(self.finish_reason or "stop", "stop")
        if self._calls:
            reason = "tool_calls"  # some servers say "stop" after tool calls
        events.append(
            StepFinished(
                reason=reason,
                usage=self.usage,
                response_id=self.response_id,
                response_model=self.response_model,
            )
        )
        return events

    def _take_call_piece(self, piece: ChoiceDeltaToolCall) -> None:
        function = piece.function
        name = function.name if function is not None else None
        arguments = function.arguments if function is not None else None
        index: int | None = piece.index
        if not isinstance(index, int):  # servers that omit it send each call whole
            last = self._calls.get(len(self._calls) - 1)
            starts = last is None or bool(piece.id) or bool(name and last.name)
            index = len(self._calls) if starts else len(self._calls) - 1
        call = self._calls.setdefault(index, _PendingCall())
        if piece.id:
            call.call_id = piece.id
        if name:
            call.name += name
        if arguments:
            call.arguments.append(arguments)
