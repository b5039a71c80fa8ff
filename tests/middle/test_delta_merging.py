"""Deltas made while a commit is in flight share one event (SessionLog.extend_unsubmitted_delta),
through the real hub, agent loop and demo model, with a log that takes its time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.agent import AgentLoop
from agent_service.config import ServiceSettings, load
from agent_service.hub import Hub
from agent_service.log import Append
from agent_service.log_memory import MemoryLog
from agent_service.providers.demo import DemoModel
from agent_service.store_sqlite import SqliteStore
from agent_service.tools.builtins import build_registry
from relay_shared.agent_telemetry import AgentTelemetry

WORDS = 300


class SlowLog(MemoryLog):
    """A log whose every commit takes 20 ms, as a busy disk's would; it keeps what it was
    given, serialized, so a change to an event after its append would show."""

    def __init__(self) -> None:
        super().__init__()
        self.written: dict[str, list[bytes]] = {}

    async def append(self, batch: Sequence[Append]) -> None:
        for item in batch:
            self.written.setdefault(item.session_id, []).extend(
                e.SerializeToString() for e in item.events
            )
        await asyncio.sleep(0.02)
        await super().append(batch)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings: ServiceSettings = load(
        [
            *("--workspace-dir", str(tmp_path / "ws"), "--store-url", "sqlite:///:memory:"),
            *("--merge-delta-chars", "64"),
        ],
        env={},
    )
    store = SqliteStore(":memory:")
    await store.open()
    tools = build_registry(settings)
    model = DemoModel(tokens_per_s=0, reply_words=WORDS)
    running = Hub(
        settings,
        store,
        SlowLog(),
        tools,
        AgentLoop(settings, store, model, tools, AgentTelemetry(None)),
    )
    running.start()
    yield running
    await running.shutdown(1.0)
    await store.close()


async def test_a_busy_log_carries_several_words_per_delta_and_loses_none(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    accepted = await hub.send_message(session.session_id, "m1", "hello", policy=None)
    run = session.runs[accepted.run_id]
    assert run.task is not None
    await asyncio.wait_for(run.task, 30)
    await hub.writer.flush()
    events = session.log.retained()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # dense, from 1
    deltas = [e.response_delta.text for e in events if e.HasField("response_delta")]
    completed = [e.run_completed for e in events if e.HasField("run_completed")]
    assert len(completed) == 1
    assert "".join(deltas) == completed[0].text
    assert len(completed[0].text.split()) == WORDS
    assert len(deltas) < WORDS  # words made during a commit went in one event
    # what the log wrote is what subscribers see: no event changed after its append
    log = hub.event_log
    assert isinstance(log, SlowLog)
    written = [pb.SessionEvent.FromString(b) for b in log.written[session.session_id]]
    assert written == events
    history = await hub.store.list_messages(session.session_id, 10, 0)
    assert [m.text for m in history if m.role == "assistant"] == [completed[0].text]
