"""The `python` tool: run a snippet in a separate, limited Python process.

The snippet runs in `sys.executable -I -u` (isolated: no user site, no PYTHON*
variables, unbuffered output) started in a new session, so it and anything it
spawns form one process group. A small bootstrap inside the child sets the
resource limits on itself before running the snippet: that keeps the limits
out of a `preexec_fn`, which is unsafe in the threaded gRPC server.

Limits and how a breach is reported (ToolError code `limit_exceeded`, the
message naming the limit):
- CPU time: RLIMIT_CPU; the kernel sends SIGXCPU (SIGKILL at the hard limit).
- memory: RLIMIT_AS; the bootstrap turns an uncaught MemoryError into a
  distinct exit status.
- wall time: python_timeout_s, measured here.
- output: stdout + stderr bytes; past python_output_bytes the group is killed.

The working folder is a fresh empty temporary folder, removed afterwards, and
the environment is built from scratch (PATH, LANG, HOME and TMPDIR pointing at
that folder), so no secret of the service's environment reaches the snippet.
Where the kernel has Landlock (python_sandbox, see landlock.py), the child also
confines itself: it reads only the Python installation and system libraries,
writes only its folder, and can neither open TCP connections nor signal
processes outside its sandbox.
Whatever way the call ends (result, limit, timeout, cancellation), the whole
process group gets SIGKILL and the child is reaped before the call returns.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_service.config import ServiceSettings
from agent_service.tools.base import ToolContext, ToolError, ToolRegistry, ToolSpec
from agent_service.tools.builtins import landlock

log = logging.getLogger(__name__)

SNIPPET_NAME = "snippet.py"
MIN_MEMORY_MB = 64  # below this the interpreter itself may not start
EXIT_MEMORY = 86  # the bootstrap's exit status for an uncaught MemoryError
EXIT_NO_SANDBOX = 87  # the bootstrap's exit status when the sandbox cannot be set up
READ_CHUNK_BYTES = 65_536
OUTPUT_COALESCE_S = 0.02  # while output flows, at most one output event per stream per 20 ms
EXIT_POLL_S = 0.02  # how often to look whether the child exited with its pipes still held
PIPE_GRACE_S = 1.0  # after the child's exit, how long its pipes may take to close
DRAIN_GRACE_S = 0.25  # after the final kill, how long draining the pipes may take
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs in the child before the snippet: limits first, then the snippet as __main__.
# argv: snippet path, CPU seconds, address-space bytes, largest file bytes, then the
# sandbox: mode, landlock.py's path, read-only, read-write and device paths (":"-joined).
BOOTSTRAP = f"""
import resource, sys
_path, _cpu, _mem, _fsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
def _confine():
    import os
    landlock = {{"__name__": "_agent_relay_landlock"}}
    with open(sys.argv[6], encoding="utf-8") as f:
        exec(compile(f.read(), sys.argv[6], "exec"), landlock)
    read_only, read_write, devices = (a.split(os.pathsep) if a else [] for a in sys.argv[7:10])
    try:
        landlock["restrict"](read_only, read_write, devices)
    except OSError as exc:
        os.write(2, f"the sandbox could not be set up: {{exc}}\\n".encode())
        os._exit({EXIT_NO_SANDBOX})
    roots = [r.rstrip("/") + "/" for r in read_only]
    sys.path[:] = [p for p in sys.path if any((p + "/").startswith(r) for r in roots)]
if sys.argv[5] == "landlock":
    _confine()
def _main():
    import linecache, os, types
    with open(_path, encoding="utf-8") as f:
        source = f.read()
    os.remove(_path)  # the snippet starts in an empty folder
    linecache.cache["<snippet>"] = (len(source), None, source.splitlines(True), "<snippet>")
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    sys.argv = ["<snippet>"]
    try:
        exec(compile(source, "<snippet>", "exec"), module.__dict__)
    except MemoryError:
        os.write(2, b"MemoryError: the snippet ran out of memory\\n")
        os._exit({EXIT_MEMORY})
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        traceback.print_exception(type(exc), exc, tb)
        sys.exit(1)
