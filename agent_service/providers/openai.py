"""The `openai` provider: any OpenAI-compatible Chat Completions endpoint, streamed.

Built on the official `openai` package's AsyncOpenAI client: one model step is
`chat.completions.create(stream=True, stream_options={"include_usage": True})`.
The SDK does the HTTP, the SSE decoding, the retries (`max_retries`, with
backoff and the server's Retry-After) and the timeouts; `base_url` points it at
OpenAI, Azure's OpenAI-compatible endpoint, a proxy, or a compatible server
(vLLM, Ollama, llama.cpp). What the SDK leaves to us, joining the pieces of tool
calls, is the pure StepAssembler (openai_chunks.py).

Failures become ModelError (see http_errors.py for the HTTP statuses):

    HTTP error after the SDK's retries   by status (401/403, 429, 5xx, other)
    cannot connect                       model_unavailable    retryable
    stream cut mid-way                   model_unavailable    retryable
    no data for read_timeout_s           timeout              retryable
    error object in the stream           by its type
    a reply that is not a stream         model_error (or by its error object)

Cancellation: the consumer's cancellation (or `aclose()` of the generator)
closes the SDK's stream, and with it the HTTP response, so the server sees the
connection go and stops generating.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)

from agent_service.config import ServiceSettings
from agent_service.providers.base import ChatMessage, ModelError, ModelEvent
from agent_service.providers.endpoint import endpoint_of
from agent_service.providers.http_errors import (
    MAX_ERROR_TEXT,
    error_for_status,
    error_in_stream,
    stream_cut,
)
from agent_service.providers.openai_chunks import StepAssembler
from agent_service.tools.base import ToolSpec

KEY_SETTING = "openai_api_key (or OPENAI_API_KEY)"
# The SDK refuses to start without a key; local servers need none, so with no key
# the client gets this placeholder and each request omits the Authorization header.
_NO_KEY = "unused"


# --- the request ------------------------------------------------------------------------


def to_api_messages(conversation: Sequence[ChatMessage]) -> list[ChatCompletionMessageParam]:
    """The conversation as Chat Completions `messages`."""
    messages: list[ChatCompletionMessageParam] = []
    for message in conversation:
        if message.role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": message.call_id, "content": message.content}
            )
        elif message.role == "assistant" and message.tool_calls:
            calls: list[ChatCompletionMessageFunctionToolCallParam] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in message.tool_calls
            ]
            messages.append(
                {"role": "assistant", "content": message.content or None, "tool_calls": calls}
            )
        elif message.role == "assistant":
            messages.append({"role": "assistant", "content": message.content})
        elif message.role == "system":
            messages.append({"role": "system", "content": message.content})
        else:
            messages.append({"role": "user", "content": message.content})
    return messages


def to_api_tools(tools: Sequence[ToolSpec]) -> list[ChatCompletionFunctionToolParam]:
    """Tool specs as the Chat Completions `tools` array."""
    return [
        {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": dict(spec.parameters),
            },
        }
        for spec in tools
    ]


# --- the provider -----------------------------------------------------------------------


class OpenAIProvider:
    """Streams steps from an OpenAI-compatible Chat Completions endpoint.

    One AsyncOpenAI client (one connection pool) serves every call; aclose()
    closes it.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self._model = model
        self._base_url = base_url
        self._read_timeout_s = read_timeout_s
        # read: the longest silence between two chunks (or before the first)
        self._client = openai.AsyncOpenAI(
            api_key=api_key or _NO_KEY,
            base_url=base_url,
            max_retries=max_retries,
            timeout=openai.Timeout(read_timeout_s, connect=connect_timeout_s),
        )
        self._extra_headers: dict[str, Any] = {} if api_key else {"Authorization": openai.omit}

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
            connect_timeout_s=settings.model_connect_timeout_s,
            read_timeout_s=settings.model_read_timeout_s,
            max_retries=settings.model_max_retries,
        )

    @property
    def name(self) -> str:
        """Always `openai`."""
        return "openai"

    @property
    def model(self) -> str:
        """The model name asked for."""
        return self._model

    @property
    def server_address(self) -> tuple[str, int]:
        """The endpoint's host and port (for the GenAI spans' server.address / .port)."""
        return endpoint_of(self._base_url)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    async def stream(
        self, conversation: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        """Stream one model step (see the module docstring for its events and errors)."""
        step = StepAssembler()
        started = False
        try:
            stream = await self._client.chat.completions.create(
                model=self._model,
                messages=to_api_messages(conversation),
                stream=True,
                stream_options={"include_usage": True},
                tools=to_api_tools(tools) if tools else openai.omit,
                extra_headers=self._extra_headers,
            )
            started = True
            # `async with`: a cancelled consumer (or aclose()) closes the response now,
            # not whenever the stream is garbage-collected.
            async with stream:
                if stream.response.headers.get("content-type", "").startswith("application/json"):
                    raise _not_streamed((await stream.response.aread()).decode(errors="replace"))
                async for chunk in stream:
                    for event in step.feed(chunk):
                        yield event
        except openai.APIStatusError as exc:
            raise error_for_status(
                exc.status_code,
                exc.response.headers,
                exc.response.text,
                key_setting=KEY_SETTING,
                now_s=time.time(),
            ) from exc
        except openai.APITimeoutError as exc:
            raise ModelError(
                "timeout",
                f"the model endpoint timed out (it may stay silent up to "
                f"{self._read_timeout_s:g} s before and between chunks)",
                retryable=True,
            ) from exc
        except openai.APIConnectionError as exc:
            if started:
                raise stream_cut(f"the model's stream was cut mid-way: {exc.__cause__}") from exc
            raise ModelError(
                "model_unavailable",
                f"cannot reach the model endpoint {self._base_url}: {exc.__cause__ or exc}",
                retryable=True,
            ) from exc
        except openai.APIError as exc:  # an error object inside the stream
            body = exc.body if isinstance(exc.body, Mapping) else {}
            kind = str(body.get("type") or body.get("code") or "")
            raise error_in_stream(kind, exc.message) from exc
        except ValueError as exc:  # a chunk that is not JSON
            raise ModelError(
                "model_error", f"the model sent a chunk that is not JSON: {exc}"
            ) from exc
        if not step.finished:
            raise stream_cut("the model's stream ended before the reply was finished (no [DONE])")
        for event in step.finish():
            yield event


def _not_streamed(body: str) -> ModelError:
    """The error for a JSON reply where a stream was asked for."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping) and isinstance(parsed.get("error"), Mapping):
        error = parsed["error"]
        return error_in_stream(
            str(error.get("type") or error.get("code") or ""),
            f"{error.get('message', '')} (instead of a stream)",
        )
    return ModelError(
        "model_error",
        "the model endpoint answered with JSON instead of a stream; does it support "
        f"stream: true? ({body.strip()[:MAX_ERROR_TEXT]})",
    )
