"""`agent-relay run` with real processes: restarts, stops, ports, the README's demo (issue 14).

Each test starts the real supervisor (`python -m agent_service.cli run`) from the
repository, as `make run` does, with both ports at 0 and its data in tmp_path.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_relay.v1 import agent_pb2_grpc
from agent_service.run_config import load
from agent_service.supervisor import Supervisor, Terminal
from tests.support.chat import joined_session
from tests.support.timing import scaled

REPO = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"agent-relay is running: open (http://\S+)/ .*\ngRPC API on (\S+);")


@dataclass
class SupervisedRun:
    """A running `agent-relay run` and everything it printed."""

    process: subprocess.Popen[str]
    var_dir: Path
    lines: list[str] = field(default_factory=list)
    edge_url: str = ""
    grpc_address: str = ""

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, *, after: int = 0, timeout_s: float = 30) -> re.Match[str]:
        """The first match of pattern in the output from line `after` on (bounded wait)."""
        deadline = time.monotonic() + scaled(timeout_s)
        while time.monotonic() < deadline:
            found = re.search(pattern, "".join(self.lines[after:]))
            if found:
                return found
            if self.process.poll() is not None and not self._pump.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.text()}")

    def children(self) -> dict[str, int]:
        """The supervisor's child processes by module: {"agent_service": pid, ...}."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != self.process.pid:
                continue
            for module in ("agent_service", "ws_edge"):
                if module.encode() in argv:
                    found[module] = int(entry.name)
        return found

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=scaled(40))
        finally:
            self._pump.join(timeout=scaled(5))

    _pump: threading.Thread = field(default_factory=threading.Thread)


