"""The tool registry and the context a tool runs with.

A tool is an async function `fn(args, ctx) -> str`: it gets its validated
arguments (a dict) and a ToolContext through which it reports progress, streams
output and sees that it was cancelled; it returns the result the model reads.
Cancellation and timeouts arrive as asyncio.CancelledError inside the function:
a tool that owns a subprocess kills it in its `finally`. They can only arrive at
an `await`, so a tool must never block the event loop: blocking I/O goes to
`asyncio.to_thread`, CPU-bound work to a process (tools/workers.py), where it
can be killed.

Registering one of your own::

    registry = ToolRegistry()

    @registry.tool(
        name="add",
        description="Add two numbers.",
        parameters={"type": "object", "properties": {"a": {"type": "number"},
                    "b": {"type": "number"}}, "required": ["a", "b"]},
    )
    async def add(args: dict[str, Any], ctx: ToolContext) -> str:
        return str(args["a"] + args["b"])
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from jsonschema import Draft202012Validator


class ToolContext(Protocol):
    """What a running tool can do besides returning its result."""

    @property
    def call_id(self) -> str:
        """The id of this call."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once the call was asked to stop (the CancelledError follows)."""
        ...

    def progress(self, fraction: float, note: str = "") -> None:
        """Report progress: fraction in [0, 1] and a short note."""
        ...

    def output(self, text: str, stream: str = "stdout") -> None:
        """Stream a piece of output (`stdout`, `stderr`, or `result` for found items)."""
        ...


ToolFunction = Callable[[dict[str, Any], ToolContext], Awaitable[str]]


class ToolError(Exception):
    """A tool's own failure, with a code the failed event carries (see ToolFailed)."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the model and ListTools see of a tool."""

    name: str
    description: str
    parameters: dict[str, Any]
    timeout_s: float = 30.0

    @property
    def parameters_json(self) -> str:
        """The JSON Schema as text."""
        return json.dumps(self.parameters, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Tool:
    """A registered tool: its spec, its function and its argument validator."""

    spec: ToolSpec
    fn: ToolFunction
    validator: Draft202012Validator

    def validation_error(self, args: Any) -> str | None:
        """None when args fit the schema, else a message naming the first problem."""
        errors = sorted(self.validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(arguments)"
        return f"{where}: {first.message}"


class ToolRegistry:
    """Tools by name. Build it once at start-up; read-only afterwards."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, spec: ToolSpec, fn: ToolFunction) -> Tool:
        """Add a tool. Raises ValueError for a duplicate name or an invalid schema."""
        if spec.name in self._tools:
            raise ValueError(f"tool {spec.name!r} is already registered")
        if spec.parameters.get("type") != "object":
            raise ValueError(f"tool {spec.name!r}: parameters must be an object schema")
        Draft202012Validator.check_schema(spec.parameters)
        tool = Tool(spec=spec, fn=fn, validator=Draft202012Validator(spec.parameters))
        self._tools[spec.name] = tool
        return tool

    def tool(
        self,
        *,
        name: str,
        description: str,
        parameters: dict[str, Any],
        timeout_s: float = 30.0,
    ) -> Callable[[ToolFunction], ToolFunction]:
        """Decorator form of register()."""

        def decorate(fn: ToolFunction) -> ToolFunction:
            self.register(ToolSpec(name, description, parameters, timeout_s), fn)
            return fn

        return decorate

    def get(self, name: str) -> Tool | None:
        """The tool of that name, or None."""
        return self._tools.get(name)

    def specs(self) -> list[ToolSpec]:
        """Every tool's spec, by name."""
        return [self._tools[name].spec for name in sorted(self._tools)]

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)
