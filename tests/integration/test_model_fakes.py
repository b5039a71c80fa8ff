"""The model API fakes refuse what the real APIs refuse, with the real APIs' error shapes.

Other tests trust FakeOpenAI and FakeAnthropic to catch a conversation the API would
refuse (an unanswered tool call, turns out of order); here each rule is shown to bite,
with raw HTTP requests, and a valid request is shown to pass.
"""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_anthropic import text_reply as anthropic_text
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_openai import text_reply as openai_text


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


# --- Chat Completions ---------------------------------------------------------------------

CALL = {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}
VALID_OPENAI: dict[str, Any] = {
    "model": "m",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "thanks"},
    ],
    "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
}


def openai_body(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID_OPENAI)
    body.update(changes)
    return body


def with_messages(*messages: dict[str, Any]) -> dict[str, Any]:
    return openai_body(messages=list(messages))


USER = {"role": "user", "content": "hi"}
OPENAI_BROKEN = {
    "no model": (openai_body(model=""), "model"),
    "no messages": (openai_body(messages=[]), "at least one message"),
    "unknown role": (with_messages({"role": "robot", "content": "x"}), "Supported values are"),
    "tool_calls unanswered at the end": (
        with_messages(USER, {"role": "assistant", "tool_calls": [CALL]}),
        "must be followed by tool messages responding to each 'tool_call_id'",
    ),
    "tool_calls answered after a user message": (
        with_messages(
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            USER,
            {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        ),
        "did not have response messages: call_1",
    ),
    "a tool message without a call": (
        with_messages(USER, {"role": "tool", "tool_call_id": "call_1", "content": "1"}),
        "must be a response to a preceeding message with 'tool_calls'",
    ),
    "a tool message for another id": (
        with_messages(
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_2", "content": "1"},
        ),
        "must be a response to a preceeding message with 'tool_calls'",
    ),
    "two answers to one call": (
        with_messages(
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "1"},
            {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        ),
        "must be a response to a preceeding message with 'tool_calls'",
    ),
    "arguments that are not a string": (
        with_messages(
            USER,
            {
                "role": "assistant",
                "tool_calls": [{**CALL, "function": {"name": "calc", "arguments": {}}}],
            },
        ),
        "string arguments",
    ),
    "an assistant message with nothing": (
        with_messages(USER, {"role": "assistant", "content": None}),
        "expected a string, got null",
    ),
    "a bad tool name": (
        openai_body(tools=[{"type": "function", "function": {"name": "two words"}}]),
        "does not match pattern",
    ),
    "stream_options without stream": (openai_body(stream=False), "only allowed when 'stream'"),
}


@pytest.mark.parametrize("case", sorted(OPENAI_BROKEN))
async def test_openai_fake_refuses(case: str) -> None:
    body, fragment = OPENAI_BROKEN[case]
    async with FakeOpenAI() as fake:
        status, reply = await post(fake.url + "/chat/completions", body)
        assert len(fake.rejections) == 1
    assert status == 400
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["type"] == "invalid_request_error"
    assert fragment in reply["error"]["message"]


async def test_openai_fake_accepts_a_valid_request_and_checks_the_key() -> None:
    async with FakeOpenAI(api_key="sk-1") as fake:
        fake.script(openai_text("hello"))
        status, text = await post(
            fake.url + "/chat/completions", VALID_OPENAI, {"Authorization": "Bearer sk-1"}
        )
        assert (status, fake.rejections) == (200, [])
        assert '"content": "hello"' in text and text.endswith("data: [DONE]\n\n")
        status, reply = await post(fake.url + "/chat/completions", VALID_OPENAI)
    assert status == 401
    assert reply["error"]["code"] == "invalid_api_key"


# --- Messages ----------------------------------------------------------------------------

HEADERS = {"anthropic-version": "2023-06-01"}
USE = {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "1"}
VALID_ANTHROPIC: dict[str, Any] = {
    "model": "claude",
    "max_tokens": 100,
    "stream": True,
    "system": "Be brief.",
    "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me."}, USE]},
        {"role": "user", "content": [RESULT, {"type": "text", "text": "and?"}]},
    ],
    "tools": [{"name": "calc", "input_schema": {"type": "object"}}],
}


