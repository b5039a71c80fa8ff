"""With the log in the store's SQLite file (the service's default), a run's end reaches
the store in the transaction that makes its RunCompleted durable (log.Append.then):
never before it, and one commit fewer. A joined write that fails is written by the run
itself afterwards. Real hub, agent loop, demo model, store and log on one file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent_service.agent import AgentLoop
from agent_service.config import ServiceSettings, load
from agent_service.hub import Hub
from agent_service.log import open_log
from agent_service.providers.demo import DemoModel
from agent_service.store import RunRecord
from agent_service.store_sqlite import SqliteStore
from agent_service.tools.builtins import build_registry
from relay_shared.agent_telemetry import AgentTelemetry


class FailingJoinedEnd(SqliteStore):
    """A store whose first run-end write fails (the joined one), as a write that hits a
    locked or full file would."""

    failures = 1

    def run_update_write(  # type: ignore[override]
        self, run: RunRecord, *, user_message_status: str = ""
    ) -> Callable[[sqlite3.Connection], None]:
        if self.failures:
            self.failures -= 1

            def fail(db: sqlite3.Connection) -> None:
                raise sqlite3.OperationalError("the joined write fails")

            return fail
        return SqliteStore.run_update_write(run, user_message_status=user_message_status)


async def started(tmp_path: Path, store: SqliteStore) -> Hub:
    url = f"sqlite:///{store.path}"
    settings: ServiceSettings = load(
        ["--workspace-dir", str(tmp_path / "ws"), "--store-url", url], env={}
    )
    await store.open()
    log = open_log("", store_url=url, store=store)
    await log.open()
    tools = build_registry(settings)
    model = DemoModel(tokens_per_s=0, reply_words=1)
    hub = Hub(
        settings, store, log, tools, AgentLoop(settings, store, model, tools, AgentTelemetry(None))
    )
    hub.start()
    return hub


@pytest.fixture
async def statements(tmp_path: Path) -> AsyncIterator[tuple[Hub, list[str]]]:
    store = SqliteStore(str(tmp_path / "relay.sqlite3"))
    hub = await started(tmp_path, store)
    ran: list[str] = []
    store.writer._db.set_trace_callback(ran.append)  # what the file's writer executes
    yield hub, ran
    await hub.shutdown(1.0)
    await hub.event_log.close()
    await store.close()


def transactions(ran: list[str]) -> list[list[str]]:
    """The statements of each committed transaction, in order."""
    done: list[list[str]] = []
    current: list[str] = []
    for sql in ran:
        if sql.startswith("BEGIN"):
            current = []
        elif sql == "COMMIT":
            done.append(current)
        else:
            current.append(sql)
    return done


async def test_a_runs_end_commits_with_its_run_completed(
    statements: tuple[Hub, list[str]],
) -> None:
    hub, ran = statements
    session = await hub.session((await hub.create_session("u", "")).session_id)
    for index in range(3):
        ran.clear()
        accepted = await hub.send_message(session.session_id, f"m{index}", "hi", policy=None)
        run = session.runs[accepted.run_id]
        assert run.task is not None
        await run.task
        await hub.writer.flush()
        ended = [
            t for t in transactions(ran) if any(s.startswith("UPDATE runs SET status") for s in t)
        ]
        assert len(ended) == 1  # written once
        inserts = [s for s in ended[0] if s.startswith("INSERT INTO events")]
        assert inserts  # in the log's commit ...
        last_insert = max(i for i, s in enumerate(ended[0]) if s.startswith("INSERT INTO events"))
        update = next(i for i, s in enumerate(ended[0]) if s.startswith("UPDATE runs SET status"))
        assert update > last_insert  # ... after the events
    assert await hub.store.runs_in_flight() == []
    events = session.log.retained()
    assert sum(e.HasField("run_completed") for e in events) == 3


async def test_a_joined_end_that_fails_is_written_by_the_run(tmp_path: Path) -> None:
    store = FailingJoinedEnd(str(tmp_path / "relay.sqlite3"))
    hub = await started(tmp_path, store)
    try:
        session = await hub.session((await hub.create_session("u", "")).session_id)
        accepted = await hub.send_message(session.session_id, "m1", "hi", policy=None)
        run = session.runs[accepted.run_id]
        assert run.task is not None
        await run.task
        assert await hub.store.runs_in_flight() == []  # ended all the same
        completed = [e for e in session.log.retained() if e.HasField("run_completed")]
        assert len(completed) == 1
    finally:
        await hub.shutdown(1.0)
        await hub.event_log.close()
        await store.close()
