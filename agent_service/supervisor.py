"""`agent-relay run`: start the agent service and the edge, keep them up, stop both.

The terminal shows what changes: each child starting, listening (with its
address), exiting and why, its restart delay, stopping; and the URLs once both
listen. What the children write (their JSON log lines and stdout) goes to
LOG_DIR/<child>.log instead, so the terminal stays readable.

The rules:

- Before anything starts, each fixed port is checked: one that is in use is a
  one-line error naming it, and the exit code is 1. So is a data folder (token
  secret, logs) that the demo's file tools could read.
- The agent service starts first; the edge starts once the service listens. A
  port 0 is resolved by the first start and kept for the restarts, so that the
  edge's upstream address stays right.
- A child that exits on its own is started again after a delay that doubles from
  `restart_initial_s` to at most `restart_max_s`; one that had stayed up
  `restart_stable_s` starts again at the initial delay (see `RestartPolicy`, a
  pure object). After `restart_max_failures` crashes in a row, or when a child
  exits before it ever listened (a bad flag, a port taken meanwhile), everything
  stops and the exit code is 1.
- SIGTERM, SIGHUP and SIGINT (Ctrl-C) stop both: the edge, then the service, each
  with SIGTERM and, past `stop_timeout_s`, SIGKILL; a second signal kills at
  once. The children run in their own session, so a Ctrl-C in the terminal
  reaches only the supervisor, which stops them in that order; on Linux each
  gets SIGTERM too if the supervisor itself dies (PR_SET_PDEATHSIG), so none is
  left orphaned holding a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from agent_service.config import load as load_service
from agent_service.run_config import RunSettings, load
from agent_service.tools.builtins import service_data

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
READY_MARK = " listening on "  # both children print `NAME listening on ADDRESS` first
LOG_TAIL_LINES = 8  # shown when a child fails before it ever listened
STDOUT_CHUNK_BYTES = 65_536


# --------------------------------------------------------------------------- pure


@dataclass(frozen=True)
class RestartPolicy:
    """When to start a crashed child again. Pure: fed an exit, returns a decision."""

    initial_s: float
    max_s: float
    stable_s: float
    max_failures: int

    @classmethod
    def from_settings(cls, settings: RunSettings) -> RestartPolicy:
        return cls(
            settings.restart_initial_s,
            settings.restart_max_s,
            settings.restart_stable_s,
            settings.restart_max_failures,
        )

    def after_exit(self, failures: int, uptime_s: float) -> tuple[int, float | None]:
        """Given the crashes in a row before this one and how long this run lasted:
        the crashes in a row now, and the delay before the restart (None: give up)."""
        failures = 1 if uptime_s >= self.stable_s else failures + 1
        if failures >= self.max_failures:
            return failures, None
        return failures, min(self.initial_s * 2 ** (failures - 1), self.max_s)


def describe_exit(returncode: int) -> str:
    """`exit code 3` or `killed by SIGKILL`."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (also `[::1]:port`) into its host and port."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def address_of(ready_line: str) -> str:
    """The host:port at the end of a `NAME listening on [SCHEME://]HOST:PORT` line."""
    address = ready_line.rsplit(READY_MARK, 1)[1].strip()
    return address.split("://", 1)[-1].rstrip("/")


# ------------------------------------------------------------------------- effects


def port_problem(listen: str, role: str) -> str | None:
    """None when `listen` can be bound now (or is port 0), else a one-line reason."""
    host, port = split_listen(listen)
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot listen on {listen} ({role}): {exc.strerror}"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # as the servers do: a port left in TIME_WAIT by a stopped run is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} is already in use ({role}, {listen}): stop what holds it "
                        f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port"
                    )
                return f"cannot listen on {listen} ({role}): {exc.strerror}"
    return None


