"""Readiness: the gRPC health service says NOT_SERVING while a backend does not answer.

`HealthWatch` probes, every `period_s`, the conversation store and the event log
(a bounded ping each), and reads the log writer's and the lease's own flags
(they fail on real traffic first). While any of them is down the service and
"" report NOT_SERVING, so a load balancer or the edge sends new work elsewhere;
commands that still arrive fail fast with UNAVAILABLE (hub.py). Once all answer
again it reports SERVING: the writer has retried what waited, and clients
resume by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from grpc_health.v1 import health_pb2

from agent_service.lease import Lease
from agent_service.log import EventLog
from agent_service.log_writer import LogWriter
from agent_service.store import ConversationStore

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """Keeps the health servicer's statuses in line with the backends."""

    def __init__(
        self,
        health: Any,  # grpc_health's aio HealthServicer (untyped)
        services: tuple[str, ...],
        *,
        store: ConversationStore,
        event_log: EventLog,
        writer: LogWriter,
        lease: Lease,
        period_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.health = health
        self.services = services
        self.store = store
        self.event_log = event_log
        self.writer = writer
        self.lease = lease
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.serving: bool | None = None
        self._task: asyncio.Task[None] | None = None

    async def problems(self) -> list[str]:
        """What does not answer now (empty: everything does)."""
        found = []
        for name, probe in (("store", self.store.ping), ("event log", self.event_log.ping)):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await probe()
            except Exception as exc:
                found.append(f"{name}: {type(exc).__name__}: {exc}")
        if not self.writer.healthy:
            found.append("event log: appends are failing")
        if not self.lease.healthy:
            found.append("leases: renewals are failing")
        return found

    async def check(self) -> bool:
        """Probe once and set the statuses; whether the service is serving."""
        problems = await self.problems()
        serving = not problems
        if serving != self.serving:
            if serving:
                log.info("backends answer: SERVING")
            else:
                log.error("NOT_SERVING: %s", "; ".join(problems))
            for service in self.services:
                await self.health.set(service, SERVING if serving else NOT_SERVING)
            self.serving = serving
        return serving

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="health-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.check()
