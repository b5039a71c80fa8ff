"""The openai provider against a local server speaking the streaming Chat Completions format.

The server is a real aiohttp app on 127.0.0.1 port 0. Each test scripts its replies
(SSE lines as the public API documents them: `data: {chunk}`, a blank line, and
`data: [DONE]` at the end; or an HTTP error), and the server records what it was sent
and whether the client went away mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
from aiohttp import web

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service.providers.base import (
    ChatMessage,
    ModelError,
    StepFinished,
    TextDelta,
    ToolCallRequested,
    Usage,
)
from agent_service.providers.openai import OpenAIProvider
from agent_service.tools.base import ToolSpec
from tests.support.chat import joined_session
from tests.support.service import ServiceProcess, start_agent_service

FACTOR = float(os.environ.get("AGENT_RELAY_TEST_TIMEOUT_FACTOR", "1") or "1")


def scaled(seconds: float) -> float:
    return seconds * FACTOR


# --- the wire format ---------------------------------------------------------------------


def chunk(
    *,
    content: str | None = None,
    role: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str | None = None,
) -> str:
    """One `data:` event carrying a chat.completion.chunk, as the API streams it."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "test-model",
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def usage_chunk(prompt: int, completion: int) -> str:
    """The last chunk when stream_options.include_usage is set: no choices, the usage."""
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return f"data: {json.dumps(body)}\n\n"


def call_start(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }


