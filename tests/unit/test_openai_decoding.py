"""The pure parts the SDK-based providers keep: tool-call assembly from the openai SDK's
chunks, and the mapping of HTTP failures to ModelError."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from agent_service.providers.base import (
    ModelError,
    StepFinished,
    TextDelta,
    ToolCallRequested,
    Usage,
)
from agent_service.providers.endpoint import endpoint_of
from agent_service.providers.http_errors import (
    error_for_status,
    error_in_stream,
    parse_retry_after_ms,
)
from agent_service.providers.openai_chunks import StepAssembler


def sdk_chunk(**fields: Any) -> ChatCompletionChunk:
    """A chunk as the SDK builds it from a server's JSON (no validation, as the SDK does)."""
    base: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m-2024",
        "choices": [],
    }
    base.update(fields)
    return ChatCompletionChunk.construct(**base)


def delta_chunk(finish: str | None = None, index: int = 0, **delta: Any) -> ChatCompletionChunk:
    return sdk_chunk(choices=[{"index": index, "delta": delta, "finish_reason": finish}])


def test_pieces_of_calls_are_joined_in_index_order() -> None:
    step = StepAssembler()
    step.feed(delta_chunk(tool_calls=[{"index": 1, "id": "b", "function": {"name": "long_task"}}]))
    step.feed(delta_chunk(tool_calls=[{"index": 0, "id": "a", "function": {"name": "calculator"}}]))
    for piece in ('{"expr', 'ession": ', '"1"}'):
        step.feed(delta_chunk(tool_calls=[{"index": 0, "function": {"arguments": piece}}]))
    step.feed(delta_chunk(finish="tool_calls"))
    assert step.finish() == [
        ToolCallRequested("a", "calculator", '{"expression": "1"}'),
        ToolCallRequested("b", "long_task", "{}"),
        StepFinished("tool_calls", Usage(), "chatcmpl-1", "m-2024"),
    ]


def test_calls_without_index_or_id_are_still_assembled() -> None:
    step = StepAssembler()
    call = {"id": "x", "function": {"name": "calculator", "arguments": '{"expression": "1"}'}}
    assert step.feed(delta_chunk(tool_calls=[call])) == []
    assert step.feed(delta_chunk(tool_calls=[{"function": {"name": "long_task"}}])) == []
    step.feed(delta_chunk(finish="stop"))
    events = step.finish()
    assert events[0] == ToolCallRequested("x", "calculator", '{"expression": "1"}')
    second = events[1]
    assert isinstance(second, ToolCallRequested)
    assert second.name == "long_task" and second.arguments_json == "{}"
    assert second.call_id.startswith("call_")
    assert isinstance(events[2], StepFinished)
    assert events[2].reason == "tool_calls"  # calls made: tool_calls whatever it said


def test_text_usage_and_other_choices() -> None:
    step = StepAssembler()
    assert step.feed(delta_chunk(content="hi")) == [TextDelta("hi")]
    assert step.feed(delta_chunk(index=1, content="ignored")) == []
    assert not step.finished
    step.feed(delta_chunk(finish="content_filter"))
    step.feed(sdk_chunk(usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}))
    assert step.finished
    assert step.finish() == [StepFinished("stop", Usage(5, 2), "chatcmpl-1", "m-2024")]


def test_a_call_without_a_name_is_an_error() -> None:
    step = StepAssembler()
    step.feed(delta_chunk(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
    with pytest.raises(ModelError) as caught:
        step.finish()
    assert caught.value.code == "model_error"


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after_ms({"retry-after": "3"}, now) == 3000
    assert parse_retry_after_ms({"retry-after": "0.5"}, now) == 500
    assert parse_retry_after_ms({"retry-after": date}, now) == 30_000
    assert parse_retry_after_ms({"retry-after": "soon"}, now) == 0
    assert parse_retry_after_ms({"retry-after-ms": "250", "retry-after": "9"}, now) == 250
    assert parse_retry_after_ms({}, now) == 0


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, "model_unauthorized", False),
        (403, "model_unauthorized", False),
        (429, "model_rate_limited", True),
        (408, "model_unavailable", True),
        (500, "model_unavailable", True),
        (503, "model_unavailable", True),
        (529, "model_unavailable", True),
        (400, "model_error", False),
        (404, "model_error", False),
    ],
)
def test_status_mapping(status: int, code: str, retryable: bool) -> None:
    body = '{"error": {"message": "why"}}'
    error = error_for_status(status, {}, body, key_setting="the_key", now_s=0)
    assert (error.code, error.retryable) == (code, retryable)
    assert f"HTTP {status}" in error.message and "(why)" in error.message


@pytest.mark.parametrize(
    ("kind", "code", "retryable"),
    [
        ("server_error", "model_unavailable", True),
        ("overloaded_error", "model_unavailable", True),
        ("api_error", "model_unavailable", True),
        ("rate_limit_error", "model_rate_limited", True),
        ("invalid_request_error", "model_error", False),
        ("", "model_error", False),
    ],
)
def test_errors_inside_a_stream(kind: str, code: str, retryable: bool) -> None:
    error = error_in_stream(kind, "went wrong")
    assert (error.code, error.retryable) == (code, retryable)
    assert "went wrong" in error.message


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://api.openai.com/v1", ("api.openai.com", 443)),
        ("http://127.0.0.1:11434/v1", ("127.0.0.1", 11434)),
        ("http://localhost/v1", ("localhost", 80)),
    ],
)
def test_the_endpoint_a_base_url_names(url: str, endpoint: tuple[str, int]) -> None:
    assert endpoint_of(url) == endpoint