def exposed_data_problem(settings: RunSettings, env: Mapping[str, str]) -> str | None:
    """None unless the file tools could read var_dir (the token secret, the logs):
    the workspace holds it and the service excludes only the store's own folder."""
    workspace = settings.workspace_dir.resolve()
    var_dir = settings.var_dir.resolve()
    if var_dir == workspace:
        return _exposed(settings)
    if not var_dir.is_relative_to(workspace):
        return None
    if any(part.startswith(".") for part in var_dir.relative_to(workspace).parts):
        return None  # hidden: the file tools never read it
    service = replace(load_service([], env), workspace_dir=settings.workspace_dir)
    if any(var_dir.is_relative_to(Path(p).resolve()) for p in service_data(service)):
        return None
    return _exposed(settings)


def _exposed(settings: RunSettings) -> str:
    return (
        f"{settings.var_dir} (the token secret, the logs) lies inside the workspace "
        f"{settings.workspace_dir} and the store is elsewhere, so the file tools could read "
        "it: keep the store in it (the default) or choose another --workspace-dir or --var-dir"
    )


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec function that asks Linux to SIGTERM the child when we die."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return hook


def token_secret(var_dir: Path) -> str:
    """The edge's token secret, kept in var_dir so tokens survive a restart."""
    secret_file = var_dir / "jwt-secret"
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    return secret_file.read_text().strip()


