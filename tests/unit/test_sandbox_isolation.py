"""The python tool's isolation (issue 12, items 1 and 2): no network of any kind, no process
outlives its call, a process-count limit, a size-bounded folder, and a service-wide cap on
programs running at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sysconfig
import uuid
from pathlib import Path

import pytest
from tool_test_support import (
    cancel_soon,
    registry_for,
    run_tool,
    scaled,
    wait_no_processes,
)

from agent_service.config import ServiceSettings
from agent_service.tools.builtins import seccomp_filter
from agent_service.tools.builtins.python_sandbox import Sandbox, sandbox_from_settings

ISOLATED = sandbox_from_settings(ServiceSettings(python_sandbox="off")).isolated
needs_isolation = pytest.mark.skipif(
    not ISOLATED, reason="this machine refuses the namespaces python_isolation needs"
)
SLEEPER = "import time; time.sleep(60)"  # a child that outlives its parent unless killed
SECCOMP = seccomp_filter.socket_filter() is not None


def outcomes(text: str) -> dict[str, str]:
    """`name outcome` lines as a dict."""
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


NETWORK_PROBE = """\
import socket
def attempt(name, action):
    try:
        action()
        print(name, 'allowed')
    except OSError as exc:
        print(name, 'refused')
def udp(family, host):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b'hello', (host, {port}))
def tcp():
    socket.create_connection(('127.0.0.1', {tcp_port}), 2).close()
def icmp():
    echo = bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])  # type 8, checksum over the zero rest
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(1)
        s.sendto(echo, ('127.0.0.1', 0))
        s.recv(64)
def ping():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as s:
        s.sendto(bytes([8, 0, 0, 0, 0, 0, 0, 0]), ('127.0.0.1', 0))
def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
def netlink():
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
attempt('udp4', lambda: udp(socket.AF_INET, '127.0.0.1'))
attempt('udp6', lambda: udp(socket.AF_INET6, '::1'))
attempt('tcp', tcp)
attempt('icmp', icmp)
attempt('ping', ping)
attempt('packet', packet)
attempt('netlink', netlink)
def io_uring():  # an io_uring can open sockets without socket(); x86_64 and arm64 number
    import ctypes
    params = ctypes.create_string_buffer(120)
    if ctypes.CDLL(None, use_errno=True).syscall(425, 1, params) < 0:
        raise OSError(ctypes.get_errno(), 'io_uring_setup')
