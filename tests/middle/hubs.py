"""A hub in the test's process: the real SQLite store (in memory by default), the
memory:// log, the demo model at full speed and the built-in tools; each can be swapped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from agent_service.agent import AgentLoop
from agent_service.config import ServiceSettings, load
from agent_service.hub import Hub
from agent_service.log import EventLog
from agent_service.log_memory import MemoryLog
from agent_service.providers.demo import DemoModel
from agent_service.store_sqlite import SqliteStore
from agent_service.tools.builtins import build_registry
from relay_shared.agent_telemetry import AgentTelemetry


@asynccontextmanager
async def running_hub(
    tmp_path: Path,
    store: SqliteStore | None = None,
    *,
    args: Sequence[str] = (),
    event_log: EventLog | None = None,
    model: DemoModel | None = None,
) -> AsyncIterator[Hub]:
    """A started hub on `store` (opened here; a plain in-memory one by default), with the
    service's flags `args`, shut down and its store closed on the way out."""
    settings: ServiceSettings = load(
        ["--workspace-dir", str(tmp_path / "ws"), "--store-url", "sqlite:///:memory:", *args],
        env={},
    )
    store = store or SqliteStore(":memory:")
    await store.open()
    tools = build_registry(settings)
    model = model or DemoModel(tokens_per_s=0)
    body = AgentLoop(settings, store, model, tools, AgentTelemetry(None))
    hub = Hub(settings, store, event_log or MemoryLog(), tools, body)
    hub.start()
    try:
        yield hub
    finally:
        await hub.shutdown(1.0)
        await store.close()
