"""The openai provider's pure parts: SSE decoding, step assembly, error mapping."""

from __future__ import annotations

import email.utils

import pytest

from agent_service.providers.base import (
    ModelError,
    StepFinished,
    TextDelta,
    ToolCallRequested,
    Usage,
)
from agent_service.providers.openai import (
    SseDecoder,
    StepAssembler,
    error_for_status,
    parse_retry_after_ms,
)


def test_sse_events_lines_and_fields() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b': comment\r\nevent: x\r\ndata: {"a"') == []
    assert decoder.feed(b": 1}\r\n\r\ndata:no-space\n") == ['{"a": 1}']
    assert decoder.feed(b"data: second line\n\n\n") == ["no-space\nsecond line"]
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.end() == ["[DONE]"]


def test_sse_refuses_an_endless_line() -> None:
    decoder = SseDecoder()
    with pytest.raises(ModelError):
        decoder.feed(b"data: " + b"x" * (4 * 1024 * 1024 + 1))


def delta_chunk(**delta: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_calls_without_index_or_id_are_still_assembled() -> None:
    step = StepAssembler()
    call = {"id": "x", "function": {"name": "calculator", "arguments": '{"expression": "1"}'}}
    assert step.feed(delta_chunk(tool_calls=[call])) == []
    assert step.feed(delta_chunk(tool_calls=[{"function": {"name": "long_task"}}])) == []
    step.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events = step.finish()
    assert events[0] == ToolCallRequested("x", "calculator", '{"expression": "1"}')
    second = events[1]
    assert isinstance(second, ToolCallRequested)
    assert second.name == "long_task" and second.arguments_json == "{}"
    assert second.call_id.startswith("call_")
    assert events[2] == StepFinished("tool_calls")  # calls made: tool_calls whatever it said


def test_text_usage_and_other_choices() -> None:
    step = StepAssembler()
    assert step.feed(delta_chunk(content="hi")) == [TextDelta("hi")]
    other = {"choices": [{"index": 1, "delta": {"content": "ignored"}}]}
    assert step.feed(other) == []
    assert not step.finished
    step.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]})
    step.feed({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    assert step.finished
    assert step.finish() == [StepFinished("stop", Usage(5, 2))]


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
        (400, "model_error", False),
        (404, "model_error", False),
    ],
)
def test_status_mapping(status: int, code: str, retryable: bool) -> None:
    error = error_for_status(status, {}, '{"error": {"message": "why"}}', now_s=0)
    assert (error.code, error.retryable) == (code, retryable)
    assert f"HTTP {status}" in error.message and "(why)" in error.message
