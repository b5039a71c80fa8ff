"""ProcessWorkers: CPU-bound work runs off the loop, and a timeout or cancel kills it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

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


def test_a_script_without_a_main_guard_can_use_the_workers(tmp_path: Path) -> None:
    # multiprocessing's spawn and forkserver re-run the main module in each worker: a
    # script that builds the registry at its top level then started itself again there.
    script = tmp_path / "script.py"
    script.write_text(
        "import asyncio\n"
        "from agent_service.tools.workers import ProcessWorkers\n"
        "print('started', flush=True)\n"
        "print(asyncio.run(ProcessWorkers(1).run(sum, [2, 2])))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        cwd=repo,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "started\n4\n"  # the script ran once