def start_run(tmp_path: Path, *args: str, ready: bool = True) -> SupervisedRun:
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        AGENT_RELAY_STORE_URL=f"sqlite:///{tmp_path / 'agent.sqlite3'}",
        AGENT_RELAY_METRICS_LISTEN="",  # no /metrics: a fixed port would clash between tests
        AGENT_RELAY_DEMO_TOKENS_PER_S="0",
    )
    env.pop("AGENT_RELAY_WORKSPACE_DIR", None)
    var_dir = tmp_path / "var"
    command = [sys.executable, "-m", "agent_service.cli", "run", "--var-dir", str(var_dir)]
    if "--service-listen" not in args:
        command += ["--service-listen", "127.0.0.1:0"]
    if "--edge-listen" not in args:
        command += ["--edge-listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*command, "--restart-initial-s", "0.2", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = SupervisedRun(process, var_dir)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.lines.append(line)

    run._pump = threading.Thread(target=pump, daemon=True)
    run._pump.start()
    if ready:
        try:
            banner = run.wait_for(BANNER.pattern, timeout_s=60)
        except AssertionError:
            process.kill()
            raise
        run.edge_url, run.grpc_address = banner.group(1), banner.group(2)
    return run


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[SupervisedRun]:
    run = start_run(tmp_path)
    yield run
    if run.process.poll() is None:
        run.stop()


def grpc_serving(address: str) -> bool:
    async def check() -> bool:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    try:
        return asyncio.run(check())
    except grpc.aio.AioRpcError:
        return False


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def eventually(check, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{check} never held")


def port_refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------------ restarts


def test_kill_9_of_the_agent_service_restarts_it_and_the_system_answers_again(
    supervised: SupervisedRun,
) -> None:
    before = supervised.children()
    mark = len(supervised.lines)
    os.kill(before["agent_service"], signal.SIGKILL)
    supervised.wait_for(r"agent_service exited unexpectedly \(killed by SIGKILL\)", after=mark)
    supervised.wait_for(r"restarting in 0\.2 s", after=mark)
    supervised.wait_for(
        rf"agent_service is back on {re.escape(supervised.grpc_address)}", after=mark
    )
    eventually(lambda: grpc_serving(supervised.grpc_address))
    # the edge kept running and reaches the new service
    eventually(lambda: http_status(supervised.edge_url + "/readyz") == 200)
    after = supervised.children()
    assert after["agent_service"] != before["agent_service"]
    assert after["ws_edge"] == before["ws_edge"]


def test_kill_9_of_the_edge_restarts_it_on_the_same_port(supervised: SupervisedRun) -> None:
    before = supervised.children()
    mark = len(supervised.lines)
    os.kill(before["ws_edge"], signal.SIGKILL)
    supervised.wait_for(r"ws_edge exited unexpectedly \(killed by SIGKILL\)", after=mark)
    supervised.wait_for(rf"ws_edge is back on {re.escape(supervised.edge_url)}", after=mark)
    eventually(lambda: http_status(supervised.edge_url + "/healthz") == 200)
    eventually(lambda: http_status(supervised.edge_url + "/readyz") == 200)
    assert supervised.children()["ws_edge"] != before["ws_edge"]


# --------------------------------------------------------------------- stops


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_the_supervisor_stops_both_and_frees_both_ports(
    supervised: SupervisedRun, signum: int
) -> None:
    children = supervised.children()
    assert set(children) == {"agent_service", "ws_edge"}
    assert supervised.stop(signum) == 0
    assert "ws_edge stopped (exit code 0)" in supervised.text()
    assert "agent_service stopped (exit code 0)" in supervised.text()
    assert not [pid for pid in children.values() if alive(pid)], "orphaned children"
    assert port_refuses(supervised.grpc_address)
    assert port_refuses(supervised.edge_url.removeprefix("http://"))


def test_kill_9_of_the_supervisor_leaves_no_orphan(supervised: SupervisedRun) -> None:
    """The children get SIGTERM from the kernel when the supervisor dies (PR_SET_PDEATHSIG)."""
    children = supervised.children()
    assert set(children) == {"agent_service", "ws_edge"}
    supervised.stop(signal.SIGKILL)
    eventually(lambda: not any(alive(pid) for pid in children.values()))
    eventually(lambda: port_refuses(supervised.grpc_address))
    assert port_refuses(supervised.edge_url.removeprefix("http://"))


def test_a_second_run_names_the_port_in_use_in_one_line(
    supervised: SupervisedRun, tmp_path: Path
) -> None:
    for flag, address in (
        ("--service-listen", supervised.grpc_address),
        ("--edge-listen", supervised.edge_url.removeprefix("http://")),
    ):
        second = start_run(tmp_path / flag.strip("-"), flag, address, ready=False)
        code = second.process.wait(timeout=scaled(30))
        second._pump.join(timeout=scaled(5))
        assert code == 1
        lines = second.text().splitlines()
        port = address.rsplit(":", 1)[1]
        assert len(lines) == 1, second.text()
        assert lines[0].startswith(f"agent-relay run: port {port} is already in use")
        assert not second.children()
    # the first one is untouched
    assert grpc_serving(supervised.grpc_address)


# ------------------------------------------------------------ crash loops


def fake_child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def supervise_fake(tmp_path: Path, code: str, *flags: str) -> tuple[int, str]:
    """The Supervisor in this process, with a fake program as the agent service."""
    settings = load(
        [
            "--var-dir",
            str(tmp_path / "var"),
            "--service-listen",
            "127.0.0.1:0",
            "--edge-listen",
            "127.0.0.1:0",
            *flags,
        ]
    )
    out = io.StringIO()
    supervisor = Supervisor(
        settings, service_argv=lambda listen: fake_child(code), terminal=Terminal(out)
    )
    code_ = await asyncio.wait_for(supervisor.run(), scaled(90))
    return code_, out.getvalue()


async def test_a_crash_loop_backs_off_up_to_the_cap_then_gives_up(tmp_path: Path) -> None:
    crashes_after_listening = (
        "import time; print('agent_service listening on 127.0.0.1:9', flush=True); "
        "time.sleep(0.1); raise SystemExit(3)"
    )
    code, out = await supervise_fake(
        tmp_path,
        crashes_after_listening,
        "--restart-initial-s",
        "0.1",
        "--restart-max-s",
        "0.3",
        "--restart-max-failures",
        "5",
        "--restart-stable-s",
        "60",  # however slow the machine, each of these runs counts as a crash
    )
    assert code == 1
    delays = [
        float(d) for d in re.findall(r"agent_service exited .* restarting in ([\d.]+) s", out)
    ]
    assert delays == [0.1, 0.2, 0.3, 0.3]  # doubling, capped at --restart-max-s
    assert len(re.findall(r"agent_service (?:starting|restarting)$", out, re.M)) == 5
    assert "agent_service keeps crashing (5 times in a row, last: exit code 3); giving up" in out
    log = (tmp_path / "var" / "logs" / "agent_service.log").read_text()
    assert log.count("agent_service listening on") == 5


async def test_a_stop_during_a_restart_delay_ends_the_run_at_once(tmp_path: Path) -> None:
    settings = load(
        [
            "--var-dir",
            str(tmp_path / "var"),
            "--service-listen",
            "127.0.0.1:0",
            "--edge-listen",
            "127.0.0.1:0",
            "--restart-initial-s",
            "600",
            "--restart-max-s",
            "600",
        ]
    )
    out = io.StringIO()
    crashes = "print('agent_service listening on 127.0.0.1:9', flush=True); raise SystemExit(3)"
    supervisor = Supervisor(
        settings, service_argv=lambda listen: fake_child(crashes), terminal=Terminal(out)
    )
    running = asyncio.create_task(supervisor.run())
    for _ in range(int(scaled(60) / 0.05)):  # bounded: about a minute
        if "restarting in 600.0 s" in out.getvalue():
            break
        await asyncio.sleep(0.05)
    assert "restarting in 600.0 s" in out.getvalue()
    supervisor.request_stop("test")
    assert await asyncio.wait_for(running, scaled(30)) == 0
    assert "agent_service stopped (it was waiting to restart)" in out.getvalue()


async def test_a_child_that_never_listens_stops_the_run_with_its_error(tmp_path: Path) -> None:
    fails_at_once = "import sys; print('bad flag: --nope', file=sys.stderr); raise SystemExit(2)"
    code, out = await supervise_fake(tmp_path, fails_at_once)
    assert code == 1
    assert "agent_service did not start (exit code 2)" in out
    assert "bad flag: --nope" in out  # the tail of its log, where its stderr went
    assert "restarting" not in out


# ------------------------------------------------------------- logs and demo


def test_the_terminal_shows_states_and_the_logs_go_to_var_logs(supervised: SupervisedRun) -> None:
    assert not [line for line in supervised.lines if line.lstrip().startswith("{")]
    assert "agent_service listening on" in supervised.text()
    assert f"logs: {supervised.var_dir / 'logs' / 'agent_service.log'}" in supervised.text()
    supervised.stop()
    service_log = (supervised.var_dir / "logs" / "agent_service.log").read_text().splitlines()
    entries = [json.loads(line) for line in service_log if line.startswith("{")]
    assert any(e["logger"] == "agent_service.server" for e in entries)
    assert (supervised.var_dir / "logs" / "ws_edge.log").exists()


def readme_demo_requests() -> dict[str, str]:
    """The README's demo table: what to say -> the tool it calls (first example of a row)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The demo model", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)`[^|]*\| `(\w+)`", section, re.M)
    return {say: tool for say, tool in rows}


def test_the_readme_lists_the_file_tool_examples() -> None:
    requests = readme_demo_requests()
    assert requests.get("read README.md") == "read_file"
    assert requests.get("search for TODO") == "search_files"


async def test_the_readme_demo_examples_work_under_run_as_written(
    supervised: SupervisedRun,
) -> None:
    requests = {
        say: tool
        for say, tool in readme_demo_requests().items()
        if tool in {"calculator", "python", "search_files", "read_file"}
    }
    assert len(requests) == 4, requests
    async with grpc.aio.insecure_channel(supervised.grpc_address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        for number, (say, tool) in enumerate(requests.items()):
            session, chat = await joined_session(stub)
            run_id = (await chat.send(session, f"m{number}", say)).accepted.run_id
            await chat.wait_completed(session, run_id, timeout_s=60)
            outcomes = [
                e.tool_execution
                for e in chat.events[session]
                if e.HasField("tool_execution") and e.tool_execution.tool_name == tool
            ]
            completed = [t for t in outcomes if t.HasField("completed")]
            failed = [t.failed.message for t in outcomes if t.HasField("failed")]
            assert completed and not failed, f"{say!r}: {failed}"
            await chat.close()
            if tool == "read_file":
                assert "# agent-relay" in completed[0].completed.result
            if tool == "search_files":
                assert "TODO" in completed[0].completed.result


def test_run_help_lists_its_flags() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "agent_service.cli", "run", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert shown.returncode == 0
    for flag in ("--service-listen", "--edge-listen", "--restart-max-s", "--workspace-dir"):
        assert flag in shown.stdout


def test_ctrl_c_in_a_terminal_stops_both_in_order(tmp_path: Path) -> None:
    """As a person runs it: in a pseudo-terminal, where Ctrl-C goes to the whole
    foreground process group (the children have their own session)."""
    import pexpect

    env = dict(
        os.environ,
        AGENT_RELAY_STORE_URL=f"sqlite:///{tmp_path / 'agent.sqlite3'}",
        AGENT_RELAY_METRICS_LISTEN="",
    )
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "agent_service.cli",
            "run",
            "--var-dir",
            str(tmp_path / "var"),
            "--service-listen",
            "127.0.0.1:0",
            "--edge-listen",
            "127.0.0.1:0",
        ],
        cwd=str(REPO),
        env=env,
        encoding="utf-8",
        timeout=scaled(60),
    )
    try:
        child.expect(r"open (http://\S+)/ ")
        edge = child.match.group(1).removeprefix("http://")
        child.expect(r"gRPC API on (\S+);")
        service = child.match.group(1)
        child.sendcontrol("c")
        child.expect("stopping \\(SIGINT\\)")
        child.expect("ws_edge stopped \\(exit code 0\\)")
        child.expect("agent_service stopped \\(exit code 0\\)")
        child.expect("agent-relay: stopped")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "exited unexpectedly" not in (child.before or "")
    assert port_refuses(service) and port_refuses(edge)
