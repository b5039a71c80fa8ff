"""`agent-relay cluster` (`make cluster`): agent replicas and edges on one machine.

What it does, in order:

- Redis and PostgreSQL must answer; a loopback one that does not is started
  (agent_service/cluster_backends.py), and the database is created when missing.
- Each fixed port (replicas, their metrics, edges) is checked before anything starts:
  one in use is a one-line error naming it, and the exit code is 1.
- The replicas start (2 by default, on 50051 and 50052), each with its own
  --replica-id and --advertise-address, on the shared --store-url and --log-url;
  once every one listens, the edges start (8080 and 8081), each with every replica in
  --upstream and the same token secret (AGENT_RELAY_JWT_SECRET, kept in VAR_DIR), so
  a token one edge issued works on the other.
- The edge URLs and the gRPC addresses are printed.
- SIGTERM, SIGHUP and SIGINT (Ctrl-C) stop the edges, then the replicas. Each child
  is supervised as under `agent-relay run` (agent_service/supervisor.py): restarted
  with backoff when it crashes, SIGTERM then SIGKILL on stop, its output in
  LOG_DIR/<child>.log. Redis and PostgreSQL keep running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent_service.cluster_backends import ensure_database, ensure_postgres, ensure_redis
from agent_service.cluster_config import ClusterSettings, load
from agent_service.run_config import RunSettings
from agent_service.supervisor import (
    Child,
    ChildSpec,
    Terminal,
    exposed_data_problem,
    port_problem,
    token_secret,
)

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def replica_argv(settings: ClusterSettings, index: int) -> Callable[[str], list[str]]:
    """The command line of replica `index` (0-based), given its listen address."""

    def argv(listen: str) -> list[str]:
        metrics = settings.replica_metrics_listen
        return [
            sys.executable,
            "-m",
            "agent_service",
            "--listen",
            listen,
            "--advertise-address",
            listen,
            "--replica-id",
            f"replica-{index + 1}",
            "--store-url",
            settings.postgres_url,
            "--log-url",
            settings.log_url,
            "--lease-ttl-s",
            str(settings.lease_ttl_s),
            "--metrics-listen",
            metrics[index] if metrics else "",
            "--workspace-dir",
            str(settings.workspace_dir),
        ]

    return argv


def edge_argv(settings: ClusterSettings) -> Callable[[str], list[str]]:
    """The command line of an edge, given its listen address: every replica upstream."""

    def argv(listen: str) -> list[str]:
        upstream = ",".join(settings.replica_listen)
        return [sys.executable, "-m", "ws_edge", "--listen", listen, "--upstream", upstream]

    return argv


def child_specs(settings: ClusterSettings) -> tuple[list[ChildSpec], list[ChildSpec]]:
    """(replicas, edges), named replica-N and edge-N. Pure."""
    replicas = [
        ChildSpec(f"replica-{i + 1}", listen, replica_argv(settings, i))
        for i, listen in enumerate(settings.replica_listen)
    ]
    edges = [
        ChildSpec(f"edge-{i + 1}", listen, edge_argv(settings))
        for i, listen in enumerate(settings.edge_listen)
    ]
    return replicas, edges


def run_settings(settings: ClusterSettings) -> RunSettings:
    """What each supervised child needs of `agent-relay run`'s settings."""
    return RunSettings(
        workspace_dir=settings.workspace_dir,
        var_dir=settings.var_dir,
        log_dir=settings.logs,
        ready_timeout_s=settings.ready_timeout_s,
        stop_timeout_s=settings.stop_timeout_s,
    )


def preflight(settings: ClusterSettings, env: Mapping[str, str]) -> str | None:
    """Why the cluster cannot start (a port in use, data in reach), before any start."""
    for i, listen in enumerate(settings.replica_listen):
        if problem := port_problem(listen, f"agent replica {i + 1}'s gRPC API"):
            return problem
    for i, listen in enumerate(settings.replica_metrics_listen):
        if problem := port_problem(listen, f"agent replica {i + 1}'s metrics"):
            return problem
    for i, listen in enumerate(settings.edge_listen):
        if problem := port_problem(listen, f"edge {i + 1}: web UI and WebSocket"):
            return problem
    # the replicas' store is PostgreSQL: nothing of VAR_DIR is excluded for them
    return exposed_data_problem(
        run_settings(settings), {**env, "AGENT_RELAY_STORE_URL": settings.postgres_url}
    )


