"""A hub in the test's process: the real SQLite store (in memory), the memory:// log, the
demo model at full speed and the built-in tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent_service.agent import AgentLoop
from agent_service.config import ServiceSettings, load
from agent_service.hub import Hub
from agent_service.log_memory import MemoryLog
from agent_service.providers.demo import DemoModel
from agent_service.store_sqlite import SqliteStore
from agent_service.tools.builtins import build_registry
from relay_shared.agent_telemetry import AgentTelemetry


@asynccontextmanager
async def running_hub(tmp_path: Path, store: SqliteStore | None = None) -> AsyncIterator[Hub]:
    """A started hub on `store` (opened here; a plain in-memory one by default), shut down
    and its store closed on the way out."""
    settings: ServiceSettings = load(
        ["--workspace-dir", str(tmp_path / "ws"), "--store-url", "sqlite:///:memory:"], env={}
    )
    store = store or SqliteStore(":memory:")
    await store.open()
    tools = build_registry(settings)
    body = AgentLoop(settings, store, DemoModel(tokens_per_s=0), tools, AgentTelemetry(None))
    hub = Hub(settings, store, MemoryLog(), tools, body)
    hub.start()
    try:
        yield hub
    finally:
        await hub.shutdown(1.0)
        await store.close()
