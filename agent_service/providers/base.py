"""The model provider interface: what the agent loop asks of a model.

A provider turns a conversation and a tool list into a stream of ModelEvent:
TextDelta pieces, ToolCallRequested for each tool the model wants, and one
StepFinished last. Cancellation is asyncio cancellation of the consumer: the
provider's generator is closed (`aclose()`), and a provider that holds a network
stream closes it in its `finally`. Failures are raised as ModelError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agent_service.tools.base import ToolSpec

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    """The model asks for one tool call."""

    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One item of the conversation the model reads."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCallRequested, ...] = ()
    call_id: str = ""  # for role "tool": the call this result answers
    name: str = ""  # for role "tool": the tool's name


@dataclass(slots=True)
class TextDelta:
    """A piece of assistant text. Not frozen, unlike the other events: a model makes one
    per chunk (at full speed, per word), and a frozen dataclass's __init__ (each field
    set through object.__setattr__) costs twice a plain one's."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one model step."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class StepFinished:
    """The model's step ended: `stop` (answer done) or `tool_calls` (wants results)."""

    reason: Literal["stop", "tool_calls", "length"]
    usage: Usage = field(default_factory=Usage)
    response_id: str = ""  # the API's id of this response, when it gives one
    response_model: str = ""  # the model that answered, as the API names it


ModelEvent = TextDelta | ToolCallRequested | StepFinished


class ModelError(Exception):
    """The model could not answer. `code` is a RunError code (see the proto)."""

    def __init__(
        self, code: str, message: str, *, retryable: bool = False, retry_after_ms: int = 0
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms


class ModelProvider(Protocol):
    """A model that streams a reply for a conversation."""

    @property
    def name(self) -> str:
        """A short name for events and spans (for example `demo`)."""
        ...

    def stream(
        self, conversation: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        """Stream one model step. The last event is StepFinished; raises ModelError."""
        ...

    async def aclose(self) -> None:
        """Release connections at shutdown."""
        ...