def call_args(index: int, piece: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": piece}}


DONE = "data: [DONE]\n\n"


# --- the server --------------------------------------------------------------------------


@dataclass
class Reply:
    """What the server does with one request."""

    status: int = 200
    lines: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    split_bytes: int = 0  # >0: write each line in pieces of this many bytes
    then: Literal["end", "cut", "hold", "stall"] = "end"


@dataclass
class Server:
    url: str
    replies: list[Reply] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def provider(self, **kwargs: Any) -> OpenAIProvider:
        options: dict[str, Any] = {"base_url": self.url, "api_key": "sk-test", "model": "m-1"}
        options.update(kwargs)
        return OpenAIProvider(**options)


SERVER = web.AppKey("server", Server)


async def completions(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    server.requests.append((request.path, dict(request.headers), await request.json()))
    reply = server.replies.pop(0)
    if reply.status != 200 or reply.body:
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        for line in reply.lines:
            data = line.encode()
            step = reply.split_bytes or len(data)
            for start in range(0, len(data), step):
                await response.write(data[start : start + step])
                if reply.split_bytes:
                    await asyncio.sleep(0)
        if reply.then == "cut":
            assert request.transport is not None
            request.transport.abort()  # the connection drops mid-stream
            return response
        if reply.then == "hold":  # keeps streaming keep-alive comments until the client leaves
            while not server.stop.is_set():
                await asyncio.sleep(0.01)
                await response.write(b": keep-alive\n\n")
        if reply.then == "stall":  # sends nothing more, but keeps the connection
            await asyncio.wait_for(server.stop.wait(), scaled(30))
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        server.disconnected.set()
        raise
    return response


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    state = Server(url="")
    app[SERVER] = state
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        state.stop.set()
        await runner.cleanup()


async def _take_all(provider: OpenAIProvider, conversation: list[ChatMessage], tools) -> list[Any]:
    return [event async for event in provider.stream(conversation, tools)]


async def run_step(
    provider: OpenAIProvider,
    conversation: list[ChatMessage] | None = None,
    tools: tuple[ToolSpec, ...] | list[ToolSpec] = (),
) -> list[Any]:
    """Every event of one step (raises its ModelError), then close the provider."""
    conversation = conversation or [ChatMessage(role="user", content="hi")]
    try:
        return await asyncio.wait_for(_take_all(provider, conversation, tools), scaled(10))
    finally:
        await provider.aclose()


# --- streaming ---------------------------------------------------------------------------


async def test_text_streams_with_usage(server: Server) -> None:
    server.replies.append(
        Reply(
            lines=[
                chunk(role="assistant", content=""),
                chunk(content="Hello"),
                chunk(content=", world"),
                chunk(finish="stop"),
                usage_chunk(12, 3),
                DONE,
            ]
        )
    )
    events = await run_step(server.provider())
    assert events == [
        TextDelta("Hello"),
        TextDelta(", world"),
        StepFinished("stop", Usage(input_tokens=12, output_tokens=3)),
    ]
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "m-1"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "tools" not in body


async def test_events_split_across_network_writes(server: Server) -> None:
    server.replies.append(
        Reply(lines=[chunk(content="naïve ☃ text"), chunk(finish="length"), DONE], split_bytes=3)
    )
    events = await run_step(server.provider())
    assert events == [TextDelta("naïve ☃ text"), StepFinished("length")]


async def test_tool_call_deltas_are_assembled(server: Server) -> None:
    server.replies.append(
        Reply(
            lines=[
                chunk(role="assistant", content=None),
                chunk(tool_calls=[call_start(0, "call_a", "calculator")]),
                chunk(tool_calls=[call_args(0, '{"expr')]),
                chunk(tool_calls=[call_args(0, 'ession": "2 ')]),
                chunk(tool_calls=[call_args(0, '+ 2"}')]),
                chunk(tool_calls=[call_start(1, "call_b", "read_file")]),
                chunk(tool_calls=[call_args(1, '{"path":')]),
                chunk(tool_calls=[call_args(1, ' "README.md"}')]),
                chunk(finish="tool_calls"),
                usage_chunk(40, 22),
                DONE,
            ]
        )
    )
    events = await run_step(server.provider())
    assert events == [
        ToolCallRequested("call_a", "calculator", '{"expression": "2 + 2"}'),
        ToolCallRequested("call_b", "read_file", '{"path": "README.md"}'),
        StepFinished("tool_calls", Usage(40, 22)),
    ]


async def test_text_before_tool_calls_and_calls_in_one_chunk(server: Server) -> None:
    both = [call_start(0, "c0", "long_task"), call_start(1, "c1", "calculator")]
    server.replies.append(
        Reply(
            lines=[
                chunk(content="Let me check."),
                chunk(tool_calls=both),
                chunk(tool_calls=[call_args(1, '{"expression": "1"}'), call_args(0, "{}")]),
                chunk(finish="tool_calls"),
                DONE,
            ]
        )
    )
    events = await run_step(server.provider())
    assert events == [
        TextDelta("Let me check."),
        ToolCallRequested("c0", "long_task", "{}"),
        ToolCallRequested("c1", "calculator", '{"expression": "1"}'),
        StepFinished("tool_calls"),
    ]


async def test_conversation_and_tools_are_mapped(server: Server) -> None:
    server.replies.append(Reply(lines=[chunk(content="ok"), chunk(finish="stop"), DONE]))
    conversation = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="What is 2+2?"),
        ChatMessage(
            role="assistant",
            tool_calls=(ToolCallRequested("call_1", "calculator", '{"expression": "2+2"}'),),
        ),
        ChatMessage(role="tool", content="4", call_id="call_1", name="calculator"),
        ChatMessage(role="assistant", content="It is 4."),
        ChatMessage(role="user", content="Thanks"),
    ]
    schema = {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    }
    tools = [ToolSpec("calculator", "Evaluate arithmetic.", schema, 5.0)]
    await run_step(server.provider(api_key=""), conversation, tools)

    _, headers, body = server.requests[0]
    assert "Authorization" not in headers  # no key configured: none sent (local servers)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "Thanks"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": "Evaluate arithmetic.",
                "parameters": schema,
            },
        }
    ]


# --- cancellation ------------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_http_stream(server: Server) -> None:
    server.replies.append(Reply(lines=[chunk(content="first")], then="hold"))
    provider = server.provider()
    got_first = asyncio.Event()
    seen: list[Any] = []

    async def consume() -> None:
        async for event in provider.stream([ChatMessage(role="user", content="hi")], []):
            seen.append(event)
            got_first.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(got_first.wait(), scaled(5))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), scaled(5))
    finally:
        await provider.aclose()
    assert seen == [TextDelta("first")]


async def test_closing_the_generator_closes_the_http_stream(server: Server) -> None:
    server.replies.append(Reply(lines=[chunk(content="first")], then="hold"))
    provider = server.provider()
    try:
        stream = provider.stream([ChatMessage(role="user", content="hi")], [])
        assert await asyncio.wait_for(anext(stream), scaled(5)) == TextDelta("first")
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(server.disconnected.wait(), scaled(5))
    finally:
        await provider.aclose()


# --- failures ----------------------------------------------------------------------------


