"""A local Anthropic Messages API that enforces the API's rules.

FakeAnthropic serves `POST /v1/messages` on 127.0.0.1 port 0 (see fake_http).
Before answering it checks the request as the real API does and answers a
violation with HTTP 400 and the API's error JSON
(`{"type": "error", "error": {"type": "invalid_request_error", "message"}}`):

- the `anthropic-version` header is sent; with `api_key` set, the key comes as
  `x-api-key` or `Authorization: Bearer` (else 401, authentication_error);
- `model` is a non-empty string; `max_tokens` a positive integer (required);
- `messages` is non-empty, the first turn is `user`, and turns alternate user and
  assistant (the system prompt is the top-level `system`, never a turn);
- content is a non-empty string or a non-empty list of blocks; text blocks are not
  empty; `tool_use` blocks only in assistant turns, with an id, a name and an
  object input; `tool_result` blocks only in user turns;
- each `tool_use` of an assistant turn has a `tool_result` in the next turn, and
  each `tool_result` answers a `tool_use` of the turn before it, with tool results
  first in their turn;
- `tools` have valid, unique names and an object `input_schema`.

Replies are scripted with the builders below: the named events the API streams
(message_start, content_block_start/delta/stop with text_delta or
input_json_delta, message_delta with the stop reason and usage, message_stop).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from tests.support.fake_http import FakeModelServer, Rejected, Reply, Then, split, sse

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class FakeAnthropic(FakeModelServer):
    """The Messages API, scripted; `url` is the origin, as the SDK's base_url is."""

    route = "/v1/messages"
    keepalive = sse({"type": "ping"}, "ping").encode()

    def __init__(self, *, api_key: str = "") -> None:
        super().__init__()
        self.api_key = api_key

    def error_response(self, status: int, kind: str, message: str) -> web.Response:
        """The API's error reply."""
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": "req_fake",
        }
        return web.json_response(body, status=status)

    def check(self, headers: dict[str, str], body: dict[str, Any]) -> None:
        """Raise Rejected for a request the real API would refuse."""
        keys = (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))
        if self.api_key and self.api_key not in keys:
            raise Rejected(
                self.error_response(401, "authentication_error", "invalid x-api-key"),
                "wrong API key",
            )
        self._refuse_if("anthropic-version" not in headers, "anthropic-version: header is required")
        self._refuse_if(
            not isinstance(body.get("model"), str) or not body["model"], "model: Field required"
        )
        max_tokens = body.get("max_tokens")
        self._refuse_if(
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool),
            "max_tokens: Field required",
        )
        assert isinstance(max_tokens, int)
        self._refuse_if(max_tokens < 1, "max_tokens: Input should be greater than or equal to 1")
        system = body.get("system")
        self._refuse_if(
            system is not None and not isinstance(system, str | list),
            "system: Input should be a valid string or list of text blocks",
        )
        messages = body.get("messages")
        self._refuse_if(
            not isinstance(messages, list) or not messages,
            "messages: at least one message is required",
        )
        assert isinstance(messages, list)
        self._check_messages(messages)
        self._check_tools(body.get("tools"))

    def _check_messages(self, messages: list[Any]) -> None:
        previous_uses: list[str] = []  # tool_use ids of the assistant turn just before
        for i, message in enumerate(messages):
            where = f"messages.{i}"
            self._refuse_if(not isinstance(message, dict), f"{where}: must be an object")
            role = message.get("role")
            self._refuse_if(
                role not in ("user", "assistant"),
                f"{where}.role: Input should be 'user' or 'assistant'"
                + (" (the system prompt is the top-level `system`)" if role == "system" else ""),
            )
            self._refuse_if(
                i == 0 and role != "user", 'messages: first message must use the "user" role'
            )
            if i > 0:
                self._refuse_if(
                    role == messages[i - 1].get("role"),
                    f'messages: roles must alternate between "user" and "assistant", but '
                    f'found multiple "{role}" roles in a row',
                )
            blocks = self._blocks(message.get("content"), where)
            for j, block in enumerate(blocks):
                self._check_block(block, role, f"{where}.content.{j}")
            results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
            if previous_uses:
                missing = [use for use in previous_uses if use not in results]
                self._refuse_if(
                    bool(missing),
                    f"{where}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message.",
                )
            for result in results:
                self._refuse_if(
                    result not in previous_uses,
                    f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {result}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the "
                    "previous message.",
                )
            kinds = [b.get("type") for b in blocks]
            if "tool_result" in kinds:
                first_other = next(
                    (k for k, kind in enumerate(kinds) if kind != "tool_result"), None
                )
                self._refuse_if(
                    first_other is not None and "tool_result" in kinds[first_other:],
                    f"{where}: `tool_result` blocks must come first in the message content",
                )
            previous_uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]

    def _blocks(self, content: Any, where: str) -> list[dict[str, Any]]:
        if isinstance(content, str):
            self._refuse_if(not content, f"{where}: messages must have non-empty content")
            return [{"type": "text", "text": content}]
        self._refuse_if(
            not isinstance(content, list) or not content,
            f"{where}: messages must have non-empty content",
        )
        assert isinstance(content, list)
        for block in content:
            self._refuse_if(not isinstance(block, dict), f"{where}.content: blocks are objects")
        return content

    def _check_block(self, block: dict[str, Any], role: str, where: str) -> None:
        kind = block.get("type")
        if kind == "text":
            self._refuse_if(
                not isinstance(block.get("text"), str) or not block["text"],
                f"{where}: text content blocks must be non-empty",
            )
        elif kind == "tool_use":
            self._refuse_if(
                role != "assistant", f"{where}: tool_use blocks only in assistant turns"
            )
            self._refuse_if(
                not isinstance(block.get("id"), str)
                or not isinstance(block.get("name"), str)
                or not isinstance(block.get("input"), dict),
                f"{where}: tool_use needs an id, a name and an object input",
            )
        elif kind == "tool_result":
            self._refuse_if(role != "user", f"{where}: tool_result blocks only in user turns")
            self._refuse_if(
                not isinstance(block.get("tool_use_id"), str),
                f"{where}.tool_use_id: Field required",
            )
            content = block.get("content", "")
            self._refuse_if(
                not isinstance(content, str | list), f"{where}.content: a string or blocks"
            )
        else:
            self._refuse(f"{where}.type: unknown content block type {kind!r}")

    def _check_tools(self, tools: Any) -> None:
        if tools is None:
            return
        self._refuse_if(not isinstance(tools, list), "tools: Input should be a valid list")
        names: set[str] = set()
        for i, tool in enumerate(tools):
            where = f"tools.{i}"
            self._refuse_if(not isinstance(tool, dict), f"{where}: must be an object")
            name = tool.get("name")
            self._refuse_if(
                not isinstance(name, str) or not TOOL_NAME.match(name),
                f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'",
            )
            self._refuse_if(name in names, f"tools: Tool names must be unique ({name})")
            names.add(str(name))
            schema = tool.get("input_schema")
            self._refuse_if(
                not isinstance(schema, dict) or schema.get("type") != "object",
                f"{where}.input_schema.type: Input should be 'object'",
            )

    def _refuse(self, message: str) -> None:
        raise Rejected(self.error_response(400, "invalid_request_error", message), message)

    def _refuse_if(self, broken: bool, message: str) -> None:
        if broken:
            self._refuse(message)


