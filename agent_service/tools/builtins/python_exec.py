"""The `python` tool: run a snippet in a separate, limited, sandboxed Python process.

The snippet runs in `BASE_PYTHON -I -u`: the interpreter behind sys.executable,
outside any venv, so with the standard library only (isolated: no user site, no PYTHON*
variables, unbuffered output) started in a new session, so it and anything it
spawns form one process group. sandbox_child.py, loaded by a short stub, sets up
the child: the confinement the Sandbox says, the resource limits, then the
snippet. Doing that inside the child keeps it out of a `preexec_fn`, which is
unsafe in the threaded gRPC server.

Limits and how a breach is reported (ToolError code `limit_exceeded`, the
message naming the limit):
- CPU time: RLIMIT_CPU; the kernel sends SIGXCPU (SIGKILL at the hard limit).
- memory: RLIMIT_AS; the child turns an uncaught MemoryError into a distinct
  exit status.
- wall time: python_timeout_s, measured here.
- output: stdout + stderr bytes; past python_output_bytes the group is killed.
- disk: RLIMIT_FSIZE per file; with isolation also a tmpfs of python_disk_mb for
  the folder (a write past it fails with ENOSPC inside the snippet).
- processes: with isolation, RLIMIT_NPROC of python_max_processes for the
  call's own uid (fork fails with EAGAIN inside the snippet).
- calls at once: python_max_concurrent for the whole service; one more fails at
  once with code `busy`.

The working folder is a fresh temporary folder holding only the snippet, removed
afterwards, and the environment is built from scratch (PATH, LANG, HOME and
TMPDIR pointing at that folder), so no secret of the service's environment
reaches the snippet. Isolation (python_isolation: new PID, network and mount
namespaces, an unprivileged uid, a seccomp socket filter; see sandbox_child.py)
and Landlock (python_sandbox, see landlock.py) are used where the kernel allows:
python_sandbox.py decides which, at start-up.
Whatever way the call ends (result, limit, timeout, cancellation), the whole
process group gets SIGKILL and the child is reaped before the call returns;
with isolation, the PID namespace takes every other descendant with it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from typing import Any

from agent_service.config import ServiceSettings
from agent_service.tools.base import ToolContext, ToolError, ToolRegistry, ToolSpec
from agent_service.tools.builtins import landlock, sandbox_child
from agent_service.tools.builtins.python_sandbox import (
    BASE_PYTHON,
    PythonLimits,
    Sandbox,
    child_argv,
    minimal_env,
    prepare_workdir,
    sandbox_from_settings,
)

__all__ = ["OutputCollector", "PythonLimits", "PythonRunner", "Sandbox", "register", "spec"]

log = logging.getLogger(__name__)

EXIT_MEMORY = sandbox_child.EXIT_MEMORY
EXIT_NO_SANDBOX = sandbox_child.EXIT_NO_SANDBOX
READ_CHUNK_BYTES = 65_536
OUTPUT_COALESCE_S = 0.02  # while output flows, at most one output event per stream per 20 ms
EXIT_POLL_S = 0.02  # how often to look whether the child exited with its pipes still held
PIPE_GRACE_S = 1.0  # after the child's exit, how long its pipes may take to close
DRAIN_GRACE_S = 0.25  # after the final kill, how long draining the pipes may take


class CallSlots:
    """Which of max_concurrent call slots are taken. Does no I/O.

    A slot's number names the uid its call runs as, so two calls at once never
    share a process count (RLIMIT_NPROC counts per uid)."""

    def __init__(self, size: int) -> None:
        self._free = list(range(size - 1, -1, -1))
        self.size = size

    def take(self) -> int | None:
        """The lowest free slot, or None when all are taken."""
        return self._free.pop() if self._free else None

    def give_back(self, slot: int) -> None:
        """Free a slot taken before."""
        self._free.append(slot)
        self._free.sort(reverse=True)


@dataclass
class OutputCollector:
    """Keeps a run's output in arrival order, up to a byte budget. Does no I/O.

    feed() decodes a chunk of one stream (UTF-8, split characters carried over)
    and returns the text to stream; once the total passes the budget, `overflowed`
    is set and only the part within the budget is kept and returned.
    """

    limit_bytes: int
    total_bytes: int = 0
    overflowed: bool = False
    pieces: list[str] = field(default_factory=list)
    _decoders: dict[str, codecs.IncrementalDecoder] = field(default_factory=dict)

    def feed(self, stream: str, data: bytes) -> str:
        """Take one chunk; returns the text within the budget (may be empty)."""
        room = self.limit_bytes - self.total_bytes
        if len(data) > room:
            self.overflowed = True
            data = data[: max(room, 0)]
        self.total_bytes += len(data)
        text = self._decoder(stream).decode(data, final=self.overflowed)
        if text:
            self.pieces.append(text)
        return text

    def finish(self, stream: str) -> str:
        """Flush a stream's decoder at end of file."""
        text = self._decoder(stream).decode(b"", final=True)
        if text:
            self.pieces.append(text)
        return text

    def text(self) -> str:
        """Everything kept so far."""
        return "".join(self.pieces)

    def _decoder(self, stream: str) -> codecs.IncrementalDecoder:
        if stream not in self._decoders:
            self._decoders[stream] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return self._decoders[stream]