_main()
"""


@dataclass(frozen=True, slots=True)
class PythonLimits:
    """The limits of one snippet run."""

    cpu_s: int
    memory_mb: int
    wall_s: float
    output_bytes: int
    file_bytes: int = 16 * 1024 * 1024  # largest file the snippet may write in its folder

    def __post_init__(self) -> None:
        if self.cpu_s < 1:
            raise ValueError("python_cpu_s must be at least 1")
        if self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(f"python_memory_mb must be at least {MIN_MEMORY_MB} (Python's own)")
        if self.wall_s <= 0:
            raise ValueError("python_timeout_s must be more than 0")
        if self.output_bytes < 1:
            raise ValueError("python_output_bytes must be at least 1")

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> PythonLimits:
        """The limits the service is configured with."""
        return cls(
            cpu_s=settings.python_cpu_s,
            memory_mb=settings.python_memory_mb,
            wall_s=settings.python_timeout_s,
            output_bytes=settings.python_output_bytes,
        )


SYSTEM_READ_ONLY = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
    "/etc/ld.so.cache", "/etc/localtime", "/etc/ssl", "/etc/ca-certificates", "/etc/passwd",
    "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/host.conf",
    "/etc/gai.conf", "/etc/mime.types", "/etc/os-release",
)  # fmt: skip
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SANDBOX_SETTINGS = ("auto", "landlock", "off")


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How a snippet is confined: Landlock (see landlock.py) or not at all."""

    mode: Literal["landlock", "off"]
    read_only: tuple[str, ...] = ()
    devices: tuple[str, ...] = DEVICES

    @classmethod
    def from_setting(
        cls, setting: str, abi_version: Callable[[], int] = landlock.abi_version
    ) -> Sandbox:
        """The sandbox python_sandbox asks for. Raises ValueError when it cannot be had."""
        if setting not in SANDBOX_SETTINGS:
            raise ValueError(f"python_sandbox must be one of {', '.join(SANDBOX_SETTINGS)}")
        if setting == "off":
            return cls("off")
        if abi_version() < 1:
            if setting == "landlock":
                raise ValueError("python_sandbox=landlock, but this kernel has no Landlock")
            log.warning("python tool: this kernel has no Landlock; snippets run unconfined")
            return cls("off")
        return cls("landlock", read_only=python_read_only())

    @property
    def confined(self) -> bool:
        """True when snippets run confined."""
        return self.mode == "landlock"

    def argv(self, workdir: str) -> list[str]:
        """The bootstrap's sandbox arguments for one run in workdir."""
        return [
            self.mode,
            landlock.__file__,
            os.pathsep.join(self.read_only),
            workdir,
            os.pathsep.join(self.devices),
        ]


def python_read_only() -> tuple[str, ...]:
    """What a confined snippet may read: the system's programs and libraries and the
    Python installation (with a virtual environment's packages, not the project)."""
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    paths = [*SYSTEM_READ_ONLY, *sorted(prefixes)]
    return tuple(dict.fromkeys(p for p in paths if os.pathsep not in p))


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


def minimal_env(home: str) -> dict[str, str]:
    """The child's whole environment: nothing is inherited from the service."""
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home, "TMPDIR": home}


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
    """Runs snippets under fixed limits. One instance serves every call."""

    def __init__(
        self, limits: PythonLimits, sandbox: Sandbox, *, python: str = sys.executable
    ) -> None:
        self.limits = limits
        self.sandbox = sandbox
        self.python = python

    async def run(self, code: str, ctx: ToolContext) -> str:
        """Run one snippet to its end; output streams through ctx. Raises ToolError."""
        workdir = _prepare_workdir(code)
        proc: asyncio.subprocess.Process | None = None
        try:
            proc = await self._spawn(workdir)
            return await self._supervise(proc, ctx)
        finally:
            if proc is not None:
                await _kill_group_and_reap(proc)
            shutil.rmtree(workdir, ignore_errors=True)

    async def _spawn(self, workdir: str) -> asyncio.subprocess.Process:
        limits = self.limits
        return await asyncio.create_subprocess_exec(
            self.python,
            "-I",
            "-u",
            "-c",
            BOOTSTRAP,
            SNIPPET_NAME,  # relative to its folder, which is the working folder
            str(limits.cpu_s),
            str(limits.memory_mb * 1024 * 1024),
            str(limits.file_bytes),
            *self.sandbox.argv(workdir),
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


def _prepare_workdir(code: str) -> str:
    """A new folder holding only the snippet (the child deletes it before running it)."""
    workdir = tempfile.mkdtemp(prefix="agent-relay-python-")
    snippet = os.path.join(workdir, SNIPPET_NAME)
    with open(snippet, "w", encoding="utf-8") as f:
        f.write(code)
    return workdir


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


def spec(limits: PythonLimits, sandbox: Sandbox) -> ToolSpec:
    """The python tool's spec; its timeout is a backstop behind the wall-time limit."""
    confined = (
        " It has no network access and sees no files but its own folder, the Python "
        "installation and the system libraries."
        if sandbox.confined
        else ""
    )
    return ToolSpec(
        name="python",
        description=(
            "Run a Python 3 program in a fresh, separate process and return what it printed "
            "(stdout and stderr) and its exit status. Use print() to show results. Each call "
            "starts from scratch in an empty temporary folder, with the standard library and "
            f"no environment variables.{confined} Limits: {limits.cpu_s} s of CPU, "
            f"{limits.memory_mb} MiB of memory, {limits.wall_s:g} s of wall time, "
            f"{limits.output_bytes} bytes of output."
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
    runner = PythonRunner(
        PythonLimits.from_settings(settings), Sandbox.from_setting(settings.python_sandbox)
    )

    async def python(args: dict[str, Any], ctx: ToolContext) -> str:
        return await runner.run(args["code"], ctx)

    registry.register(spec(runner.limits, runner.sandbox), python)
    return runner