# --- scripting replies --------------------------------------------------------------------


def message_start(input_tokens: int = 10, message_id: str = "msg_fake") -> str:
    """The first event: the message, empty, with the prompt's usage."""
    return sse(
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": "claude-fake",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            },
        },
        "message_start",
    )


def text_start(index: int) -> str:
    """A text block opens."""
    block = {"type": "text", "text": ""}
    return sse(
        {"type": "content_block_start", "index": index, "content_block": block},
        "content_block_start",
    )


def text_delta(index: int, text: str) -> str:
    """A piece of the text block's text."""
    delta = {"type": "text_delta", "text": text}
    return sse(
        {"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"
    )


def tool_use_start(index: int, tool_id: str, name: str) -> str:
    """A tool_use block opens: its id and name, the input still empty."""
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return sse(
        {"type": "content_block_start", "index": index, "content_block": block},
        "content_block_start",
    )


def input_json_delta(index: int, partial_json: str) -> str:
    """A piece of the tool_use block's input JSON."""
    delta = {"type": "input_json_delta", "partial_json": partial_json}
    return sse(
        {"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"
    )


def block_stop(index: int) -> str:
    """A content block ends."""
    return sse({"type": "content_block_stop", "index": index}, "content_block_stop")


def message_delta(stop_reason: str, output_tokens: int) -> str:
    """The stop reason and the output usage, near the end."""
    return sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        "message_delta",
    )


MESSAGE_STOP = sse({"type": "message_stop"}, "message_stop")


def stream_error(kind: str, message: str) -> str:
    """An `error` event inside a stream, as the API sends when it fails mid-reply."""
    return sse({"type": "error", "error": {"type": kind, "message": message}}, "error")


def text_reply(*pieces: str, usage: tuple[int, int] = (10, 5), then: Then = "end") -> Reply:
    """A streamed text answer in these pieces, stop reason end_turn."""
    events = [message_start(usage[0]), text_start(0)]
    events += [text_delta(0, piece) for piece in pieces]
    if then == "end":
        events += [block_stop(0), message_delta("end_turn", usage[1]), MESSAGE_STOP]
    return Reply(events=events, then=then)


def tool_use_reply(*calls: tuple[str, str, str], text: str = "", split_input: int = 4) -> Reply:
    """A step that asks for these (id, name, input JSON) tool uses, each input split in
    input_json_delta pieces of `split_input` characters, stop reason tool_use."""
    events = [message_start(20)]
    index = 0
    if text:
        events += [text_start(0), text_delta(0, text), block_stop(0)]
        index = 1
    for tool_id, name, arguments in calls:
        events.append(tool_use_start(index, tool_id, name))
        events += [input_json_delta(index, piece) for piece in split(arguments, split_input)]
        events.append(block_stop(index))
        index += 1
    events += [message_delta("tool_use", 15), MESSAGE_STOP]
    return Reply(events=events)


def api_error(kind: str, message: str) -> str:
    """An error body as the API sends it."""
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}})