class ClusterSupervisor:
    """The replicas, then the edges, until a signal or a give-up."""

    def __init__(self, settings: ClusterSettings, *, terminal: Terminal | None = None) -> None:
        self._settings = settings
        self._terminal = terminal or Terminal()
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._signals = 0
        self._children: list[Child] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> int:
        """0 after a stop by signal; 1 when a backend, a port or a child failed."""
        settings = self._settings
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        problem = preflight(settings, env) or await self._backends()
        if problem:
            print(f"agent-relay cluster: {problem}", file=sys.stderr, flush=True)
            return 1
        if "AGENT_RELAY_JWT_SECRET" not in env:
            env["AGENT_RELAY_JWT_SECRET"] = token_secret(settings.var_dir)
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        replicas, edges = child_specs(settings)
        try:
            if await self._start_all(replicas, env) and await self._start_all(edges, env):
                self._banner()
            await self._stopping.wait()
        finally:
            # the edges first (they drain their sockets while the replicas are up)
            for child, task in reversed(list(zip(self._children, self._tasks, strict=True))):
                child.stop()
                await asyncio.gather(task, return_exceptions=True)
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)
        if self._failure is not None:
            self._terminal.say(self._failure)
            return 1
        self._terminal.say("stopped (Redis and PostgreSQL keep running)")
        return 0

    async def _backends(self) -> str:
        settings, say = self._settings, self._terminal.say
        options = {"start": settings.start_backends, "wait_s": settings.backend_wait_s, "say": say}
        return (
            await ensure_redis(settings.redis_url, **options)  # type: ignore[arg-type]
            or await ensure_postgres(settings.postgres_url, **options)  # type: ignore[arg-type]
            or await ensure_database(settings.postgres_url, say)
        )

    async def _start_all(self, specs: list[ChildSpec], env: dict[str, str]) -> bool:
        """Start every spec at once; True once all listen (False: stopping or gave up)."""
        started = []
        for spec in specs:
            child = Child(spec, run_settings(self._settings), env, self._terminal, self._give_up)
            self._children.append(child)
            self._tasks.append(self._supervise(child))
            started.append(child)
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        ready = [asyncio.ensure_future(child.ready.wait()) for child in started]
        all_ready: asyncio.Future[Any] = asyncio.gather(*ready)
        try:
            await asyncio.wait({stopping, all_ready}, return_when="FIRST_COMPLETED")
        finally:
            stopping.cancel()
            all_ready.cancel()
        return all(child.ready.is_set() for child in started) and not self._stopping.is_set()

    def _supervise(self, child: Child) -> asyncio.Task[None]:
        task = asyncio.create_task(child.supervise())

        def ended(done: asyncio.Task[None]) -> None:
            # a bug in supervision must stop the cluster, not leave it waiting forever
            if not done.cancelled() and done.exception() is not None:
                self._give_up(f"supervising {child.spec.name} failed: {done.exception()!r}")

        task.add_done_callback(ended)
        return task

    def _banner(self) -> None:
        edges = [c for c in self._children if c.spec.name.startswith("edge-")]
        replicas = [c for c in self._children if c.spec.name.startswith("replica-")]
        lines = ["", "agent-relay cluster is running (Ctrl-C stops it):"]
        lines += [f"  {c.spec.name}: {(c.announced or '').rstrip('/')}/" for c in edges]
        lines += [f"  {c.spec.name}: gRPC on {c.address}" for c in replicas]
        lines += [
            f"  store {self._settings.postgres_url}, log {self._settings.log_url}",
            f"  logs in {self._settings.logs}",
            "",
        ]
        self._terminal.plain("\n".join(lines))

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            if not self._stopping.is_set():
                self._terminal.say(f"stopping ({signal.Signals(signum).name})")
            self._stopping.set()
        else:  # a second Ctrl-C: no more waiting
            self._terminal.say("stopping now: killing the children")
            for child in self._children:
                child.kill()

    def _give_up(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self._stopping.set()


def main(argv: Sequence[str] | None = None) -> int:
    """`agent-relay cluster [FLAGS]`."""
    settings = load(list(sys.argv[1:] if argv is None else argv))
    return asyncio.run(ClusterSupervisor(settings).run())


__all__ = ["ClusterSupervisor", "child_specs", "main", "preflight"]
