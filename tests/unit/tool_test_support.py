"""Helpers for the built-in tool tests: run a call through ToolCallRunner and keep its events."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_relay.v1 import agent_pb2 as pb
from agent_service.config import ServiceSettings
from agent_service.tools.base import ToolRegistry
from agent_service.tools.builtins import build_registry
from agent_service.tools.executor import ToolCallRunner, ToolOutcome

FACTOR = float(os.environ.get("AGENT_RELAY_TEST_TIMEOUT_FACTOR", "1") or "1")
FINAL_KINDS = {"completed", "failed", "cancelled"}


def scaled(seconds: float) -> float:
    """A test timeout, stretched on slow machines."""
    return seconds * FACTOR


def registry_for(workspace: Path, **overrides: Any) -> ToolRegistry:
    """The built-in registry over a workspace folder, with settings overrides."""
    return build_registry(ServiceSettings(workspace_dir=workspace, **overrides))


@dataclass
class Call:
    """One tool call's outcome and every event it emitted, in order."""

    outcome: ToolOutcome
    events: list[pb.ToolExecution] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("update")) for e in self.events]

    @property
    def final(self) -> pb.ToolExecution:
        return self.events[-1]

    def output(self, stream: str | None = None) -> str:
        return "".join(
            e.output.text
            for e in self.events
            if e.WhichOneof("update") == "output" and (stream is None or e.output.stream == stream)
        )

    def assert_shape(self, final_kind: str) -> None:
        """started first, exactly one final event, last, of the expected kind."""
        assert self.kinds[0] == "started", self.kinds
        assert [k for k in self.kinds if k in FINAL_KINDS] == [final_kind], self.kinds
        assert self.kinds[-1] == final_kind, self.kinds


async def run_tool(
    registry: ToolRegistry,
    name: str,
    args: dict[str, Any] | str,
    *,
    on_event: Callable[[pb.ToolExecution, ToolCallRunner], None] | None = None,
    timeout_s: float = 30.0,
) -> Call:
    """Run one call in its own task, as the service does; on_event may cancel it."""
    events: list[pb.ToolExecution] = []
    runner: ToolCallRunner

    def emit(event: pb.ToolExecution) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event, runner)

    arguments = args if isinstance(args, str) else json.dumps(args)
    runner = ToolCallRunner(
        registry, call_id="call-1", tool_name=name, arguments_json=arguments, emit=emit
    )
    task = asyncio.create_task(runner.run())
    done, _ = await asyncio.wait({task}, timeout=scaled(timeout_s))
    if not done:
        task.cancel()
        raise AssertionError(f"the {name} call did not end within {scaled(timeout_s):g} s")
    return Call(task.result(), events)


def cancel_soon(runner: ToolCallRunner) -> None:
    """Cancel from outside the call's task, as the service's Cancel and ExecuteTool do."""
    asyncio.get_running_loop().call_soon(runner.cancel, "requested")


def exists(path: Path) -> bool:
    """True when something is at path."""
    return os.path.lexists(path)


def reaped(pid: int) -> bool:
    """True when the pid is gone entirely: killed and waited for, not even a zombie."""
    return not os.path.exists(f"/proc/{pid}")


def process_gone(pid: int) -> bool:
    """True when no process has this pid, or only a zombie awaiting its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


async def wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Poll until the pid is gone (a process killed by the group kill may take a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout_s)
    while loop.time() < deadline:
        if process_gone(pid):
            return True
        await asyncio.sleep(0.02)
    return process_gone(pid)


def host_processes(marker: str) -> list[int]:
    """Live processes (zombies aside) whose command line holds marker, seen from the host.

    A sandboxed program's own pid means nothing here (it runs in a PID namespace of its
    own), so tests mark its processes instead: by an argument they pass, or by the run's
    folder, which the child's command line names.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and not process_gone(int(entry)):
            found.append(int(entry))
    return found


async def wait_no_processes(marker: str, timeout_s: float = 5.0) -> list[int]:
    """Poll until no live process holds marker; returns those still there at the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout_s)
    while loop.time() < deadline:
        if not host_processes(marker):
            return []
        await asyncio.sleep(0.02)
    return host_processes(marker)
