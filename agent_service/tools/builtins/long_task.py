"""The `long_task` tool: waits a given time in steps, reporting progress at each.

It does no work besides waiting, which makes it the tool to try progress bars
and cancellation with. Steps are paced against the loop's clock from the start,
so the total time does not drift with scheduling delays.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent_service.tools.base import ToolContext, ToolRegistry, ToolSpec

MAX_SECONDS = 600.0
DEFAULT_STEPS = 10
MAX_STEPS = 1_000


async def long_task(args: dict[str, Any], ctx: ToolContext) -> str:
    """Wait args["seconds"] in args["steps"] equal steps; progress after each step."""
    seconds = float(args["seconds"])
    steps = int(args.get("steps", DEFAULT_STEPS))
    loop = asyncio.get_running_loop()
    started = loop.time()
    ctx.progress(0.0, f"step 0 of {steps}")
    for step in range(1, steps + 1):
        await asyncio.sleep(max(0.0, started + seconds * step / steps - loop.time()))
        ctx.progress(step / steps, f"step {step} of {steps}")
    return f"long_task finished {steps} steps in {loop.time() - started:.2f} s"


SPEC = ToolSpec(
    name="long_task",
    description=(
        "A stand-in for slow work: runs for `seconds` (0 to 600), reporting progress after "
        "each of `steps` equal steps (default 10), then returns a summary. It can be cancelled "
        "at any time."
    ),
    parameters={
        "type": "object",
        "properties": {
            "seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_SECONDS,
                "description": "How long to run, in seconds",
            },
            "steps": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_STEPS,
                "default": DEFAULT_STEPS,
                "description": "How many progress steps",
            },
        },
        "required": ["seconds"],
        "additionalProperties": False,
    },
    timeout_s=MAX_SECONDS + 30.0,
)


def register(registry: ToolRegistry) -> None:
    """Add long_task to a registry."""
    registry.register(SPEC, long_task)
