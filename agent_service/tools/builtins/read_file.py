"""The `read_file` tool: the text of one file under the workspace folder."""

from __future__ import annotations

import asyncio
import codecs
import os
from typing import Any

from agent_service.tools.base import ToolContext, ToolError, ToolRegistry, ToolSpec
from agent_service.tools.builtins.workspace import Workspace, looks_binary

DEFAULT_MAX_BYTES = 100_000
LIMIT_MAX_BYTES = 1_000_000


def read_text(workspace: Workspace, user_path: str, max_bytes: int) -> str:
    """The file's text, cut at max_bytes (on a character boundary). Blocking; raises ToolError."""
    path = workspace.resolve(user_path)
    fd = workspace.open_inside(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(max_bytes)
    if looks_binary(data):
        raise ToolError(f"{workspace.relative(path)!r} is a binary file", "invalid_arguments")
    truncated = size > len(data)
    # A multi-byte character cut by the limit is dropped rather than shown as garbage.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not truncated)
    if truncated:
        text += f"\n[truncated: showed the first {len(data)} of {size} bytes]"
    return text


def spec() -> ToolSpec:
    """The read_file tool's spec."""
    return ToolSpec(
        name="read_file",
        description=(
            "Read a text file from the workspace folder. `path` is relative to the workspace "
            "(as search_files shows it); absolute paths, '..', hidden files (.env, .git/) and the "
            "service's own data are refused. Long files are "
            f"cut at max_bytes (default {DEFAULT_MAX_BYTES})."
        ),
        parameters={
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "minLength": 1,
                    "description": "File path relative to the workspace, e.g. src/app.py",
                },
                "max_bytes": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": LIMIT_MAX_BYTES,
                    "description": f"Most bytes to return (default {DEFAULT_MAX_BYTES})",
                },
            },
            "required": ["path"],
            "additionalProperties": False,
        },
        timeout_s=10.0,
    )


def register(registry: ToolRegistry, workspace: Workspace) -> None:
    """Add read_file over the given workspace to a registry."""

    async def read_file(args: dict[str, Any], ctx: ToolContext) -> str:
        max_bytes = int(args.get("max_bytes", DEFAULT_MAX_BYTES))
        return await asyncio.to_thread(read_text, workspace, args["path"], max_bytes)

    registry.register(spec(), read_file)
