"""The conversation as an Anthropic Messages API request, and the reply's end as
StepFinished. Pure: no I/O.

The Messages API has rules Chat Completions does not: the system prompt is a
separate `system` field; `messages` alternate user and assistant, starting with
a user turn; a tool result is a `tool_result` block in the user turn right after
the assistant turn whose `tool_use` block it answers; text blocks are never
empty. to_request() keeps them for any conversation the agent stores: system
messages are joined into `system`; tool results and a user message that follows
them share one user turn (results first); empty texts are left out and a turn
left with nothing is dropped, so neighbours of the same role merge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from anthropic.types import MessageParam, ToolParam
from anthropic.types import Usage as ApiUsage

from agent_service.providers.base import ChatMessage, StepFinished, Usage
from agent_service.tools.base import ToolSpec

FinishReason = Literal["stop", "tool_calls", "length"]
_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "pause_turn": "stop",
    "refusal": "stop",
}


@dataclass(frozen=True)
class Request:
    """The parts of one Messages request that come from the conversation."""

    system: str
    messages: list[MessageParam]


def _tool_input(arguments_json: str) -> dict[str, Any]:
    """A call's arguments as the object `tool_use.input` must be."""
    try:
        parsed = json.loads(arguments_json or "{}")
    except ValueError:
        parsed = None
    # arguments that were not a JSON object were already refused by the tool's
    # validation (its result says so); the API takes only an object here
    return parsed if isinstance(parsed, dict) else {}


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [{"type": "tool_result", "tool_use_id": message.call_id, "content": message.content}]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    if message.role == "assistant":
        blocks += [
            {
                "type": "tool_use",
                "id": call.call_id,
                "name": call.name,
                "input": _tool_input(call.arguments_json),
            }
            for call in message.tool_calls
        ]
    return blocks


def to_request(conversation: Sequence[ChatMessage]) -> Request:
    """The system prompt and the alternating turns for a conversation."""
    system = "\n\n".join(m.content for m in conversation if m.role == "system" and m.content)
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in conversation:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            merged = turns[-1][1] + blocks
            # the API wants tool results first in a user turn
            merged.sort(key=lambda block: block["type"] != "tool_result")
            turns[-1] = (role, merged)
        else:
            turns.append((role, blocks))
    messages: list[MessageParam] = []
    for role, blocks in turns:
        # the blocks are built above to the API's shapes; the SDK's TypedDicts
        # cannot follow that through a dict of Any
        content: Any = blocks
        if role == "assistant":
            messages.append({"role": "assistant", "content": content})
        else:
            messages.append({"role": "user", "content": content})
    return Request(system=system, messages=messages)


def to_tools(tools: Sequence[ToolSpec]) -> list[ToolParam]:
    """Tool specs as the Messages API `tools` array."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "input_schema": dict(spec.parameters),
        }
        for spec in tools
    ]


def step_finished(
    stop_reason: str | None, usage: ApiUsage, *, called_tools: bool, response_id: str, model: str
) -> StepFinished:
    """StepFinished for the message the stream assembled.

    Input tokens count the cached ones too (the API reports them apart), so the
    figure is the prompt's size whatever the cache did.
    """
    reason = _STOP_REASONS.get(stop_reason or "end_turn", "stop")
    if called_tools:
        reason = "tool_calls"
    input_tokens = (
        usage.input_tokens
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
    )
    return StepFinished(
        reason=reason,
        usage=Usage(input_tokens=input_tokens, output_tokens=usage.output_tokens),
        response_id=response_id,
        response_model=model,
    )
