"""A local OpenAI Chat Completions endpoint that enforces the API's rules.

FakeOpenAI serves `POST /v1/chat/completions` on 127.0.0.1 port 0 (see fake_http).
Before answering it checks the request as the real API does and answers a
violation with HTTP 400 and the API's error JSON
(`{"error": {"message", "type": "invalid_request_error", "param", "code"}}`):

- `model` is a non-empty string; `messages` a non-empty list;
- each role is one of system, developer, user, assistant, tool;
- system, developer and user messages have content; an assistant message has
  content or tool_calls, each call with an id, type `function`, a name and
  string arguments;
- an assistant message with tool_calls is followed by tool messages responding
  to each tool_call_id, before any other message;
- a tool message responds to a call of the assistant message before it, once;
- `tools` entries are functions with valid, unique names and object parameters;
- `stream_options` only with `stream: true`;
- with `api_key` set, `Authorization: Bearer <key>` (else 401, invalid_api_key).

Replies are scripted with the builders below: chunks as the API streams them
(`data: {chat.completion.chunk}`, a usage chunk, `data: [DONE]`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from tests.support.fake_http import FakeModelServer, Rejected, Reply, Then, split, sse

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
DONE = "data: [DONE]\n\n"


class FakeOpenAI(FakeModelServer):
    """The Chat Completions API, scripted; `url` ends in /v1 like the real base URL."""

    route = "/v1/chat/completions"

    def __init__(self, *, api_key: str = "") -> None:
        super().__init__()
        self.api_key = api_key

    def base_url(self, origin: str) -> str:
        """The base URL a client is given: the origin and /v1."""
        return origin + "/v1"

    def error_response(
        self,
        status: int,
        kind: str,
        message: str,
        param: str | None = None,
        code: str | None = None,
    ) -> web.Response:
        """The API's error reply."""
        error = {"message": message, "type": kind, "param": param, "code": code}
        return web.json_response({"error": error}, status=status)

    def check(self, headers: dict[str, str], body: dict[str, Any]) -> None:
        """Raise Rejected for a request the real API would refuse."""
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            given = headers.get("authorization", "").removeprefix("Bearer ")
            raise Rejected(
                self.error_response(
                    401,
                    "invalid_request_error",
                    f"Incorrect API key provided: {given or '(none)'}.",
                    code="invalid_api_key",
                ),
                "wrong API key",
            )
        self._refuse_if(
            not isinstance(body.get("model"), str) or not body["model"],
            "you must provide a model parameter",
            "model",
        )
        messages = body.get("messages")
        self._refuse_if(
            not isinstance(messages, list) or not messages,
            "'messages' must contain at least one message",
            "messages",
        )
        assert isinstance(messages, list)
        self._check_messages(messages)
        self._check_tools(body.get("tools"))
        self._refuse_if(
            "stream_options" in body and body.get("stream") is not True,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )

    def _check_messages(self, messages: list[Any]) -> None:
        pending: list[str] = []  # calls of the last assistant message not yet answered
        answerable: set[str] = set()
        for i, message in enumerate(messages):
            where = f"messages.[{i}]"
            self._refuse_if(not isinstance(message, dict), f"{where} must be an object", where)
            role = message.get("role")
            self._refuse_if(
                role not in ROLES,
                f"Invalid value: {role!r}. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                f"{where}.role",
                code="invalid_value",
            )
            if role != "tool" and pending:
                self._refuse(
                    "An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(pending)}",
                    f"{where}.role",
                )
            if role == "tool":
                call_id = message.get("tool_call_id")
                self._refuse_if(
                    not isinstance(call_id, str) or call_id not in answerable,
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"{where}.role",
                )
                self._refuse_if(
                    not isinstance(message.get("content"), str | list),
                    f"Missing required parameter: '{where}.content'.",
                    f"{where}.content",
                )
                answerable.discard(call_id)
                pending.remove(call_id)
            elif role == "assistant":
                pending = self._assistant_calls(message, where)
                answerable = set(pending)
            else:
                answerable = set()
                self._refuse_if(
                    not isinstance(message.get("content"), str | list),
                    f"Missing required parameter: '{where}.content'.",
                    f"{where}.content",
                )
        if pending:
            self._refuse(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}",
                "messages",
            )

    def _assistant_calls(self, message: dict[str, Any], where: str) -> list[str]:
        calls = message.get("tool_calls")
        content = message.get("content")
        if calls is None or calls == []:
            self._refuse_if(
                not isinstance(content, str | list),
                f"Invalid value for '{where}.content': expected a string, got null.",
                f"{where}.content",
            )
            return []
        self._refuse_if(not isinstance(calls, list), "tool_calls must be a list", where)
        ids: list[str] = []
        for j, call in enumerate(calls):
            at = f"{where}.tool_calls.[{j}]"
            function = call.get("function") if isinstance(call, dict) else None
            self._refuse_if(
                not isinstance(call, dict)
                or not isinstance(call.get("id"), str)
                or call.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str),
                f"Invalid '{at}': each tool call needs an id, type 'function', and a "
                "function with a name and string arguments.",
                at,
            )
            assert isinstance(call, dict)
            self._refuse_if(call["id"] in ids, f"Duplicate tool call id {call['id']!r}.", at)
            ids.append(call["id"])
        return ids

    def _check_tools(self, tools: Any) -> None:
        if tools is None:
            return
        self._refuse_if(not isinstance(tools, list), "'tools' must be an array", "tools")
        names: set[str] = set()
        for i, tool in enumerate(tools):
            at = f"tools[{i}]"
            function = tool.get("function") if isinstance(tool, dict) else None
            self._refuse_if(
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(function, dict),
                f"Invalid '{at}': expected a function tool.",
                at,
            )
            assert isinstance(function, dict)
            name = function.get("name")
            self._refuse_if(
                not isinstance(name, str) or not TOOL_NAME.match(name),
                f"Invalid '{at}.function.name': string does not match pattern '^[a-zA-Z0-9_-]+$'.",
                f"{at}.function.name",
                code="invalid_value",
            )
            self._refuse_if(name in names, f"Duplicate tool name {name!r}.", at)
            names.add(str(name))
            parameters = function.get("parameters", {"type": "object"})
            self._refuse_if(
                not isinstance(parameters, dict) or parameters.get("type") != "object",
                f"Invalid schema for function '{name}': schema must be a JSON Schema of "
                "'type: \"object\"'.",
                f"{at}.function.parameters",
                code="invalid_function_parameters",
            )

    def _refuse(self, message: str, param: str, code: str | None = None) -> None:
        raise Rejected(
            self.error_response(400, "invalid_request_error", message, param, code), message
        )

    def _refuse_if(self, broken: bool, message: str, param: str, code: str | None = None) -> None:
        if broken:
            self._refuse(message, param, code)