def describe_exit(returncode: int, limits: PythonLimits) -> ToolError | None:
    """The limit a child's exit status shows it broke, or None for an ordinary exit."""
    if returncode == -signal.SIGXCPU:
        return ToolError(f"CPU time limit of {limits.cpu_s} s exceeded", "limit_exceeded")
    if returncode == EXIT_MEMORY:
        return ToolError(f"memory limit of {limits.memory_mb} MiB exceeded", "limit_exceeded")
    if returncode == EXIT_NO_SANDBOX:
        return ToolError("the python sandbox could not be set up (see python_sandbox)", "error")
    if returncode == -signal.SIGXFSZ:
        return ToolError(f"file size limit of {limits.file_bytes} bytes exceeded", "limit_exceeded")
    return None


def format_result(output: str, returncode: int) -> str:
    """What the model reads: the output, then the exit status."""
    if returncode < 0:
        status = f"killed by signal {signal.Signals(-returncode).name}"
    else:
        status = f"exit status {returncode}"
    body = output if output else "(no output)\n"
    if not body.endswith("\n"):
        body += "\n"
    return f"{body}[{status}]"


class PythonRunner:
    """Runs snippets under fixed limits. One instance serves every call of the service."""

    def __init__(
        self, limits: PythonLimits, sandbox: Sandbox, *, python: str = BASE_PYTHON
    ) -> None:
        self.limits = limits
        self.sandbox = sandbox
        self.python = python
        self.slots = CallSlots(limits.max_concurrent)

    async def run(self, code: str, ctx: ToolContext) -> str:
        """Run one snippet to its end; output streams through ctx. Raises ToolError."""
        slot = self.slots.take()
        if slot is None:
            raise ToolError(
                f"busy: {self.slots.size} python programs are running already, the most "
                "this service runs at once; try again shortly",
                "busy",
            )
        try:
            return await self._run_in_slot(code, ctx, slot)
        finally:
            self.slots.give_back(slot)

    async def _run_in_slot(self, code: str, ctx: ToolContext, slot: int) -> str:
        workdir = prepare_workdir(code)
        proc: asyncio.subprocess.Process | None = None
        try:
            proc = await self._spawn(workdir, slot)
            return await self._supervise(proc, ctx)
        finally:
            if proc is not None:
                await _kill_group_and_reap(proc)
            shutil.rmtree(workdir, ignore_errors=True)

    async def _spawn(self, workdir: str, slot: int) -> asyncio.subprocess.Process:
        config = self.sandbox.config(workdir, self.limits, slot)
        argv = child_argv(self.python, config)
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            env=minimal_env(workdir),
            start_new_session=True,  # its own process group, killed as a whole
        )

    async def _supervise(self, proc: asyncio.subprocess.Process, ctx: ToolContext) -> str:
        collector = OutputCollector(self.limits.output_bytes)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = {
            asyncio.create_task(self._pump(proc, proc.stdout, "stdout", collector, ctx)),
            asyncio.create_task(self._pump(proc, proc.stderr, "stderr", collector, ctx)),
        }
        note = ""
        try:
            async with asyncio.timeout(self.limits.wall_s):
                await _child_exit(proc)
                _kill_group(proc.pid)  # what it left behind would hold the pipes open
                _, pending = await asyncio.wait(pumps, timeout=PIPE_GRACE_S)
                if pending:
                    note = "[stopped reading: a process that left the group holds the output open]"
        except TimeoutError:
            raise ToolError(
                f"wall-time limit of {self.limits.wall_s:g} s exceeded", "limit_exceeded"
            ) from None
        finally:
            await _stop(pumps)
        if collector.overflowed:
            raise ToolError(
                f"output limit of {self.limits.output_bytes} bytes exceeded; the process was "
                f"stopped (the output up to the limit was streamed)",
                "limit_exceeded",
            )
        assert proc.returncode is not None
        breach = describe_exit(proc.returncode, self.limits)
        if breach is not None:
            raise breach
        output = collector.text()
        if note:
            output += ("\n" if output and not output.endswith("\n") else "") + note
        return format_result(output, proc.returncode)

    @staticmethod
    async def _pump(
        proc: asyncio.subprocess.Process,
        pipe: asyncio.StreamReader,
        stream: str,
        collector: OutputCollector,
        ctx: ToolContext,
    ) -> None:
        loop = asyncio.get_running_loop()
        last_output = -OUTPUT_COALESCE_S
        while not collector.overflowed:
            data = await pipe.read(READ_CHUNK_BYTES)
            if not data:
                ctx.output(collector.finish(stream), stream)
                return
            ctx.output(collector.feed(stream, data), stream)
            now = loop.time()
            if now - last_output < OUTPUT_COALESCE_S:
                # Output is flowing: let it gather in the pipe, so a chatty program gives
                # one event per interval rather than one per line (each event has a cost).
                await asyncio.sleep(OUTPUT_COALESCE_S)
            last_output = now
        _kill_group(proc.pid)  # over the output budget: stop producing at once
        # Drain what is left unread: a full reader pauses the pipe, and then asyncio would
        # never see it close, nor report the exit.
        while await pipe.read(READ_CHUNK_BYTES):
            pass


