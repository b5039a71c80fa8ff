"""The python tool's sandbox, as the service sees it: limits, policy, and the start-up check.

`PythonLimits` are a run's limits; `Sandbox` is how runs are confined (Landlock,
and isolation: namespaces, a uid of its own, seccomp), `sandbox_from_settings()`
builds it from the settings and checks on this kernel that it works (a trivial
program is run once under it); `Sandbox.config()` is what the child
(sandbox_child.py) is told for one run, and `child_argv()` its command line.
The child does the confining itself; nothing here confines anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from agent_service.config import ServiceSettings
from agent_service.tools.builtins import landlock, sandbox_child, seccomp_filter

log = logging.getLogger(__name__)

SNIPPET_NAME = "snippet.py"
MIN_MEMORY_MB = 64  # below this the interpreter itself may not start
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


# The interpreter a snippet runs on: the real file behind sys.executable. A venv's
# `python` is a link inside the venv, and a venv under /tmp is hidden from the
# snippet (its /tmp is the run's own tmpfs), so `sys.executable` there must name
# a file the snippet can still run (to start a subprocess of its own, say).
BASE_PYTHON = os.path.realpath(sys.executable)


def child_argv(python: str, config: dict[str, Any]) -> list[str]:
    """The command line of one run."""
    return [python, "-I", "-u", "-c", STUB, sandbox_child.__file__, json.dumps(config)]


def probe_sandbox(sandbox: Sandbox, python: str = BASE_PYTHON) -> str | None:
    """Run `pass` under the sandbox (blocking; at start-up). None, or why it failed."""
    limits = PythonLimits(cpu_s=5, memory_mb=256, wall_s=PROBE_TIMEOUT_S, output_bytes=4096)
    workdir = prepare_workdir("pass\n")
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


def sandbox_from_settings(settings: ServiceSettings) -> Sandbox:
    """The sandbox the settings ask for, checked on this kernel. Raises ValueError."""
    if settings.python_uid_base + UID_BLOCKS * settings.python_max_concurrent > MAX_UID:
        raise ValueError(
            f"python_uid_base + {UID_BLOCKS} * python_max_concurrent must stay below {MAX_UID}"
        )
    landlocked = Sandbox.from_setting(settings.python_sandbox)
    return landlocked.isolate(settings.python_isolation, settings.python_uid_base)


def minimal_env(home: str) -> dict[str, str]:
    """The child's whole environment: nothing is inherited from the service."""
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home, "TMPDIR": home}


def prepare_workdir(code: str) -> str:
    """A new folder holding only the snippet (the child deletes it before running it)."""
    workdir = tempfile.mkdtemp(prefix="agent-relay-python-")
    snippet = os.path.join(workdir, SNIPPET_NAME)
    with open(snippet, "w", encoding="utf-8") as f:
        f.write(code)
    return workdir
