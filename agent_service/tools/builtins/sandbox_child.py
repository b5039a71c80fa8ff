"""The python tool's child: confine itself, then run the snippet (standard library only).

python_exec.py starts `python -I -u -c STUB THIS_FILE CONFIG_JSON` (the command
line python_sandbox.py builds); the stub loads this file by path and calls
`main(config)`. With `namespaces` set, the process tree is:

    launcher (the service's direct child; waits, then relays the exit status)
     └─ init  (PID 1 of new PID, network, mount, IPC and UTS namespaces: reaps)
         └─ snippet (PID 2: no privileges, limits, seccomp, Landlock; runs the code)

What that gives, and why each piece:
- No network of any kind: the network namespace has only a loopback interface,
  and it is down, so no address (127.0.0.1 included) is reachable; a seccomp
  filter built by the service (`seccomp_bpf`) refuses every socket family but
  AF_UNIX, and io_uring, which could open sockets past the filter; raw sockets
  also need CAP_NET_RAW, which the snippet no longer has.
- Nothing outlives the call: when the init of a PID namespace ends, the kernel
  kills every process left in it, including those that called setsid(); the
  init ends as soon as the snippet does, and the launcher is killed (and with it
  the init, by PR_SET_PDEATHSIG and by the service's group kill) at a limit or a
  cancel.
- A process-count limit: the snippet runs as an unprivileged uid of its own
  (`uid`, one per concurrent call) with RLIMIT_NPROC = `max_processes`. It keeps
  one capability, CAP_DAC_READ_SEARCH (also ambient, so programs it starts keep
  it), so that a Python installed in a private folder (/root/...) stays
  readable; Landlock, where present, narrows what it can read.
- A bounded folder: a tmpfs of `disk_bytes` is mounted in the mount namespace
  over the folder the service made, and /tmp, /var/tmp and /dev/shm become that
  same tmpfs (a folder below /tmp is made again inside it, at the same path):
  everything the snippet may write shares one size; RLIMIT_FSIZE bounds each file.
A service that is not root gets the same tree in a user namespace (the init and
the snippet are root inside it, nobody outside), and RLIMIT_NPROC then counts the
processes of that namespace.

Without `namespaces` the launcher itself is the snippet process, and only the
limits, the privilege drop (as root), seccomp and Landlock apply.

Set-up failures exit with EXIT_NO_SANDBOX after writing the reason to stderr. No
I/O happens at import; the module must stay free of project imports.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import struct
import sys
from typing import Any

EXIT_MEMORY = 86  # an uncaught MemoryError in the snippet
EXIT_NO_SANDBOX = 87  # the confinement could not be set up

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
CAP_DAC_READ_SEARCH = 2
CAPABILITY_VERSION_3 = 0x20080522
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")  # folders every user may write: same tmpfs


def main(config_json: str) -> None:
    """Set up as the config says and run the snippet; never returns."""
    config: dict[str, Any] = json.loads(config_json)
    source = _take_snippet(config["snippet"])
    if config["landlock"]:  # read now: the mounts below may cover where it lies (under /tmp)
        with open(config["landlock"], encoding="utf-8") as f:
            config["landlock_source"] = f.read()
    if not config["namespaces"]:
        _run_confined(config, source)
    try:
        _enter_namespaces(config)
    except OSError as exc:
        _give_up(f"cannot create the namespaces: {exc}")
    status_r, status_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(status_r)
        _be_init(config, source, status_w)
    os.close(status_w)
    _relay(init, status_r)


def _take_snippet(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    os.remove(path)  # the snippet starts in an empty folder
    return source


def _enter_namespaces(config: dict[str, Any]) -> None:
    libc = _libc()
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != config["service_pid"]:
        os._exit(EXIT_NO_SANDBOX)  # the service died before the line above
    flags = CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        flags |= CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        raise _errno("unshare")
    if uid != 0:  # root in the new user namespace, the service's own uid outside it
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")


def _be_init(config: dict[str, Any], source: str, status_w: int) -> None:
    """PID 1 of the new namespaces: mount, start the snippet, reap, report, end."""
    libc = _libc()
    try:
        _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher killed: end it all
        _mount_private_folder(libc, config)
    except OSError as exc:
        _give_up(f"cannot mount the sandbox's folder: {exc}")
    snippet = os.fork()
    if snippet == 0:
        os.close(status_w)
        _run_confined(config, source)
    status = 0
    while True:  # reap orphans too, until the snippet itself has ended
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        if pid == snippet:
            status = wait_status
            break
    if os.WIFSIGNALED(status):
        report = f"signal {os.WTERMSIG(status)}"
    else:
        report = f"exit {os.waitstatus_to_exitcode(status)}"
    os.write(status_w, report.encode())
    os._exit(0)  # the kernel now kills whatever the snippet left behind


def _relay(init: int, status_r: int) -> None:
    """Wait for the init and end the way the snippet ended."""
    report = b""
    while chunk := os.read(status_r, 64):
        report += chunk
    _, status = os.waitpid(init, 0)
    kind, _, value = report.decode().partition(" ")
    if kind == "exit":
        os._exit(int(value))
    if kind != "signal" and not os.WIFSIGNALED(status):
        os._exit(os.waitstatus_to_exitcode(status))  # the init's own failure
    signum = int(value) if kind == "signal" else os.WTERMSIG(status)
    if signum not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(signum, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


def _mount_private_folder(libc: ctypes.CDLL, config: dict[str, Any]) -> None:
    workdir = config["workdir"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing below leaks out
    owner = config["uid"] if config["uid"] is not None else 0
    options = f"size={config['disk_bytes']},mode=0700,uid={owner},gid={owner}"
    _mount(libc, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, options)
    root = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for shared in SHARED_TEMP:
        if os.path.isdir(shared):
            _mount(libc, f"/proc/self/fd/{root}", shared, None, MS_BIND)
    os.close(root)
    if not os.path.isdir(workdir):  # it was below /tmp, now covered: make it in the tmpfs
        os.makedirs(workdir, mode=0o700)
        os.chown(workdir, owner, owner)
    _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _run_confined(config: dict[str, Any], source: str) -> None:
    """In the snippet's own process: drop privileges, limit, filter, confine, run."""
    try:
        os.chdir(config["workdir"])  # again: a tmpfs may now be mounted there
        if config["uid"] is not None and os.geteuid() == 0:
            _become(config["uid"])
        _limit(config)
        libc = _libc()
        _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
        if config["seccomp_bpf"]:
            _load_seccomp(libc, bytes.fromhex(config["seccomp_bpf"]))
        if config["landlock"]:
            _landlock(config)
    except OSError as exc:
        _give_up(f"the sandbox could not be set up: {exc}")
    _run_snippet(source)


