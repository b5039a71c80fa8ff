"""The `python` tool: run a snippet in a separate, limited, sandboxed Python process.

The snippet runs in `sys.executable -I -u` (isolated: no user site, no PYTHON*
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
and Landlock (python_sandbox, see landlock.py) are used where the kernel allows.
Whatever way the call ends (result, limit, timeout, cancellation), the whole
process group gets SIGKILL and the child is reaped before the call returns;
with isolation, the PID namespace takes every other descendant with it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_service.config import ServiceSettings
from agent_service.tools.base import ToolContext, ToolError, ToolRegistry, ToolSpec
from agent_service.tools.builtins import landlock, sandbox_child, seccomp_filter

log = logging.getLogger(__name__)

SNIPPET_NAME = "snippet.py"
MIN_MEMORY_MB = 64  # below this the interpreter itself may not start
EXIT_MEMORY = sandbox_child.EXIT_MEMORY
EXIT_NO_SANDBOX = sandbox_child.EXIT_NO_SANDBOX
READ_CHUNK_BYTES = 65_536
OUTPUT_COALESCE_S = 0.02  # while output flows, at most one output event per stream per 20 ms
EXIT_POLL_S = 0.02  # how often to look whether the child exited with its pipes still held
PIPE_GRACE_S = 1.0  # after the child's exit, how long its pipes may take to close
DRAIN_GRACE_S = 0.25  # after the final kill, how long draining the pipes may take
PROBE_TIMEOUT_S = 20.0  # the start-up check that isolation works
UID_BLOCKS = 65_536  # blocks of python_max_concurrent uids above python_uid_base, one per pid
MAX_UID = 2**32 - 2  # (uid_t)-1 means "unchanged"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# Loads sandbox_child.py by path (the child must not import the project) and hands it
# the run's configuration: argv is the file's path, then the configuration as JSON.
STUB = (
    "import sys\n"
    "_g = {'__name__': '_agent_relay_sandbox'}\n"
    "with open(sys.argv[1], encoding='utf-8') as _f:\n"
    "    exec(compile(_f.read(), sys.argv[1], 'exec'), _g)\n"
    "_g['main'](sys.argv[2])\n"
)


@dataclass(frozen=True, slots=True)
class PythonLimits:
    """The limits of one snippet run."""

    cpu_s: int
    memory_mb: int
    wall_s: float
    output_bytes: int
    file_bytes: int = 16 * 1024 * 1024  # largest file the snippet may write in its folder
    disk_mb: int = 32  # the folder's size, with isolation
    max_processes: int = 32  # processes of the call's uid at once, with isolation
    max_concurrent: int = 8  # calls at once, service-wide

    def __post_init__(self) -> None:
        if self.cpu_s < 1:
            raise ValueError("python_cpu_s must be at least 1")
        if self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(f"python_memory_mb must be at least {MIN_MEMORY_MB} (Python's own)")
        if self.wall_s <= 0:
            raise ValueError("python_timeout_s must be more than 0")
        if self.output_bytes < 1:
            raise ValueError("python_output_bytes must be at least 1")
        if self.disk_mb < 1:
            raise ValueError("python_disk_mb must be at least 1")
        if self.max_processes < 2:
            raise ValueError("python_max_processes must be at least 2 (the snippet and one)")
        if self.max_concurrent < 1:
            raise ValueError("python_max_concurrent must be at least 1")

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> PythonLimits:
        """The limits the service is configured with."""
        return cls(
            cpu_s=settings.python_cpu_s,
            memory_mb=settings.python_memory_mb,
            wall_s=settings.python_timeout_s,
            output_bytes=settings.python_output_bytes,
            disk_mb=settings.python_disk_mb,
            max_processes=settings.python_max_processes,
            max_concurrent=settings.python_max_concurrent,
        )


SYSTEM_READ_ONLY = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
    "/etc/ld.so.cache", "/etc/localtime", "/etc/ssl", "/etc/ca-certificates", "/etc/passwd",
    "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/host.conf",
    "/etc/gai.conf", "/etc/mime.types", "/etc/os-release",
)  # fmt: skip
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SANDBOX_SETTINGS = ("auto", "landlock", "off")
ISOLATION_SETTINGS = ("auto", "required", "off")


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How a snippet is confined: Landlock (see landlock.py) or not, and whether it is
    isolated (namespaces, its own uid, seccomp: see sandbox_child.py)."""

    mode: Literal["landlock", "off"]
    read_only: tuple[str, ...] = ()
    devices: tuple[str, ...] = DEVICES
    isolated: bool = False
    seccomp_bpf: bytes = b""
    uid_base: int | None = None  # root: call slot i runs as uid_base + i

    @classmethod
    def from_setting(
        cls, setting: str, abi_version: Callable[[], int] = landlock.abi_version
    ) -> Sandbox:
        """The Landlock part python_sandbox asks for. Raises ValueError when it cannot be
        had. Not isolated: see isolate()."""
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

    def isolate(
        self,
        setting: str,
        uid_base: int,
        probe: Callable[[Sandbox], str | None] | None = None,
    ) -> Sandbox:
        """This sandbox plus the isolation python_isolation asks for. `probe` runs a
        trivial program so and returns None, or why it failed. Raises ValueError when
        isolation is required and cannot be had; `auto` falls back with a warning."""
        if setting not in ISOLATION_SETTINGS:
            raise ValueError(f"python_isolation must be one of {', '.join(ISOLATION_SETTINGS)}")
        if setting == "off":
            return self
        bpf = seccomp_filter.socket_filter() or b""
        isolated = Sandbox(
            self.mode,
            self.read_only,
            self.devices,
            isolated=True,
            seccomp_bpf=bpf,
            uid_base=uid_base if os.geteuid() == 0 else None,
        )
        problem = (probe or probe_sandbox)(isolated)
        if problem is None:
            return isolated
        if setting == "required":
            raise ValueError(f"python_isolation=required, but it does not work here: {problem}")
        log.warning(
            "python tool: no isolation (%s); snippets have the network, and processes "
            "that leave their group can outlive the call",
            problem,
        )
        return self

    @property
    def confined(self) -> bool:
        """True when snippets run under Landlock."""
        return self.mode == "landlock"

    def uid(self, slot: int, slots: int) -> int | None:
        """The uid call slot `slot` of `slots` runs as, or None (no uid switch).

        Each service process takes a block of uids of its own (by its pid), so that two
        services on one machine do not share a uid, and with it a process count."""
        if not self.isolated or self.uid_base is None:
            return None
        return self.uid_base + (os.getpid() % UID_BLOCKS) * slots + slot

    def config(self, workdir: str, limits: PythonLimits, slot: int) -> dict[str, Any]:
        """sandbox_child.main()'s configuration for one run in workdir."""
        return {
            "snippet": os.path.join(workdir, SNIPPET_NAME),
            "workdir": workdir,
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_mb * 1024 * 1024,
            "file_bytes": limits.file_bytes,
            "disk_bytes": limits.disk_mb * 1024 * 1024,
            "max_processes": limits.max_processes if self.isolated else 0,
            "namespaces": self.isolated,
            "uid": self.uid(slot, limits.max_concurrent),
            "seccomp_bpf": self.seccomp_bpf.hex(),
            "landlock": landlock.__file__ if self.confined else "",
            "read_only": list(self.read_only),
            "devices": list(self.devices),
            "service_pid": os.getpid(),
        }