def api_error(message: str, kind: str, code: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


async def model_error_of(server: Server, **provider_options: Any) -> ModelError:
    with pytest.raises(ModelError) as caught:
        await run_step(server.provider(**provider_options))
    return caught.value


async def test_401_is_unauthorized_and_not_retryable(server: Server) -> None:
    body = api_error(
        "Incorrect API key provided: sk-test.", "invalid_request_error", "invalid_api_key"
    )
    server.replies.append(
        Reply(status=401, body=body, headers={"Content-Type": "application/json"})
    )
    error = await model_error_of(server)
    assert error.code == "model_unauthorized"
    assert not error.retryable
    assert "HTTP 401" in error.message and "Incorrect API key provided" in error.message


async def test_429_is_rate_limited_with_retry_after(server: Server) -> None:
    body = api_error("Rate limit reached for requests", "requests", "rate_limit_exceeded")
    server.replies.append(Reply(status=429, body=body, headers={"Retry-After": "7"}))
    error = await model_error_of(server)
    assert error.code == "model_rate_limited"
    assert error.retryable
    assert error.retry_after_ms == 7_000
    assert "Rate limit reached" in error.message


async def test_429_prefers_retry_after_ms(server: Server) -> None:
    server.replies.append(
        Reply(status=429, body="slow down", headers={"Retry-After": "2", "retry-after-ms": "1500"})
    )
    error = await model_error_of(server)
    assert (error.code, error.retryable, error.retry_after_ms) == ("model_rate_limited", True, 1500)


async def test_429_out_of_quota_is_not_retryable(server: Server) -> None:
    body = api_error("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    server.replies.append(Reply(status=429, body=body))
    error = await model_error_of(server)
    assert error.code == "model_rate_limited"
    assert not error.retryable


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_unavailable_and_retryable(server: Server, status: int) -> None:
    server.replies.append(Reply(status=status, body="<html>upstream went away</html>"))
    error = await model_error_of(server)
    assert error.code == "model_unavailable"
    assert error.retryable
    assert f"HTTP {status}" in error.message and "upstream went away" in error.message


async def test_400_is_a_model_error(server: Server) -> None:
    body = api_error("This model's maximum context length is 8192 tokens.", "invalid_request_error")
    server.replies.append(Reply(status=400, body=body))
    error = await model_error_of(server)
    assert error.code == "model_error"
    assert not error.retryable
    assert "maximum context length" in error.message


async def test_stream_cut_mid_way(server: Server) -> None:
    server.replies.append(Reply(lines=[chunk(content="partial")], then="cut"))
    provider = server.provider()
    seen: list[Any] = []
    with pytest.raises(ModelError) as caught:
        try:
            async for event in provider.stream([ChatMessage(role="user", content="hi")], []):
                seen.append(event)
        finally:
            await provider.aclose()
    assert seen == [TextDelta("partial")]
    assert caught.value.code == "model_unavailable"
    assert caught.value.retryable
    assert "cut mid-way" in caught.value.message


async def test_stream_ending_without_done(server: Server) -> None:
    server.replies.append(Reply(lines=[chunk(content="partial")], then="end"))
    error = await model_error_of(server)
    assert error.code == "model_unavailable"
    assert error.retryable
    assert "ended before the reply was finished" in error.message


async def test_error_object_inside_the_stream(server: Server) -> None:
    error_event = "data: " + api_error("The server had an error", "server_error") + "\n\n"
    server.replies.append(Reply(lines=[chunk(content="a"), error_event]))
    error = await model_error_of(server)
    assert error.code == "model_unavailable"
    assert error.retryable
    assert "The server had an error" in error.message


async def test_a_chunk_that_is_not_json(server: Server) -> None:
    server.replies.append(Reply(lines=["data: {not json\n\n"]))
    error = await model_error_of(server)
    assert error.code == "model_error"
    assert "not JSON" in error.message


async def test_a_silent_server_times_out(server: Server) -> None:
    server.replies.append(Reply(lines=[chunk(content="a")], then="stall"))
    error = await model_error_of(server, read_timeout_s=0.3)
    assert error.code == "timeout"
    assert error.retryable


async def test_nothing_listening_is_unavailable() -> None:
    provider = OpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key="", model="m")
    with pytest.raises(ModelError) as caught:
        await run_step(provider)
    assert caught.value.code == "model_unavailable"
    assert caught.value.retryable
    assert "cannot reach the model endpoint" in caught.value.message


# --- through the real agent service ------------------------------------------------------


def start_service_on(server: Server, tmp_path: Path) -> ServiceProcess:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return start_agent_service(
        tmp_path,
        "--model", "openai", "--openai-base-url", server.url, "--openai-api-key", "sk-test",
        "--openai-model", "m-1", "--workspace-dir", str(workspace),
    )  # fmt: skip


async def test_a_multi_step_run_through_the_service(server: Server, tmp_path: Path) -> None:
    server.replies.append(
        Reply(
            lines=[
                chunk(content="Working on it."),
                chunk(tool_calls=[call_start(0, "call_calc", "calculator")]),
                chunk(tool_calls=[call_args(0, '{"expression": ')]),
                chunk(tool_calls=[call_args(0, '"6 * 7"}')]),
                chunk(tool_calls=[call_start(1, "call_wait", "long_task")]),
                chunk(tool_calls=[call_args(1, '{"seconds": 0.2, "steps": 2}')]),
                chunk(finish="tool_calls"),
                usage_chunk(50, 20),
                DONE,
            ]
        )
    )
    server.replies.append(
        Reply(
            lines=[
                chunk(content="The answer"),
                chunk(content=" is 42."),
                chunk(finish="stop"),
                DONE,
            ]
        )
    )
    service = start_service_on(server, tmp_path)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = await joined_session(stub)
            run_id = (await chat.send(session, "m1", "What is 6 * 7?")).accepted.run_id
            done = await chat.wait_completed(session, run_id)
            await chat.close()
    finally:
        service.stop()

    assert done.run_completed.finish_reason == pb.FINISH_REASON_STOP
    assert done.run_completed.text.endswith("The answer is 42.")
    # the second request carried the first step's tool calls and their results
    assert len(server.requests) == 2
    _, _, second = server.requests[1]
    messages = second["messages"]
    assert messages[0] == {"role": "user", "content": "What is 6 * 7?"}
    assistant = messages[1]
    assert assistant["role"] == "assistant"
    assert [(c["id"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("call_calc", "calculator"),
        ("call_wait", "long_task"),
    ]
    results = {m["tool_call_id"]: m["content"] for m in messages[2:] if m["role"] == "tool"}
    assert results["call_calc"] == "42"
    assert results["call_wait"].startswith("long_task finished 2 steps")
    assert {t["function"]["name"] for t in second["tools"]} >= {"calculator", "python"}


async def test_a_refused_key_ends_the_run_with_a_clear_error(
    server: Server, tmp_path: Path
) -> None:
    body = api_error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    server.replies.append(Reply(status=401, body=body))
    service = start_service_on(server, tmp_path)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = await joined_session(stub)
            run_id = (await chat.send(session, "m1", "hi")).accepted.run_id
            done = await chat.wait_completed(session, run_id)
            errors = [e.run_error for e in chat.events[session] if e.HasField("run_error")]
            await chat.close()
    finally:
        service.stop()
    assert done.run_completed.finish_reason == pb.FINISH_REASON_ERROR
    assert [(e.code, e.retryable) for e in errors] == [("model_unauthorized", False)]
    assert "Incorrect API key provided" in errors[0].message


async def test_cancelling_a_run_closes_the_model_stream(server: Server, tmp_path: Path) -> None:
    server.replies.append(Reply(lines=[chunk(content="Thinking")], then="hold"))
    service = start_service_on(server, tmp_path)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = await joined_session(stub)
            run_id = (await chat.send(session, "m1", "hi")).accepted.run_id
            await chat.wait_for(session, lambda e: e.HasField("response_delta"))
            reply = await stub.Cancel(pb.CancelRequest(session_id=session, run_id=run_id))
            done = await chat.wait_completed(session, run_id)
            await asyncio.wait_for(server.disconnected.wait(), scaled(10))
            await chat.close()
    finally:
        service.stop()
    assert reply.cancelled
    assert done.run_completed.finish_reason == pb.FINISH_REASON_CANCELLED


async def test_a_json_reply_where_a_stream_was_asked_for(server: Server) -> None:
    whole = {"id": "x", "object": "chat.completion", "choices": [{"message": {"content": "hi"}}]}
    server.replies.append(
        Reply(status=200, body=json.dumps(whole), headers={"Content-Type": "application/json"})
    )
    server.replies.append(
        Reply(
            status=200,
            body=api_error("model overloaded", "server_error"),
            headers={"Content-Type": "application/json"},
        )
    )
    error = await model_error_of(server)
    assert error.code == "model_error"
    assert "instead of a stream" in error.message
    error = await model_error_of(server)
    assert (error.code, error.retryable) == ("model_unavailable", True)
    assert "model overloaded" in error.message