def anthropic_body(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID_ANTHROPIC)
    body.update(changes)
    return body


def turns(*messages: dict[str, Any]) -> dict[str, Any]:
    return anthropic_body(messages=list(messages))


HI = {"role": "user", "content": "hi"}
ASKS = {"role": "assistant", "content": [USE]}
ANTHROPIC_BROKEN = {
    "no max_tokens": (
        {k: v for k, v in VALID_ANTHROPIC.items() if k != "max_tokens"},
        "max_tokens: Field required",
    ),
    "max_tokens zero": (anthropic_body(max_tokens=0), "greater than or equal to 1"),
    "no model": (anthropic_body(model=""), "model: Field required"),
    "no messages": (anthropic_body(messages=[]), "at least one message"),
    "first turn assistant": (
        turns({"role": "assistant", "content": "hi"}),
        'first message must use the "user" role',
    ),
    "two user turns in a row": (turns(HI, HI), "roles must alternate"),
    "a system turn": (turns({"role": "system", "content": "x"}), "top-level `system`"),
    "tool_use without a result": (turns(HI, ASKS, HI), "without `tool_result` blocks"),
    "a result without a tool_use": (
        turns(HI, {"role": "assistant", "content": "ok"}, {"role": "user", "content": [RESULT]}),
        "must have a corresponding `tool_use` block",
    ),
    "a result for another id": (
        turns(HI, ASKS, {"role": "user", "content": [{**RESULT, "tool_use_id": "toolu_2"}]}),
        "without `tool_result` blocks immediately after: toolu_1",
    ),
    "a result after text": (
        turns(HI, ASKS, {"role": "user", "content": [{"type": "text", "text": "x"}, RESULT]}),
        "must come first",
    ),
    "an empty text block": (
        turns({"role": "user", "content": [{"type": "text", "text": ""}]}),
        "text content blocks must be non-empty",
    ),
    "empty content": (turns({"role": "user", "content": ""}), "non-empty content"),
    "tool_use in a user turn": (
        turns({"role": "user", "content": [USE]}),
        "tool_use blocks only in assistant turns",
    ),
    "input that is not an object": (
        turns(HI, {"role": "assistant", "content": [{**USE, "input": "{}"}]}),
        "object input",
    ),
    "a tool without input_schema": (
        anthropic_body(tools=[{"name": "calc"}]),
        "input_schema.type: Input should be 'object'",
    ),
}


@pytest.mark.parametrize("case", sorted(ANTHROPIC_BROKEN))
async def test_anthropic_fake_refuses(case: str) -> None:
    body, fragment = ANTHROPIC_BROKEN[case]
    async with FakeAnthropic() as fake:
        status, reply = await post(fake.url + "/v1/messages", body, HEADERS)
        assert len(fake.rejections) == 1
    assert status == 400
    assert reply["type"] == "error"
    assert reply["error"]["type"] == "invalid_request_error"
    assert fragment in reply["error"]["message"]


async def test_anthropic_fake_needs_the_version_header_and_the_key() -> None:
    async with FakeAnthropic(api_key="sk-ant-1") as fake:
        fake.script(anthropic_text("hello"))
        good = {**HEADERS, "x-api-key": "sk-ant-1"}
        status, text = await post(fake.url + "/v1/messages", VALID_ANTHROPIC, good)
        assert (status, fake.rejections) == (200, [])
        assert "event: message_stop" in text
        status, reply = await post(fake.url + "/v1/messages", VALID_ANTHROPIC, HEADERS)
        assert (status, reply["error"]["type"]) == (401, "authentication_error")
        status, reply = await post(
            fake.url + "/v1/messages", VALID_ANTHROPIC, {"x-api-key": "sk-ant-1"}
        )
        assert status == 400 and "anthropic-version" in reply["error"]["message"]
