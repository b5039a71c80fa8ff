"""The python tool, run through ToolCallRunner: output streaming, isolation, every limit,
and that cancellation and limits leave no process behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import sys
import uuid
from pathlib import Path

import pytest
from tool_test_support import (
    cancel_soon,
    exists,
    registry_for,
    run_tool,
    scaled,
    wait_no_processes,
)

from agent_service.tools.builtins import landlock
from agent_service.tools.builtins.python_exec import OutputCollector
from agent_service.tools.builtins.python_sandbox import Sandbox

PIDS = re.compile(r"pid=(\d+)")
CWD = re.compile(r"cwd=(\S+)")
SLEEPER = "import time; time.sleep(60)"  # a child that outlives its parent unless killed


def pids_in(text: str) -> list[int]:
    return [int(p) for p in PIDS.findall(text)]


def workdir_of(text: str) -> str:
    """The run's folder a program printed as `cwd=...`: the child's command line names it."""
    [workdir] = CWD.findall(text)
    return workdir


async def test_output_streams_while_the_program_runs(tmp_path: Path) -> None:
    # The program sleeps after printing; the test cancels it once it has seen both
    # lines as output events: if output were not streamed live, the call would hit
    # its wall limit instead. (The sandbox sees none of the test's files to wait on.)
    code = "import sys, time\nprint('ready')\nprint('to stderr', file=sys.stderr)\ntime.sleep(60)\n"
    seen = {"stdout": "", "stderr": ""}

    def on_event(event, runner) -> None:
        if event.WhichOneof("update") == "output":
            seen[event.output.stream] += event.output.text
            if seen == {"stdout": "ready\n", "stderr": "to stderr\n"}:
                cancel_soon(runner)

    registry = registry_for(tmp_path, python_timeout_s=scaled(20))
    call = await run_tool(registry, "python", {"code": code}, on_event=on_event)

    call.assert_shape("cancelled")
    assert call.output("stdout") == "ready\n"
    assert call.output("stderr") == "to stderr\n"


async def test_nonzero_exit_and_traceback_are_the_result(tmp_path: Path) -> None:
    registry = registry_for(tmp_path)
    call = await run_tool(registry, "python", {"code": "print('a')\nraise SystemExit(3)"})
    call.assert_shape("completed")
    assert call.final.completed.result == "a\n[exit status 3]"

    call = await run_tool(registry, "python", {"code": "def f():\n    1 / 0\nf()"})
    call.assert_shape("completed")
    result = call.final.completed.result
    assert 'File "<snippet>", line 2, in f' in result
    assert "ZeroDivisionError: division by zero" in result
    assert result.endswith("[exit status 1]")


async def test_no_inherited_environment_and_an_empty_folder_removed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_RELAY_TEST_SECRET", "hunter2")
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "print('secret' if 'hunter2' in repr(os.environ) else 'clean')\n"
        "print(os.listdir('.'))\n"
        "print('cwd=' + os.getcwd())\n"
        "print('home', os.environ['HOME'] == os.getcwd())\n"
    )
    call = await run_tool(registry_for(tmp_path), "python", {"code": code})
    call.assert_shape("completed")
    lines = call.output("stdout").splitlines()
    assert lines[0] == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']"
    assert lines[1] == "clean"
    assert lines[2] == "[]"
    workdir = Path(lines[3].removeprefix("cwd="))
    assert lines[4] == "home True"
    assert not exists(workdir)


async def test_cpu_limit(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, python_cpu_s=1, python_timeout_s=scaled(30))
    call = await run_tool(registry, "python", {"code": "while True:\n    pass"})
    call.assert_shape("failed")
    assert call.final.failed.code == "limit_exceeded"
    assert call.final.failed.message == "CPU time limit of 1 s exceeded"


async def test_memory_limit(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, python_memory_mb=128)
    code = "hoard = []\nwhile True:\n    hoard.append(bytearray(4 * 1024 * 1024))"
    call = await run_tool(registry, "python", {"code": code})
    call.assert_shape("failed")
    assert call.final.failed.code == "limit_exceeded"
    assert call.final.failed.message == "memory limit of 128 MiB exceeded"
    assert "MemoryError" in call.output("stderr")


async def test_a_program_may_handle_its_own_memory_error(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, python_memory_mb=128)
    code = "try:\n    bytearray(512 * 1024 * 1024)\nexcept MemoryError:\n    print('too big')"
    call = await run_tool(registry, "python", {"code": code})
    call.assert_shape("completed")
    assert call.final.completed.result == "too big\n[exit status 0]"


async def test_wall_time_limit_kills_the_process(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, python_timeout_s=1.0)
    code = "import os, time\nprint(f'cwd={os.getcwd()}')\ntime.sleep(60)"
    call = await run_tool(registry, "python", {"code": code})
    call.assert_shape("failed")
    assert call.final.failed.code == "limit_exceeded"
    assert call.final.failed.message == "wall-time limit of 1 s exceeded"
    assert await wait_no_processes(workdir_of(call.output())) == [], "the child must be killed"


async def test_output_limit_stops_a_chatty_program(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, python_output_bytes=1_000, python_timeout_s=scaled(30))
    code = "import os\nprint(f'cwd={os.getcwd()}')\nwhile True:\n    print('spam ' * 20)"
    call = await run_tool(registry, "python", {"code": code})
    call.assert_shape("failed")
    assert call.final.failed.code == "limit_exceeded"
    assert call.final.failed.message.startswith("output limit of 1000 bytes exceeded")
    streamed = call.output()
    assert len(streamed.encode()) == 1_000
    assert await wait_no_processes(workdir_of(streamed)) == []


async def test_cancellation_kills_the_process_and_its_children(tmp_path: Path) -> None:
    marker = f"grandchild-{uuid.uuid4()}"
    code = (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}, {marker!r}])\n"
        "print(f'cwd={os.getcwd()}', flush=True)\n"
        "time.sleep(60)\n"
    )

    def on_event(event, runner) -> None:
        if "cwd=" in event.output.text:
            cancel_soon(runner)

    registry = registry_for(tmp_path, python_timeout_s=scaled(30))
    call = await run_tool(registry, "python", {"code": code}, on_event=on_event)

    call.assert_shape("cancelled")
    assert call.final.cancelled.reason == "requested"
    assert call.outcome.status == "cancelled"
    assert await wait_no_processes(workdir_of(call.output())) == [], "the child must be killed"
    assert await wait_no_processes(marker) == [], "its children must be killed"


async def test_processes_left_behind_by_a_finished_program_are_killed(tmp_path: Path) -> None:
    marker = f"left-behind-{uuid.uuid4()}"
    code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}, {marker!r}])\n"
        "print('started')\n"
    )
    call = await run_tool(registry_for(tmp_path), "python", {"code": code})
    call.assert_shape("completed")
    assert await wait_no_processes(marker) == []


def test_output_collector_keeps_split_characters_and_the_budget() -> None:
    collector = OutputCollector(limit_bytes=8)
    snowman = "☃".encode()  # three bytes
    assert collector.feed("stdout", b"ab" + snowman[:1]) == "ab"
    assert collector.feed("stdout", snowman[1:]) == "☃"
    assert not collector.overflowed
    assert collector.feed("stderr", b"xyz!") == "xyz"
    assert collector.overflowed
    assert collector.total_bytes == 8
    assert collector.text() == "ab☃xyz"


async def test_a_chatty_program_gives_few_output_events(tmp_path: Path) -> None:
    code = (
        "import time\n"
        "for i in range(3000):\n"
        "    print(i)\n"
        "    if i % 10 == 0:\n"
        "        time.sleep(0.0002)\n"
    )
    call = await run_tool(registry_for(tmp_path), "python", {"code": code})
    call.assert_shape("completed")
    assert call.output("stdout") == "".join(f"{i}\n" for i in range(3000))
    assert call.kinds.count("output") < 100  # coalesced, not one event per line


async def test_cancelling_a_program_in_full_flow_ends_it(tmp_path: Path) -> None:
    # Output floods the pipes while the call is cancelled: the end must not wait on them.
    code = "import os\nprint(f'cwd={os.getcwd()}')\nwhile True:\n    print('x' * 1000)"

    def on_event(event, runner) -> None:
        if event.WhichOneof("update") == "output" and "cwd=" in event.output.text:
            # Long enough for the unread output to fill the pipes and pause their reading.
            asyncio.get_running_loop().call_later(0.3, runner.cancel, "requested")

    registry = registry_for(tmp_path, python_output_bytes=50_000_000, python_timeout_s=scaled(30))
    call = await run_tool(registry, "python", {"code": code}, on_event=on_event, timeout_s=10)
    call.assert_shape("cancelled")
    assert await wait_no_processes(workdir_of(call.output())) == []


async def test_a_process_that_escapes_the_group_does_not_hold_the_call(tmp_path: Path) -> None:
    # A daemon started in a session of its own keeps the output pipe open after the
    # program exits; the call still ends soon after the exit, saying why output stopped.
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                         start_new_session=True)\n"
        "print(f'pid={child.pid}', flush=True)\n"
    )
    # Without isolation: with it, nothing escapes (see test_sandbox_isolation.py).
    registry = registry_for(tmp_path, python_timeout_s=scaled(30), python_isolation="off")
    call = await run_tool(registry, "python", {"code": code}, timeout_s=10)
    [escaped] = pids_in(call.output())
    os.kill(escaped, signal.SIGKILL)  # the tool cannot reach it: clean up here
    call.assert_shape("completed")
    assert "holds the output open" in call.final.completed.result
    assert call.final.completed.result.endswith("[exit status 0]")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("python_cpu_s", 0),
        ("python_memory_mb", 16),
        ("python_timeout_s", 0),
        ("python_output_bytes", 0),
    ],
)
def test_unworkable_limits_are_refused_at_start_up(
    tmp_path: Path, setting: str, value: float
) -> None:
    with pytest.raises(ValueError, match=setting):
        registry_for(tmp_path, **{setting: value})


# --- confinement (Landlock) --------------------------------------------------------------

ABI = landlock.abi_version()
needs_landlock = pytest.mark.skipif(ABI < 1, reason="this kernel has no Landlock")


def probe_code(secret: Path, port: int) -> str:
    """A program that tries each thing the sandbox refuses and prints what happened."""
    return (
        "import os, socket, subprocess, sys\n"
        "def attempt(name, action):\n"
        "    try:\n"
        "        action()\n"
        "        print(name, 'allowed')\n"
        "    except OSError as exc:\n"
        "        print(name, 'refused', exc.errno)\n"
        f"attempt('read', lambda: open({str(secret)!r}).read())\n"
        "attempt('environ', lambda: open(f'/proc/{os.getppid()}/environ').read())\n"
        f"attempt('connect', lambda: socket.create_connection(('127.0.0.1', {port}), 2).close())\n"
        "attempt('signal', lambda: os.kill(os.getppid(), 0))\n"
        "attempt('write here', lambda: open('mine.txt', 'w').write('x'))\n"
        "import decimal, json, sqlite3, ssl\n"
        "child = [sys.executable, '-c', 'import json; print(json.dumps(1))']\n"
        "print('child says', subprocess.run(child, capture_output=True, text=True).stdout)\n"
    )


async def run_probe(tmp_path: Path, sandbox: str) -> dict[str, str]:
    secret = tmp_path / "secret.txt"
    secret.write_text("the service's secret\n")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # Landlock alone: with isolation the test's files are not even visible.
        registry = registry_for(tmp_path, python_sandbox=sandbox, python_isolation="off")
        call = await run_tool(registry, "python", {"code": probe_code(secret, port)})
    finally:
        server.close()
        await server.wait_closed()
    call.assert_shape("completed")
    lines = call.output("stdout").splitlines()
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines if " " in line}


@needs_landlock
async def test_a_confined_program_cannot_reach_out(tmp_path: Path) -> None:
    seen = await run_probe(tmp_path, "landlock")
    assert seen["read"] == "refused 13"
    assert seen["environ"] == "refused 13"
    if ABI >= 4:
        assert seen["connect"] == "refused 13"
    if ABI >= 6:
        assert seen["signal"] == "refused 1"
    assert seen["write"] == "here allowed"
    assert seen["child"] == "says 1"  # the standard library and subprocesses still work


async def test_unconfined_the_same_program_reaches_out(tmp_path: Path) -> None:
    seen = await run_probe(tmp_path, "off")
    assert seen["read"] == "allowed"
    assert seen["connect"] == "allowed"
    assert seen["signal"] == "allowed"


def test_sandbox_settings() -> None:
    assert Sandbox.from_setting("off").mode == "off"
    assert Sandbox.from_setting("auto", abi_version=lambda: 0).mode == "off"
    assert Sandbox.from_setting("auto", abi_version=lambda: 3).mode == "landlock"
    with pytest.raises(ValueError, match="no Landlock"):
        Sandbox.from_setting("landlock", abi_version=lambda: 0)
    with pytest.raises(ValueError, match="python_sandbox must be one of"):
        Sandbox.from_setting("chroot")
    read_only = Sandbox.from_setting("landlock", abi_version=lambda: 1).read_only
    assert "/usr" in read_only and sys.base_prefix in read_only
    assert not any(Path(p) in Path.cwd().parents or Path(p) == Path.cwd() for p in read_only)


async def test_a_timeout_logs_no_unretrieved_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The output readers are cancelled at the wall limit; an unawaited gather of them
    # used to log "_GatheringFuture exception was never retrieved" as an ERROR.
    registry = registry_for(tmp_path, python_timeout_s=1.0)
    code = "import time\nprint('waiting', flush=True)\ntime.sleep(60)"
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        call = await run_tool(registry, "python", {"code": code})
        await asyncio.sleep(0)
        gc.collect()  # the log is written when the forgotten future is collected
    call.assert_shape("failed")
    assert call.final.failed.code == "limit_exceeded"
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
