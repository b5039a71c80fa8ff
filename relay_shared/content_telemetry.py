"""What a model call and a tool call said, as span attributes: opt-in content capture.

Off by default; on when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`
(the standard opt-in variable of OpenTelemetry's GenAI instrumentations), read
once per process by `capture_message_content()`.

Pure functions from the conversation the model reads to:

- `gen_ai.input.messages` / `gen_ai.output.messages`: JSON per the GenAI
  conventions' message schema (`[{"role": ..., "parts": [{"type": "text",
  "content": ...}, {"type": "tool_call", "id", "name", "arguments"},
  {"type": "tool_call_response", "id", "response"}]}]`; an output message also
  has its `finish_reason`);
- `gen_ai.system_instructions`: the system messages as text parts;
- OpenInference's `input.value` / `output.value` with `input.mime_type` /
  `output.mime_type`, which Arize Phoenix shows in its Input and Output columns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

CAPTURE_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
JSON_MIME = "application/json"
TEXT_MIME = "text/plain"
# the provider's finish reasons as the output message schema names them
_FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_call"}


def capture_message_content() -> bool:
    """Whether prompts, completions, tool arguments and results go on spans."""
    return os.environ.get(CAPTURE_VARIABLE, "").strip().lower() == "true"


class ToolCallLike(Protocol):
    @property
    def call_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def arguments_json(self) -> str: ...


class MessageLike(Protocol):
    """One item of a conversation (agent_service.providers.base.ChatMessage)."""

    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def tool_calls(self) -> Sequence[ToolCallLike]: ...
    @property
    def call_id(self) -> str: ...


def parse_arguments(arguments_json: str) -> Any:
    """A tool call's arguments as JSON data; a string that is not JSON stays a string."""
    try:
        return json.loads(arguments_json or "{}")
    except ValueError:
        return arguments_json


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _tool_call_part(call: ToolCallLike) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "id": call.call_id,
        "name": call.name,
        "arguments": parse_arguments(call.arguments_json),
    }


def message_parts(text: str, calls: Iterable[ToolCallLike] = ()) -> list[dict[str, Any]]:
    """A message's parts: its text (when there is some), then its tool calls."""
    parts: list[dict[str, Any]] = [{"type": "text", "content": text}] if text else []
    parts.extend(_tool_call_part(c) for c in calls)
    return parts


def input_messages(conversation: Sequence[MessageLike]) -> list[dict[str, Any]]:
    """The conversation (system messages left out: see `system_instructions`)."""
    messages: list[dict[str, Any]] = []
    for m in conversation:
        if m.role == "system":
            continue
        if m.role == "tool":
            part = {"type": "tool_call_response", "id": m.call_id, "response": m.content}
            messages.append({"role": "tool", "parts": [part]})
        else:
            messages.append({"role": m.role, "parts": message_parts(m.content, m.tool_calls)})
    return messages


def system_instructions(conversation: Sequence[MessageLike]) -> list[dict[str, str]]:
    """The conversation's system messages as text parts (empty when there are none)."""
    return [{"type": "text", "content": m.content} for m in conversation if m.role == "system"]


def output_message(text: str, calls: Sequence[ToolCallLike], reason: str) -> dict[str, Any]:
    """The assistant message a model step produced."""
    return {
        "role": "assistant",
        "parts": message_parts(text, calls),
        "finish_reason": _FINISH_REASONS.get(reason, reason or "stop"),
    }


def model_input_attributes(conversation: Sequence[MessageLike]) -> dict[str, str]:
    """The attributes of a model call's input."""
    messages = _dumps(input_messages(conversation))
    attributes = {
        "gen_ai.input.messages": messages,
        "input.value": messages,
        "input.mime_type": JSON_MIME,
    }
    instructions = system_instructions(conversation)
    if instructions:
        attributes["gen_ai.system_instructions"] = _dumps(instructions)
    return attributes


def model_output_attributes(
    text: str, calls: Sequence[ToolCallLike], reason: str
) -> dict[str, str]:
    """The attributes of a model call's output. Phoenix shows the text itself when the
    step wrote only text, the output message's JSON when it also asked for tools."""
    message = output_message(text, calls, reason)
    return {
        "gen_ai.output.messages": _dumps([message]),
        "output.value": text if not calls else _dumps(message),
        "output.mime_type": TEXT_MIME if not calls else JSON_MIME,
    }


def tool_attributes(arguments_json: str, result: str) -> dict[str, str]:
    """The attributes of a tool call's arguments and result."""
    return {
        "gen_ai.tool.call.arguments": arguments_json or "{}",
        "gen_ai.tool.call.result": result,
        "input.value": arguments_json or "{}",
        "input.mime_type": JSON_MIME,
        "output.value": result,
        "output.mime_type": TEXT_MIME,
    }


def text_attributes(prefix: str, text: str) -> dict[str, str]:
    """`input.value` or `output.value` (prefix `input` / `output`) holding plain text."""
    return {f"{prefix}.value": text, f"{prefix}.mime_type": TEXT_MIME}
