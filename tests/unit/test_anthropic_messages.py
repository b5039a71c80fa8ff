"""The anthropic provider's pure request mapping and stop-reason mapping."""

from __future__ import annotations

from anthropic.types import Usage as ApiUsage

from agent_service.providers.anthropic_messages import step_finished, to_request, to_tools
from agent_service.providers.base import ChatMessage, StepFinished, ToolCallRequested, Usage
from agent_service.tools.base import ToolSpec


def test_system_messages_go_to_the_system_field() -> None:
    request = to_request(
        [
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="system", content="Use tools."),
            ChatMessage(role="user", content="hi"),
        ]
    )
    assert request.system == "Be brief.\n\nUse tools."
    assert request.messages == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_tool_results_of_one_step_share_one_user_turn() -> None:
    calls = (
        ToolCallRequested("t1", "calculator", '{"expression": "1"}'),
        ToolCallRequested("t2", "long_task", "not json"),
    )
    request = to_request(
        [
            ChatMessage(role="user", content="go"),
            ChatMessage(role="assistant", tool_calls=calls),
            ChatMessage(role="tool", content="1", call_id="t1"),
            ChatMessage(role="tool", content="done", call_id="t2"),
        ]
    )
    assert [m["role"] for m in request.messages] == ["user", "assistant", "user"]
    assert request.messages[1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "calculator", "input": {"expression": "1"}},
        {"type": "tool_use", "id": "t2", "name": "long_task", "input": {}},
    ]
    assert [b["tool_use_id"] for b in request.messages[2]["content"]] == ["t1", "t2"]  # type: ignore[index, union-attr]


def test_empty_turns_are_dropped_and_neighbours_merge() -> None:
    request = to_request(
        [
            ChatMessage(role="user", content="one"),
            ChatMessage(role="assistant", content=""),  # a reply cancelled before any word
            ChatMessage(role="user", content="two"),
        ]
    )
    assert request.messages == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        }
    ]


def test_tools_use_input_schema() -> None:
    schema = {"type": "object", "properties": {}}
    assert to_tools([ToolSpec("long_task", "Wait.", schema, 5.0)]) == [
        {"name": "long_task", "description": "Wait.", "input_schema": schema}
    ]


def test_stop_reasons_and_usage() -> None:
    usage = ApiUsage(
        input_tokens=10, output_tokens=4, cache_read_input_tokens=90, cache_creation_input_tokens=5
    )
    common = {"response_id": "msg_1", "model": "claude-x"}
    assert step_finished("end_turn", usage, called_tools=False, **common) == StepFinished(
        "stop", Usage(105, 4), "msg_1", "claude-x"
    )
    assert step_finished("max_tokens", usage, called_tools=False, **common).reason == "length"
    assert step_finished("tool_use", usage, called_tools=True, **common).reason == "tool_calls"
    # tool_use blocks cut by max_tokens are still calls the agent must answer
    assert step_finished("max_tokens", usage, called_tools=True, **common).reason == "tool_calls"
    assert step_finished(None, usage, called_tools=False, **common).reason == "stop"
