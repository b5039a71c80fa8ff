"""ProcessWorkers: CPU-bound work runs off the loop, and a timeout or cancel kills it."""

from __future__ import annotations

import asyncio
import os

import pytest
from tool_test_support import scaled, wait_gone

from agent_service.tools.base import ToolError
from agent_service.tools.workers import ProcessWorkers


def spin_forever(marker: str) -> None:
    """Pure computation that never ends and never yields the GIL to anyone but its own."""
    n = 0
    while True:
        n += 1


def report_pid() -> int:
    return os.getpid()


def refuse(code: str) -> None:
    raise ToolError("refused on purpose", code)


def crash() -> None:
    raise KeyError("oops")


async def test_a_timeout_kills_the_worker_and_the_loop_keeps_ticking() -> None:
    workers = ProcessWorkers(1)
    pid = await workers.run(report_pid)
    assert pid != os.getpid()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(scaled(0.5)):
            await workers.run(spin_forever, "x")
    ticking.cancel()
    assert ticks >= 10  # the loop ran all along: about 50 ticks on an idle machine
    assert await wait_gone(pid), "the busy worker must be killed at the timeout"
    assert await workers.run(report_pid) != pid  # a fresh worker serves the next call
    workers.close()


async def test_errors_come_back_as_tool_errors() -> None:
    workers = ProcessWorkers(1)
    with pytest.raises(ToolError) as caught:
        await workers.run(refuse, "limit_exceeded")
    assert (caught.value.code, caught.value.message) == ("limit_exceeded", "refused on purpose")
    with pytest.raises(ToolError) as caught:
        await workers.run(crash)
    assert caught.value.code == "internal" and "KeyError" in caught.value.message
    assert await workers.run(sum, [1, 2, 3]) == 6  # the worker survived both
    workers.close()