def python_read_only() -> tuple[str, ...]:
    """What a confined snippet may read: the system's programs and libraries and the
    Python installation (with a virtual environment's packages, not the project)."""
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    paths = [*SYSTEM_READ_ONLY, *sorted(prefixes)]
    return tuple(dict.fromkeys(p for p in paths if os.pathsep not in p))


def child_argv(python: str, config: dict[str, Any]) -> list[str]:
    """The command line of one run."""
    return [python, "-I", "-u", "-c", STUB, sandbox_child.__file__, json.dumps(config)]


def probe_sandbox(sandbox: Sandbox, python: str = sys.executable) -> str | None:
    """Run `pass` under the sandbox (blocking; at start-up). None, or why it failed."""
    limits = PythonLimits(cpu_s=5, memory_mb=256, wall_s=PROBE_TIMEOUT_S, output_bytes=4096)
    workdir = _prepare_workdir("pass\n")
    try:
        done = subprocess.run(
            child_argv(python, sandbox.config(workdir, limits, 0)),
            cwd=workdir,
            env=minimal_env(workdir),
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        return reason[-1] if reason else f"exit status {done.returncode}"
    return None


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
    """Runs snippets under fixed limits. One instance serves every call of the service."""

    def __init__(
        self, limits: PythonLimits, sandbox: Sandbox, *, python: str = sys.executable
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
        workdir = _prepare_workdir(code)
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
        said.append("Processes it starts are killed with its process group when the call ends.")
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


def sandbox_from_settings(settings: ServiceSettings) -> Sandbox:
    """The sandbox the settings ask for, checked on this kernel. Raises ValueError."""
    if settings.python_uid_base + UID_BLOCKS * settings.python_max_concurrent > MAX_UID:
        raise ValueError(
            f"python_uid_base + {UID_BLOCKS} * python_max_concurrent must stay below {MAX_UID}"
        )
    landlocked = Sandbox.from_setting(settings.python_sandbox)
    return landlocked.isolate(settings.python_isolation, settings.python_uid_base)


def register(registry: ToolRegistry, settings: ServiceSettings) -> PythonRunner:
    """Add the python tool to a registry, limited as the settings say."""
    runner = PythonRunner(PythonLimits.from_settings(settings), sandbox_from_settings(settings))

    async def python(args: dict[str, Any], ctx: ToolContext) -> str:
        return await runner.run(args["code"], ctx)

    registry.register(spec(runner.limits, runner.sandbox), python)
    return runner
