"""The `openai` provider: any OpenAI-compatible Chat Completions endpoint, streamed.

One model step is one POST to `{base_url}/chat/completions` with `stream: true`.
The reply is server-sent events: `data: {chunk}` lines, the last one
`data: [DONE]`. Text deltas are passed on as they arrive; tool calls arrive in
pieces (`choices[0].delta.tool_calls[i]` with an `index`, the id and name in the
first piece, the arguments split over many) and are assembled, then handed on
when the step ends, in index order, before StepFinished.

The decoding is pure (SseDecoder, StepAssembler, error_for_status) and the
provider only feeds it from the HTTP stream. Failures become ModelError:

    HTTP 401, 403           model_unauthorized   not retryable
    HTTP 429                model_rate_limited   retryable, retry_after_ms from
                                                 Retry-After / retry-after-ms
                                                 (an exhausted quota: not retryable)
    HTTP 408, 5xx           model_unavailable    retryable
    other HTTP errors       model_error          not retryable
    cannot connect          model_unavailable    retryable
    stream cut mid-way      model_unavailable    retryable
    no data for too long    timeout              retryable
    error object in stream  model_error, or rate-limited / unavailable by its type

Cancellation: the consumer's cancellation (or `aclose()` of the generator)
closes the HTTP response, and with it the connection, so the server stops
generating.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from agent_service.config import ServiceSettings
from agent_service.providers.base import (
    ChatMessage,
    ModelError,
    ModelEvent,
    StepFinished,
    TextDelta,
    ToolCallRequested,
    Usage,
)
from agent_service.tools.base import ToolSpec

MAX_LINE_BYTES = 4 * 1024 * 1024  # one SSE line; far above any real chunk
MAX_ERROR_TEXT = 300  # characters of an error body quoted in a message
FinishReason = Literal["stop", "tool_calls", "length"]
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "length",
    "content_filter": "stop",
}


# --- the request ------------------------------------------------------------------------


def to_api_messages(conversation: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as Chat Completions `messages`."""
    messages: list[dict[str, Any]] = []
    for message in conversation:
        if message.role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": message.call_id, "content": message.content}
            )
        elif message.role == "assistant" and message.tool_calls:
            messages.append(
                {
                    "role": "assistant",
                    "content": message.content or None,
                    "tool_calls": [
                        {
                            "id": call.call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments_json},
                        }
                        for call in message.tool_calls
                    ],
                }
            )
        else:
            messages.append({"role": message.role, "content": message.content})
    return messages