def _become(uid: int) -> None:
    """Run as uid with no capability but CAP_DAC_READ_SEARCH, which its children keep."""
    libc = _libc()
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        if cap != CAP_DAC_READ_SEARCH:
            _prctl(libc, PR_CAPBSET_DROP, cap)
    _prctl(libc, PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    keep = 1 << CAP_DAC_READ_SEARCH
    header = ctypes.create_string_buffer(struct.pack("=Ii", CAPABILITY_VERSION_3, 0), 8)
    data = ctypes.create_string_buffer(struct.pack("=6I", keep, keep, keep, 0, 0, 0), 24)
    if libc.capset(header, data) != 0:
        raise _errno("capset")
    _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH)


def _limit(config: dict[str, Any]) -> None:
    cpu = config["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config["max_processes"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (config["max_processes"],) * 2)


def _load_seccomp(libc: ctypes.CDLL, program: bytes) -> None:
    """Install a classic BPF program (struct sock_filter[], as libseccomp exports it)."""
    filters = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("=HxxxxxxQ", len(program) // 8, ctypes.addressof(filters))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        raise _errno("seccomp")


def _landlock(config: dict[str, Any]) -> None:
    landlock: dict[str, Any] = {"__name__": "_agent_relay_landlock"}
    exec(compile(config["landlock_source"], config["landlock"], "exec"), landlock)
    landlock["restrict"](config["read_only"], [config["workdir"]], config["devices"])
    roots = [r.rstrip("/") + "/" for r in config["read_only"]]
    sys.path[:] = [p for p in sys.path if any((p + "/").startswith(r) for r in roots)]


def _run_snippet(source: str) -> None:
    import linecache
    import types

    linecache.cache["<snippet>"] = (len(source), None, source.splitlines(True), "<snippet>")
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    sys.argv = ["<snippet>"]
    try:
        exec(compile(source, "<snippet>", "exec"), module.__dict__)
    except MemoryError:
        os.write(2, b"MemoryError: the snippet ran out of memory\n")
        os._exit(EXIT_MEMORY)
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback

        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        traceback.print_exception(type(exc), exc, tb)
        sys.exit(1)
    sys.exit(0)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg: int, arg3: int = 0) -> None:
    if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0) != 0:
        raise _errno(f"prctl({option})")


def _mount(
    libc: ctypes.CDLL,
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    options: str | None = None,
) -> None:
    encoded = [None if s is None else s.encode() for s in (source, target, fstype, options)]
    if libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3]) != 0:
        raise _errno(f"mount({target})")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _errno(what: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{what}: {os.strerror(errno)}")


def _give_up(message: str) -> None:
    os.write(2, f"{message}\n".encode())
    os._exit(EXIT_NO_SANDBOX)