async def _child_exit(proc: asyncio.subprocess.Process) -> None:
    """Return once the child has exited and been reaped (its group may live on)."""
    # wait() also waits for the pipes to close, which processes the child left behind
    # can delay, so the exit itself (returncode, set once reaped) is polled beside it.
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None and not waiter.done():
            await asyncio.wait({waiter}, timeout=EXIT_POLL_S)
    finally:
        waiter.cancel()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _kill_group_and_reap(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's whole group and wait until the child is reaped."""
    _kill_group(proc.pid)
    # Shielded so a second cancellation cannot leave the child unreaped.
    ending = asyncio.ensure_future(_drain_and_reap(proc))
    try:
        await asyncio.shield(ending)
    except asyncio.CancelledError:
        await ending
        raise


async def _drain_and_reap(proc: asyncio.subprocess.Process) -> None:
    await _child_exit(proc)
    # A reader whose buffer is full stops reading its pipe, and asyncio reports the end
    # only once both pipes close: drain what is left, unless an escaped process holds them.
    drains = {asyncio.create_task(_drain(proc.stdout)), asyncio.create_task(_drain(proc.stderr))}
    _, pending = await asyncio.wait(drains, timeout=DRAIN_GRACE_S)
    await _stop(drains)
    if pending:
        log.warning("python tool: pid %d's pipes are held open by an escaped process", proc.pid)
        # Close our ends, or they stay open (and read) as long as that process lives.
        # asyncio has no public close for a Process; its transport's close() is the way.
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()


async def _stop(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to end, retrieving each one's outcome: a gather
    cancelled and left unawaited would log "exception was never retrieved" instead."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("python tool: reading output failed", exc_info=task.exception())


async def _drain(pipe: asyncio.StreamReader | None) -> None:
    while pipe is not None and await pipe.read(READ_CHUNK_BYTES):
        pass


def describe_sandbox(limits: PythonLimits, sandbox: Sandbox) -> str:
    """What the sandbox guarantees, in the words of the tool's description: only what
    this service's sandbox actually does."""
    said = []
    if sandbox.isolated:
        said.append(
            "It has no network access of any kind, and it and every process it starts are "
            f"ended when the call ends; it may run at most {limits.max_processes} processes "
            f"and its folder holds at most {limits.disk_mb} MiB."
        )
    if sandbox.confined:
        tcp = " nor open TCP connections" if landlock.abi_version() >= 4 else ""
        said.append(
            "It sees no files but its own folder, the Python installation and the system "
            f"libraries, and cannot signal processes outside its sandbox{tcp}."
        )
    if not sandbox.isolated:
        but_tcp = " other than by TCP" if sandbox.confined and landlock.abi_version() >= 4 else ""
        said.append(
            f"It is not isolated on this machine: it may reach the network{but_tcp}, and "
            "processes it starts are killed with its process group when the call ends, "
            "unless they leave that group."
        )
    return " ".join(said)


def spec(limits: PythonLimits, sandbox: Sandbox) -> ToolSpec:
    """The python tool's spec; its timeout is a backstop behind the wall-time limit."""
    return ToolSpec(
        name="python",
        description=(
            "Run a Python 3 program in a fresh, separate process and return what it printed "
            "(stdout and stderr) and its exit status. Use print() to show results. Each call "
            "starts from scratch in an empty temporary folder, with the standard library and "
            f"no environment variables. {describe_sandbox(limits, sandbox)} Limits: "
            f"{limits.cpu_s} s of CPU, {limits.memory_mb} MiB of memory, {limits.wall_s:g} s "
            f"of wall time, {limits.output_bytes} bytes of output, {limits.file_bytes} bytes "
            f"per file; at most {limits.max_concurrent} programs run at once in this service "
            "(one more gets a `busy` error)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "code": {"type": "string", "minLength": 1, "description": "The program to run"}
            },
            "required": ["code"],
            "additionalProperties": False,
        },
        timeout_s=limits.wall_s + 10.0,
    )


def register(registry: ToolRegistry, settings: ServiceSettings) -> PythonRunner:
    """Add the python tool to a registry, limited as the settings say."""
    runner = PythonRunner(PythonLimits.from_settings(settings), sandbox_from_settings(settings))

    async def python(args: dict[str, Any], ctx: ToolContext) -> str:
        return await runner.run(args["code"], ctx)

    registry.register(spec(runner.limits, runner.sandbox), python)
    return runner
