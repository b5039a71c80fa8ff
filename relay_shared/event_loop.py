"""The event loop a server process runs on: uvloop or the standard library's (per process setting).

uvloop is libuv's loop written in C: the loop's own work per callback, timer and
socket write (`Handle._run`, `TimerHandle` heap order, `call_soon`) is a fifth of
both processes' CPU under streaming load with asyncio's loop. grpc.aio, aiohttp,
subprocesses and readers all run on it unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOPS = ("uvloop", "asyncio")


def check_event_loop(name: str) -> None:
    """Raise ValueError for a name that is not in EVENT_LOOPS."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, not {name!r}")


def run(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """asyncio.run(main) on the named loop."""
    check_event_loop(event_loop)
    if event_loop == "asyncio":
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
