"""A short reply's events travel in one commit of the log (LogWriter's idle gathering),
through the real hub, agent loop, demo model at full speed and SQLite store: its
acceptance, its run's start, its delta and its completion, so a client gets them in
one response instead of two. The store is a file, as the service's: its small commits
take no turn of the loop (sqlite_writer.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent_service.hub import Hub
from agent_service.log import Append
from agent_service.log_memory import MemoryLog
from agent_service.providers.demo import DemoModel
from agent_service.store_sqlite import SqliteStore
from tests.middle.hubs import running_hub


class CountingLog(MemoryLog):
    """A log that keeps the kinds of events in each batch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    async def append(self, batch: Sequence[Append]) -> None:
        self.batches.append([str(e.WhichOneof("kind")) for item in batch for e in item.events])
        await super().append(batch)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    store = SqliteStore(str(tmp_path / "store.sqlite3"))  # a file: its commits are inline
    model = DemoModel(tokens_per_s=0, reply_words=1)
    async with running_hub(tmp_path, store, event_log=CountingLog(), model=model) as running:
        yield running


async def test_a_short_reply_is_one_append_from_acceptance_to_completion(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    log = hub.event_log
    assert isinstance(log, CountingLog)
    for index in range(4):
        log.batches.clear()
        accepted = await hub.send_message(session.session_id, f"m{index}", "hi", policy=None)
        run = session.runs[accepted.run_id]
        assert run.task is not None
        await run.task
        await hub.writer.flush()
        if index == 0:
            continue  # a session's first run reads its context from the store's thread
        assert log.batches == [
            ["message_accepted", "run_started", "response_delta", "run_completed"]
        ]
    history = await hub.store.list_messages(session.session_id, 10, 0)
    assert [m.role for m in history] == ["user", "assistant"] * 4
    runs = await hub.store.runs_in_flight()
    assert runs == []  # every run's end reached the store too