def to_api_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as the Chat Completions `tools` array."""
    return [
        {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": spec.parameters,
            },
        }
        for spec in tools
    ]


def build_request(
    model: str, conversation: Sequence[ChatMessage], tools: Sequence[ToolSpec]
) -> dict[str, Any]:
    """The JSON body of one streamed step."""
    body: dict[str, Any] = {
        "model": model,
        "messages": to_api_messages(conversation),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        body["tools"] = to_api_tools(tools)
    return body


# --- the response -----------------------------------------------------------------------


@dataclass
class SseDecoder:
    """Splits a server-sent event stream into the data of each event. Does no I/O.

    feed() takes bytes as they arrive and returns the `data` of every event
    completed by them (several `data:` lines of one event are joined by "\\n");
    comments and other fields are skipped. end() returns a last event that had
    no blank line after it.
    """

    _buffer: bytes = b""
    _data: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[str]:
        """Events completed by this chunk, in order."""
        self._buffer += chunk
        events: list[str] = []
        while (newline := self._buffer.find(b"\n")) != -1:
            line = self._buffer[:newline].rstrip(b"\r")
            self._buffer = self._buffer[newline + 1 :]
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        if len(self._buffer) > MAX_LINE_BYTES:
            raise ModelError(
                "model_error", f"a line of the model's stream passed {MAX_LINE_BYTES} bytes"
            )
        return events

    def end(self) -> list[str]:
        """The last event when the stream ended without a blank line after it."""
        events = self.feed(b"\n") if self._buffer else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


@dataclass
class _PendingCall:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StepAssembler:
    """Turns the chunks of one streamed step into model events. Does no I/O.

    feed() takes one decoded chunk and returns the events to pass on now (text);
    finish() returns the assembled tool calls and StepFinished. `finished` is
    set once a chunk carried a finish_reason.
    """

    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    _calls: dict[int, _PendingCall] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """True once the model said why it stopped."""
        return self.finish_reason is not None

    def feed(self, chunk: Mapping[str, Any]) -> list[ModelEvent]:
        """The events one chunk yields now. Raises ModelError for an error chunk."""
        if chunk.get("error"):
            raise error_from_body(chunk["error"], where="in the stream")
        if isinstance(chunk.get("usage"), Mapping):
            self.usage = Usage(
                input_tokens=int(chunk["usage"].get("prompt_tokens") or 0),
                output_tokens=int(chunk["usage"].get("completion_tokens") or 0),
            )
        events: list[ModelEvent] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 is never asked for
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events.append(TextDelta(str(delta["content"])))
            for piece in delta.get("tool_calls") or []:
                self._take_call_piece(piece)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
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
        events.append(StepFinished(reason=reason, usage=self.usage))
        return events

    def _take_call_piece(self, piece: Mapping[str, Any]) -> None:
        function = piece.get("function") or {}
        index = piece.get("index")
        if not isinstance(index, int):  # servers that omit it send each call whole
            last = self._calls.get(len(self._calls) - 1)
            starts = (
                last is None or bool(piece.get("id")) or bool(function.get("name") and last.name)
            )
            index = len(self._calls) if starts else len(self._calls) - 1
        call = self._calls.setdefault(index, _PendingCall())
        if piece.get("id"):
            call.call_id = str(piece["id"])
        if function.get("name"):
            call.name += str(function["name"])
        if function.get("arguments"):
            call.arguments.append(str(function["arguments"]))


# --- errors -----------------------------------------------------------------------------


def parse_retry_after_ms(headers: Mapping[str, str], now_s: float) -> int:
    """How long a 429 asks to wait, in ms: `retry-after-ms`, else `Retry-After`
    (seconds or an HTTP date); 0 when neither says."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0, round(float(value)))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return 0
    try:
        return max(0, round(float(value) * 1000))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0
    return max(0, round((when.timestamp() - now_s) * 1000))


def error_for_status(
    status: int, headers: Mapping[str, str], body: str, *, now_s: float
) -> ModelError:
    """The ModelError for an HTTP error reply."""
    detail = _error_detail(body)
    said = f" ({detail})" if detail else ""
    if status in (401, 403):
        return ModelError(
            "model_unauthorized",
            f"the model endpoint refused the API key (HTTP {status}){said}; check openai_api_key",
        )
    if status == 429:
        out_of_quota = "insufficient_quota" in body
        return ModelError(
            "model_rate_limited",
            f"the model endpoint is rate limiting requests (HTTP 429){said}",
            retryable=not out_of_quota,
            retry_after_ms=parse_retry_after_ms(headers, now_s),
        )
    if status == 408 or status >= 500:
        return ModelError(
            "model_unavailable",
            f"the model endpoint is unavailable (HTTP {status}){said}",
            retryable=True,
        )
    return ModelError(
        "model_error", f"the model endpoint refused the request (HTTP {status}){said}"
    )


def error_from_body(error: Any, *, where: str) -> ModelError:
    """The ModelError for an error object the endpoint sent."""
    text = json.dumps(error)[:MAX_ERROR_TEXT] if not isinstance(error, str) else error
    message = error.get("message", text) if isinstance(error, Mapping) else text
    kind = json.dumps(error).lower()
    if "rate_limit" in kind:
        return ModelError("model_rate_limited", f"rate limited {where}: {message}", retryable=True)
    if "server_error" in kind or "overloaded" in kind:
        return ModelError("model_unavailable", f"model failed {where}: {message}", retryable=True)
    return ModelError("model_error", f"the model reported an error {where}: {message}")


