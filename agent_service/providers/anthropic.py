"""The `anthropic` provider: the Anthropic Messages API, streamed, with tool use.

Built on the official `anthropic` package's AsyncAnthropic client: one model
step is one `messages.stream(...)` (a POST to `{base_url}/v1/messages` with
`stream: true`). The SDK does the HTTP, the SSE decoding, the retries
(`max_retries`, with backoff and the server's retry-after), the timeouts, and
the assembly of each `tool_use` block from its `input_json_delta` pieces. The
request is built by the pure anthropic_messages.py (system prompt apart,
alternating turns, tool results as `tool_result` blocks, `max_tokens`).

Events: each `text` delta as TextDelta; each finished `tool_use` block
(content_block_stop) as ToolCallRequested; at `message_stop`, StepFinished with
the stop reason and the usage of message_start and message_delta. Failures
become ModelError as for `openai` (see http_errors.py); an `error` event in the
stream (overloaded_error, ...) by its type; a stream that ends without
message_stop is `model_unavailable`.

Cancellation: the consumer's cancellation (or `aclose()` of the generator)
leaves the SDK's stream context, which closes the HTTP response.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence

import anthropic
import httpx2

from agent_service.config import ServiceSettings
from agent_service.providers.anthropic_messages import step_finished, to_request, to_tools
from agent_service.providers.base import (
    ChatMessage,
    ModelError,
    ModelEvent,
    TextDelta,
    ToolCallRequested,
)
from agent_service.providers.endpoint import endpoint_of
from agent_service.providers.http_errors import (
    error_for_status,
    error_in_stream,
    stream_cut,
)
from agent_service.tools.base import ToolSpec

KEY_SETTING = "anthropic_api_key (or ANTHROPIC_API_KEY)"


class AnthropicProvider:
    """Streams steps from the Anthropic Messages API.

    One AsyncAnthropic client (one connection pool) serves every call; aclose()
    closes it. With no key given the SDK finds one itself (ANTHROPIC_API_KEY,
    ANTHROPIC_AUTH_TOKEN, a profile).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        max_tokens: int = 4096,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self._model = model
        self._max_tokens = max_tokens
        self._base_url = base_url
        self._read_timeout_s = read_timeout_s
        self._no_credentials = ""
        try:
            self._client: anthropic.AsyncAnthropic | None = anthropic.AsyncAnthropic(
                api_key=api_key or None,
                base_url=base_url,
                max_retries=max_retries,
                # read: the longest silence between two events (or before the first)
                timeout=anthropic.Timeout(read_timeout_s, connect=connect_timeout_s),
                # the agent records the GenAI span of each model call itself
                open_telemetry=False,
            )
        except anthropic.CredentialsError as exc:
            # a profile named but not found: each run says so (as for a refused key)
            # rather than the service failing to start
            self._client = None
            self._no_credentials = str(exc)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> AnthropicProvider:
        """The provider the settings describe."""
        return cls(
            base_url=settings.anthropic_base_url,
            api_key=settings.anthropic_api_key,
            model=settings.anthropic_model,
            max_tokens=settings.anthropic_max_tokens,
            connect_timeout_s=settings.model_connect_timeout_s,
            read_timeout_s=settings.model_read_timeout_s,
            max_retries=settings.model_max_retries,
        )

    @property
    def name(self) -> str:
        """Always `anthropic`."""
        return "anthropic"

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
        if self._client is not None:
            await self._client.close()

    async def stream(
        self, conversation: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        """Stream one model step (see the module docstring for its events and errors)."""
        if self._client is None:
            raise ModelError(
                "model_unauthorized",
                f"no credentials for the anthropic provider ({self._no_credentials}); "
                f"set {KEY_SETTING}",
            )
        request = to_request(conversation)
        started = False
        called_tools = False
        try:
            async with self._client.messages.stream(
                model=self._model,
                max_tokens=self._max_tokens,
                messages=request.messages,
                system=request.system or anthropic.omit,
                tools=to_tools(tools) if tools else anthropic.omit,
            ) as stream:
                started = True
                async for event in stream:
                    if event.type == "text":
                        yield TextDelta(event.text)
                    elif event.type == "content_block_stop":
                        block = event.content_block
                        if block.type == "tool_use":
                            called_tools = True
                            yield ToolCallRequested(
                                call_id=block.id,
                                name=block.name,
                                arguments_json=json.dumps(block.input),
                            )
                    elif event.type == "message_stop":
                        message = event.message
                        yield step_finished(
                            message.stop_reason,
                            message.usage,
                            called_tools=called_tools,
                            response_id=message.id,
                            model=message.model,
                        )
                        return
        except anthropic.APIStatusError as exc:
            if exc.status_code < 400:  # an `error` event inside a 200 stream
                raise error_in_stream(str(exc.type or ""), exc.api_message or str(exc)) from exc
            raise error_for_status(
                exc.status_code,
                exc.response.headers,
                exc.response.text,
                key_setting=KEY_SETTING,
                now_s=time.time(),
            ) from exc
        except (anthropic.APITimeoutError, httpx2.TimeoutException) as exc:
            raise ModelError(
                "timeout",
                f"the model endpoint timed out (it may stay silent up to "
                f"{self._read_timeout_s:g} s before and between events)",
                retryable=True,
            ) from exc
        except (anthropic.APIConnectionError, httpx2.TransportError) as exc:
            # the SDK wraps errors before the reply starts; once it streams, the
            # HTTP client's own errors come through
            if started:
                raise stream_cut(f"the model's stream was cut mid-way: {exc}") from exc
            raise ModelError(
                "model_unavailable",
                f"cannot reach the model endpoint {self._base_url}: {exc.__cause__ or exc}",
                retryable=True,
            ) from exc
        except TypeError as exc:
            if "authentication" not in str(exc):
                raise
            raise ModelError(
                "model_unauthorized", f"no API key for the anthropic provider: set {KEY_SETTING}"
            ) from exc
        except ValueError as exc:  # an event that is not JSON, or tool input that is not
            raise ModelError("model_error", f"the model sent data that is not JSON: {exc}") from exc
        raise stream_cut("the model's stream ended before the reply was finished (no message_stop)")