attempt('unix', lambda: [s.close() for s in socket.socketpair()])
attempt('io_uring', io_uring)
"""


@needs_isolation
@pytest.mark.parametrize("landlock", ["auto", "off"])
async def test_no_network_of_any_kind(tmp_path: Path, landlock: str) -> None:
    # Before: a UDP datagram reached a listener on 127.0.0.1 and a raw ICMP socket got
    # an echo reply (Landlock restricts TCP only, and the child had CAP_NET_RAW).
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        code = NETWORK_PROBE.format(
            port=listener.getsockname()[1], tcp_port=server.sockets[0].getsockname()[1]
        )
        registry = registry_for(tmp_path, python_sandbox=landlock)
        call = await run_tool(registry, "python", {"code": code})
        call.assert_shape("completed")
        seen = outcomes(call.output("stdout"))
        with pytest.raises(BlockingIOError):
            listener.recv(64)  # nothing arrived
    finally:
        listener.close()
        server.close()
        await server.wait_closed()
    refused = ["udp4", "udp6", "tcp", "icmp", "ping", "packet", "netlink"]
    if SECCOMP:  # only the filter stops it; without libseccomp the service warns at start-up
        refused.append("io_uring")
    assert {name: seen[name] for name in refused} == dict.fromkeys(refused, "refused")
    assert seen["unix"] == "allowed"  # a socketpair (multiprocessing and the like) works


@needs_isolation
@pytest.mark.parametrize("ending", ["exit", "wall_limit", "cancel"])
async def test_no_descendant_outlives_the_call(tmp_path: Path, ending: str) -> None:
    # Before: children that called os.setsid() left the process group and outlived the
    # call and its wall limit (20 of 20 still running 10 s later).
    marker = f"escapee-{uuid.uuid4()}"
    code = (
        "import os, subprocess, sys, time\n"
        "for _ in range(5):\n"
        f"    subprocess.Popen([sys.executable, '-c', {SLEEPER!r}, {marker!r}],\n"
        "                     start_new_session=True, stdout=subprocess.DEVNULL,\n"
        "                     stderr=subprocess.DEVNULL)\n"
        "if os.fork() == 0:  # and a double fork, the classic daemon\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', {SLEEPER!r}, {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n"
        "print('spawned', flush=True)\n"
        f"{'time.sleep(60)' if ending != 'exit' else ''}\n"
    )

    def on_event(event, runner) -> None:
        if ending == "cancel" and "spawned" in event.output.text:
            cancel_soon(runner)

    registry = registry_for(tmp_path, python_timeout_s=scaled(3) if ending != "cancel" else 30)
    call = await run_tool(registry, "python", {"code": code}, on_event=on_event)
    expected = {"exit": "completed", "wall_limit": "failed", "cancel": "cancelled"}[ending]
    call.assert_shape(expected)
    assert "spawned" in call.output()
    assert await wait_no_processes(marker) == [], "every descendant must be gone"


@needs_isolation
async def test_the_process_count_is_limited(tmp_path: Path) -> None:
    code = (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    forked += 1\n"
        "print('forked', forked)\n"
    )
    registry = registry_for(tmp_path, python_max_processes=8)
    call = await run_tool(registry, "python", {"code": code})
    call.assert_shape("completed")
    seen = outcomes(call.output("stdout"))
    assert seen["refused"] == "11"  # EAGAIN
    assert int(seen["forked"]) < 8


@needs_isolation
@pytest.mark.parametrize(("folder", "landlock"), [(".", "auto"), ("/dev/shm", "off")])
async def test_the_folder_is_size_bounded(tmp_path: Path, folder: str, landlock: str) -> None:
    # Before: one call wrote 160 MiB in 0.2 s. Files of 8 MiB stay under the per-file
    # limit, so only the folder's own size can stop them.
    code = (
        "import os\n"
        "written, chunk = 0, b'x' * (1024 * 1024)\n"
        "try:\n"
        "    for i in range(20):\n"
        f"        with open(os.path.join({folder!r}, f'f{{i}}'), 'wb') as f:\n"
        "            for _ in range(8):\n"
        "                f.write(chunk)\n"
        "                f.flush()\n"
        "                written += len(chunk)\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
        "print('written', written // (1024 * 1024))\n"
    )
    registry = registry_for(tmp_path, python_disk_mb=16, python_sandbox=landlock)
    call = await run_tool(registry, "python", {"code": code})
    call.assert_shape("completed")
    seen = outcomes(call.output("stdout"))
    assert seen["refused"] == "28"  # ENOSPC
    assert int(seen["written"]) <= 16


async def test_programs_beyond_the_service_wide_cap_get_busy(tmp_path: Path) -> None:
    # Before: 30 ran at once for 30 anonymous users.
    registry = registry_for(tmp_path, python_max_concurrent=2, python_timeout_s=scaled(30))
    running = 0
    both_running = asyncio.Event()
    runners = []

    def on_event(event, runner) -> None:
        nonlocal running
        if "running" in event.output.text:
            runners.append(runner)
            running += 1
            if running == 2:
                both_running.set()

    code = "import time\nprint('running', flush=True)\ntime.sleep(60)"
    holders = [
        asyncio.create_task(run_tool(registry, "python", {"code": code}, on_event=on_event))
        for _ in range(2)
    ]
    await asyncio.wait_for(both_running.wait(), scaled(20))
    third = await run_tool(registry, "python", {"code": "print(1)"})
    assert third.kinds == ["started", "failed"]
    assert third.final.failed.code == "busy"
    assert "2 python programs are running already" in third.final.failed.message
    for runner in runners:
        cancel_soon(runner)
    assert [c.outcome.status for c in await asyncio.gather(*holders)] == ["cancelled"] * 2
    fourth = await run_tool(registry, "python", {"code": "print(1)"})
    assert fourth.final.completed.result == "1\n[exit status 0]"  # the slots came back


@needs_isolation
def test_the_description_says_what_the_sandbox_does(tmp_path: Path) -> None:
    isolated = registry_for(tmp_path).get("python")
    assert isolated is not None
    assert "no network access of any kind" in isolated.spec.description
    assert "every process it starts are ended when the call ends" in isolated.spec.description
    landlock_only = registry_for(tmp_path, python_isolation="off").get("python")
    assert landlock_only is not None
    assert "no network" not in landlock_only.spec.description  # Landlock stops TCP only
    assert "it may reach the network" in landlock_only.spec.description


def test_isolation_settings_and_fallback() -> None:
    base = Sandbox("off")
    assert not base.isolate("off", 1000).isolated
    assert base.isolate("auto", 1000, probe=lambda s: None).isolated
    assert not base.isolate("auto", 1000, probe=lambda s: "unshare: EPERM").isolated
    with pytest.raises(ValueError, match="does not work here: unshare: EPERM"):
        base.isolate("required", 1000, probe=lambda s: "unshare: EPERM")
    with pytest.raises(ValueError, match="python_isolation must be one of"):
        base.isolate("chroot", 1000)


SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not SYSTEM_PYTHON.exists(),
    reason="needs root (to become nobody), setpriv and a system Python",
)
def test_a_service_that_is_not_root_gets_isolation_in_a_user_namespace() -> None:
    # The service as uid nobody: no uid to switch to, so the namespaces come inside a user
    # namespace, and RLIMIT_NPROC counts that namespace's processes. A system Python, which
    # nobody can read (the project's may live under /root).
    repo = Path(__file__).resolve().parents[2]
    private = [p for p in (repo, *repo.parents) if not p.stat().st_mode & 0o001]
    if private:  # e.g. a clone under `mktemp -d`, which is mode 0700
        pytest.skip(
            f"uid nobody cannot reach the checkout ({private[0]} is private): "
            "clone into a folder others may enter to run this test"
        )
    paths = [str(repo), str(repo / "gen" / "python"), sysconfig.get_paths()["purelib"]]
    harness = (
        "import asyncio, sys\n"
        f"sys.path[:0] = {paths!r}\n"
        "from agent_service.tools.builtins.python_exec import PythonLimits, PythonRunner, Sandbox\n"
        "class Ctx:\n"
        "    call_id, cancelled = 'c', False\n"
        "    def progress(self, *a): pass\n"
        "    def output(self, *a): pass\n"
        "sandbox = Sandbox.from_setting('off').isolate('required', 0)\n"
        "limits = PythonLimits(cpu_s=5, memory_mb=256, wall_s=30, output_bytes=10_000,\n"
        "                      max_processes=6)\n"
        "print(asyncio.run(PythonRunner(limits, sandbox).run(sys.stdin.read(), Ctx())))\n"
    )
    snippet = (
        "import os, socket, time\n"
        "print('uid', os.getuid())\n"
        "try:\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))\n"
        "    print('udp allowed')\n"
        "except OSError:\n"
        "    print('udp refused')\n"
        "forked = 0\n"
        "try:\n"
        "    for _ in range(50):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "except OSError:\n"
        "    print('fork refused')\n"
        "print('forked', forked)\n"
    )
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(
        [*as_nobody, str(SYSTEM_PYTHON), "-I", "-c", harness],
        input=snippet,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        cwd="/",  # nobody may not enter the test's own folders
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = outcomes(done.stdout)
    assert seen["uid"] == "0"  # root inside its user namespace, nobody outside
    assert seen["udp"] == "refused"
    assert seen["fork"] == "refused"
    assert int(seen["forked"]) < 6


def test_each_call_slot_has_a_uid_of_its_own() -> None:
    sandbox = Sandbox("off", isolated=True, uid_base=2_000_000_000)
    uids = {sandbox.uid(slot, 8) for slot in range(8)}
    assert len(uids) == 8 and min(uids) >= 2_000_000_000
    assert Sandbox("off").uid(0, 8) is None  # not isolated: no uid switch
    with pytest.raises(ValueError, match="python_uid_base"):
        sandbox_from_settings(ServiceSettings(python_uid_base=2**32 - 100))