class Terminal:
    """State lines for the person at the terminal: `HH:MM:SS agent-relay: ...`."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out if out is not None else sys.stdout

    def say(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for line in text.splitlines() or [""]:
            print(f"{stamp} agent-relay: {line}", file=self._out, flush=True)

    def plain(self, text: str) -> None:
        print(text, file=self._out, flush=True)


@dataclass(frozen=True)
class ChildSpec:
    """One supervised program: its name, where it listens, how to start it."""

    name: str
    listen: str
    argv: Callable[[str], list[str]]  # the command line, given the address to listen on


class Child:
    """Runs one ChildSpec until told to stop: starts it, restarts it when it exits."""

    def __init__(
        self,
        spec: ChildSpec,
        settings: RunSettings,
        env: dict[str, str],
        terminal: Terminal,
        on_give_up: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.listen = spec.listen  # pinned to the real port after the first start
        self.address: str | None = None  # host:port
        self.announced: str | None = None  # as the child printed it (http://host:port)
        self.ready = asyncio.Event()  # set at each start once it listens
        self.log_path = settings.logs / f"{spec.name}.log"
        self._settings = settings
        self._policy = RestartPolicy.from_settings(settings)
        self._env = env
        self._terminal = terminal
        self._on_give_up = on_give_up
        self._stop = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._preexec = _die_with_parent_hook()

    async def supervise(self) -> None:
        """Start, wait, restart with backoff; return once stopped (see `stop`) or
        given up. A stop ends the running process: SIGTERM, SIGKILL past
        stop_timeout_s."""
        failures, starts = 0, 0
        while not self._stop.is_set():
            starts += 1
            started_at = time.monotonic()
            returncode, listened = await self._run_once(restart=starts > 1)
            how = describe_exit(returncode)
            if self._stop.is_set():
                self._terminal.say(f"{self.spec.name} stopped ({how})")
                return
            uptime_s = time.monotonic() - started_at
            if not listened and starts == 1:
                self._give_up(f"{self.spec.name} did not start ({how}):\n{self._log_tail()}")
                return
            failures, delay_s = self._policy.after_exit(failures, uptime_s)
            if delay_s is None:
                self._give_up(
                    f"{self.spec.name} keeps crashing ({failures} times in a row, last: {how}); "
                    f"giving up. Its log: {self.log_path}"
                )
                return
            self._terminal.say(
                f"{self.spec.name} exited unexpectedly ({how}) after {uptime_s:.1f} s; "
                f"restarting in {delay_s:.1f} s (crash {failures} in a row, log: {self.log_path})"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay_s)
        if starts:
            self._terminal.say(f"{self.spec.name} stopped (it was waiting to restart)")

    def stop(self) -> None:
        """Ask `supervise` to end the process and return (await its task)."""
        self._stop.set()

    def kill(self) -> None:
        """SIGKILL its process group now (it leads its own session)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    async def _run_once(self, *, restart: bool) -> tuple[int, bool]:
        """One start of the program: (its exit code, whether it ever listened)."""
        self.ready.clear()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._terminal.say(f"{self.spec.name} {'restarting' if restart else 'starting'}")
            self._process = process = await asyncio.create_subprocess_exec(
                *self.spec.argv(self.listen),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=self._env,
                start_new_session=True,
                preexec_fn=self._preexec,
            )
            pump = asyncio.create_task(self._pump(process, log, restart=restart))
            listened = await self._first_of(self.ready.wait(), self._settings.ready_timeout_s)
            if not listened and process.returncode is None and not self._stop.is_set():
                self._terminal.say(
                    f"{self.spec.name} did not listen within "
                    f"{self._settings.ready_timeout_s:.0f} s: killed"
                )
                self.kill()
            await self._first_of(process.wait(), None)
            if process.returncode is None:  # asked to stop
                await self._terminate(process)
            returncode = await process.wait()
            await pump
        return returncode, listened

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        timeout_s = self._settings.stop_timeout_s
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            self._terminal.say(f"{self.spec.name} did not stop within {timeout_s:.0f} s: killed")
            self.kill()

    async def _first_of(self, awaitable: Awaitable[object], timeout_s: float | None) -> bool:
        """Wait for awaitable, a stop, the process's exit or the timeout, whichever
        comes first; True if it was the awaitable."""
        process = self._process
        assert process is not None
        wanted = asyncio.ensure_future(awaitable)
        others = {asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(process.wait())}
        try:
            await asyncio.wait(
                {wanted, *others}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiting in (wanted, *others):
                waiting.cancel()
        return wanted.done() and not wanted.cancelled()

    async def _pump(
        self, process: asyncio.subprocess.Process, log: IO[bytes], *, restart: bool
    ) -> None:
        """Copy the child's stdout into its log; at its first ready line, say so and
        mark it ready."""
        stdout = process.stdout
        assert stdout is not None
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:  # a line past the reader's limit: copy what is buffered
                raw = await stdout.read(STDOUT_CHUNK_BYTES)
            if not raw:
                return
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace")
            if not self.ready.is_set() and READY_MARK in line:
                self.announced = line.rsplit(READY_MARK, 1)[1].strip()
                self.address = address_of(line)
                if split_listen(self.listen)[1] == 0:
                    self.listen = self.address  # a restart listens where this one did
                self._terminal.say(
                    f"{self.spec.name} {'is back' if restart else 'listening'} on {self.announced}"
                )
                self.ready.set()

    def _give_up(self, reason: str) -> None:
        self._stop.set()
        self._on_give_up(reason)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(f"  {line}" for line in lines[-LOG_TAIL_LINES:])


class Supervisor:
    """The agent service and the edge, in order, until a signal or a give-up."""

    def __init__(
        self,
        settings: RunSettings,
        edge_args: Sequence[str] = (),
        *,
        service_argv: Callable[[str], list[str]] | None = None,
        terminal: Terminal | None = None,
    ) -> None:
        self._settings = settings
        self._edge_args = list(edge_args)
        self._terminal = terminal or Terminal()
        self._service_argv = service_argv or self._default_service_argv
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._signals = 0
        self._children: list[Child] = []

    async def run(self) -> int:
        """0 after a stop by signal; 1 when a port is taken or a child gave up."""
        settings = self._settings
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        problem = self._preflight(env)
        if problem is not None:
            print(f"agent-relay run: {problem}", file=sys.stderr, flush=True)
            return 1
        if "AGENT_RELAY_JWT_SECRET" not in env:
            env["AGENT_RELAY_JWT_SECRET"] = token_secret(settings.var_dir)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        service = self._child(
            ChildSpec(
                "agent_service",
                settings.service_listen,
                self._service_argv,
            ),
            env,
        )
        children = self._children
        children.append(service)
        tasks = [self._supervise(service)]
        try:
            if await self._until_ready(service, tasks[0]):
                upstream = service.listen
                edge = self._child(
                    ChildSpec(
                        "ws_edge",
                        settings.edge_listen,
                        lambda listen: self._edge_argv(listen, upstream),
                    ),
                    env,
                )
                children.append(edge)
                tasks.append(self._supervise(edge))
                if await self._until_ready(edge, tasks[1]):
                    self._banner(service, edge)
            await self._stopping.wait()
        finally:
            for child, task in reversed(list(zip(children, tasks, strict=True))):
                child.stop()  # the edge first: it drains its sockets while the service is up
                await asyncio.gather(task, return_exceptions=True)
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self._failure is not None:
            self._terminal.say(self._failure)
            return 1
        self._terminal.say("stopped")
        return 0

    def _preflight(self, env: Mapping[str, str]) -> str | None:
        """Why the run cannot start (a port in use, data in reach), before any start."""
        settings = self._settings
        return (
            port_problem(settings.service_listen, "the agent service's gRPC API")
            or port_problem(settings.edge_listen, "the edge: web UI and WebSocket")
            or exposed_data_problem(settings, env)
        )

    def _supervise(self, child: Child) -> asyncio.Task[None]:
        task = asyncio.create_task(child.supervise())

        def ended(done: asyncio.Task[None]) -> None:
            # a bug in supervision must stop the run, not leave it waiting forever
            if not done.cancelled() and done.exception() is not None:
                self._give_up(f"supervising {child.spec.name} failed: {done.exception()!r}")

        task.add_done_callback(ended)
        return task

    def _child(self, spec: ChildSpec, env: dict[str, str]) -> Child:
        return Child(spec, self._settings, env, self._terminal, self._give_up)

    async def _until_ready(self, child: Child, task: asyncio.Task[None]) -> bool:
        """Wait until the child listens; False when stopping or it gave up first."""
        waits = {asyncio.ensure_future(child.ready.wait()), task}
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({*waits, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        return child.ready.is_set() and not self._stopping.is_set()

    def _banner(self, service: Child, edge: Child) -> None:
        url = (edge.announced or "").rstrip("/")
        self._terminal.plain(
            f"\nagent-relay is running: open {url}/ "
            "(Ctrl-C stops it)\n"
            f"gRPC API on {service.address}; try: grpcurl -plaintext {service.address} list\n"
            f"logs: {service.log_path} and {edge.log_path}\n"
        )

    def request_stop(self, reason: str) -> None:
        """Stop both children, in order, as a signal does; `run` then returns 0."""
        if not self._stopping.is_set():
            self._terminal.say(f"stopping ({reason})")
        self._stopping.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self.request_stop(signal.Signals(signum).name)
        else:  # a second Ctrl-C: no more waiting
            self._terminal.say("stopping now: killing the children")
            for child in self._children:
                child.kill()

    def _give_up(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self._stopping.set()

    def _default_service_argv(self, listen: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agent_service",
            "--listen",
            listen,
            "--workspace-dir",
            str(self._settings.workspace_dir),
        ]

    def _edge_argv(self, listen: str, upstream: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ws_edge",
            "--listen",
            listen,
            "--upstream",
            upstream,
            *self._edge_args,
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """`agent-relay run [FLAGS] [-- EDGE FLAGS]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    edge_args: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, edge_args = args[:cut], args[cut + 1 :]
    settings = load(args)
    return asyncio.run(Supervisor(settings, edge_args).run())


__all__ = ["Child", "ChildSpec", "RestartPolicy", "Supervisor", "main", "port_problem"]