def _error_detail(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:MAX_ERROR_TEXT]
    if isinstance(parsed, Mapping) and isinstance(parsed.get("error"), Mapping):
        return str(parsed["error"].get("message", ""))[:MAX_ERROR_TEXT]
    return body.strip()[:MAX_ERROR_TEXT]


# --- the provider -----------------------------------------------------------------------


class OpenAIProvider:
    """Streams steps from an OpenAI-compatible Chat Completions endpoint.

    One aiohttp session (a connection pool) serves every call; it is opened on
    first use, inside the running loop, and closed by aclose().
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._model = model
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(
        cls, settings: ServiceSettings, env: Mapping[str, str] | None = None
    ) -> OpenAIProvider:
        """The provider the settings describe; the key falls back to OPENAI_API_KEY."""
        env = os.environ if env is None else env
        return cls(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key or env.get("OPENAI_API_KEY", ""),
            model=settings.openai_model,
        )

    @property
    def name(self) -> str:
        """Always `openai`."""
        return "openai"

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(
        self, conversation: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        """Stream one model step (see the module docstring for its events and errors)."""
        body = build_request(self._model, conversation, tools)
        try:
            async with self._http().post(
                self._url, json=body, headers=self._headers(), timeout=self._timeout
            ) as response:
                if response.status >= 400:
                    text = await response.text(errors="replace")
                    raise error_for_status(
                        response.status, response.headers, text, now_s=time.time()
                    )
                if response.content_type == "application/json":
                    raise _not_streamed(await response.text(errors="replace"))
                # aclosing: a cancelled consumer closes the inner generator (and the
                # response) now, not whenever the generator is garbage-collected.
                async with contextlib.aclosing(self._events(response)) as events:
                    async for event in events:
                        yield event
        except aiohttp.ServerTimeoutError as exc:
            raise ModelError(
                "timeout",
                f"the model endpoint timed out ({exc}; it may stay silent up to "
                f"{self._read_timeout_s:g} s between chunks)",
                retryable=True,
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise _cut(f"the model's stream was cut mid-way: {exc}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise ModelError(
                "model_unavailable",
                f"cannot reach the model endpoint {self._url}: {exc}",
                retryable=True,
            ) from exc
        except aiohttp.ClientError as exc:
            raise ModelError("model_error", f"HTTP error talking to the model: {exc}") from exc

    async def _events(self, response: aiohttp.ClientResponse) -> AsyncGenerator[ModelEvent, None]:
        decoder, step = SseDecoder(), StepAssembler()
        done = False
        try:
            async for chunk in response.content.iter_any():
                for data in decoder.feed(chunk):
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    for event in step.feed(_parse_chunk(data)):
                        yield event
                if done:
                    break
            if not done:
                for data in decoder.end():
                    if data.strip() == "[DONE]":
                        done = True
                    else:
                        for event in step.feed(_parse_chunk(data)):
                            yield event
            if not (done or step.finished):
                raise _cut("the model's stream ended before the reply was finished (no [DONE])")
            for event in step.finish():
                yield event
        finally:
            if not done:
                response.close()  # closes the connection: the server sees us go and stops

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers


def _parse_chunk(data: str) -> Mapping[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ModelError(
            "model_error", f"the model sent a chunk that is not JSON: {data[:MAX_ERROR_TEXT]!r}"
        ) from None
    if not isinstance(chunk, Mapping):
        raise ModelError("model_error", f"the model sent a chunk that is not an object: {data!r}")
    return chunk


def _not_streamed(body: str) -> ModelError:
    """The error for a JSON reply where a stream was asked for."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping) and parsed.get("error"):
        return error_from_body(parsed["error"], where="instead of a stream")
    return ModelError(
        "model_error",
        "the model endpoint answered with JSON instead of a stream; does it support "
        f"stream: true? ({body.strip()[:MAX_ERROR_TEXT]})",
    )


def _cut(message: str) -> ModelError:
    return ModelError("model_unavailable", message, retryable=True)