# --- scripting replies --------------------------------------------------------------------


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
    return sse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "fake-model",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


def usage_chunk(prompt: int, completion: int) -> str:
    """The last chunk when stream_options.include_usage is set: no choices, the usage."""
    return sse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "fake-model",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


def call_start(index: int, call_id: str, name: str) -> dict[str, Any]:
    """The first piece of a tool call: its index, id and name, no arguments yet."""
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }


def call_args(index: int, piece: str) -> dict[str, Any]:
    """A later piece of a tool call: part of its arguments."""
    return {"index": index, "function": {"arguments": piece}}


def text_reply(*pieces: str, usage: tuple[int, int] = (10, 5), then: Then = "end") -> Reply:
    """A streamed text answer in these pieces, finish_reason stop, usage, [DONE]."""
    events = [chunk(role="assistant", content="")]
    events += [chunk(content=piece) for piece in pieces]
    if then == "end":
        events += [chunk(finish="stop"), usage_chunk(*usage), DONE]
    return Reply(events=events, then=then)


def tool_calls_reply(*calls: tuple[str, str, str], text: str = "", split_args: int = 4) -> Reply:
    """A step that asks for these (id, name, arguments JSON) calls, the arguments split
    over chunks of `split_args` characters, finish_reason tool_calls."""
    events = [chunk(role="assistant", content=text or None)]
    for index, (call_id, name, arguments) in enumerate(calls):
        events.append(chunk(tool_calls=[call_start(index, call_id, name)]))
        events += [chunk(tool_calls=[call_args(index, p)]) for p in split(arguments, split_args)]
    events += [chunk(finish="tool_calls"), usage_chunk(20, 10), DONE]
    return Reply(events=events)


def api_error(message: str, kind: str, code: str | None = None) -> str:
    """An error body as the API sends it."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
