"""A session's model context kept in memory equals what the store gives, run after run.

The hub, the agent loop and a real SQLite store (a file, so a restart can reopen it)
in one process. The model records the conversation each run starts with; every run's
is compared with the store's answer for it (`context_for_run`, the messages of that
run's own steps left out: they are written after it starts). Cases: plain runs, tool
calls, a failed step, a cancel with a tool call in flight, runs queued, cancelled
before they start, interrupted, an unload and reload, a restart with recovery, and a
store write that failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent_service.agent import AgentLoop
from agent_service.config import ServiceSettings, load
from agent_service.context import context_from_history
from agent_service.hub import Hub
from agent_service.log_sqlite import SqliteLog
from agent_service.providers.base import ChatMessage, ModelEvent
from agent_service.providers.demo import DemoModel
from agent_service.recovery import recover
from agent_service.runs import BusyPolicy
from agent_service.session import Session
from agent_service.store import MessageRecord
from agent_service.store_sqlite import SqliteStore
from agent_service.tools.base import ToolSpec
from agent_service.tools.builtins import build_registry
from relay_shared.agent_telemetry import AgentTelemetry


class RecordingModel(DemoModel):
    """The demo model; keeps the conversation of each first step, by its last user text."""

    def __init__(self) -> None:
        super().__init__(tokens_per_s=0)
        self.seen: list[list[ChatMessage]] = []

    def stream(  # type: ignore[override]
        self, conversation: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        if not conversation or conversation[-1].role == "user":
            self.seen.append(list(conversation))
        return super().stream(conversation, tools)


class CountingStore(SqliteStore):
    """Counts context reads; `fail_next_upsert` makes the next message write fail."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.context_reads = 0
        self.fail_next_upsert = False

    async def context_for_run(self, session_id: str, run_id: str) -> Sequence[MessageRecord]:
        self.context_reads += 1
        return await super().context_for_run(session_id, run_id)

    async def upsert_message(self, message: MessageRecord) -> None:
        if self.fail_next_upsert:
            self.fail_next_upsert = False
            raise OSError("disk I/O error (made up by the test)")
        await super().upsert_message(message)


class Service:
    """A hub on files in `folder`, started and stopped like the service's."""

    def __init__(self, folder: Path) -> None:
        self.settings: ServiceSettings = load(
            ["--workspace-dir", str(folder / "ws"), "--store-url", f"sqlite:///{folder}/s.db"],
            env={},
        )
        self.store = CountingStore(str(folder / "s.db"))
        self.log = SqliteLog(str(folder / "s.db"))
        self.model = RecordingModel()
        self.hub: Hub | None = None

    async def start(self) -> Hub:
        await self.store.open()
        await self.log.open()
        tools = build_registry(self.settings)
        body = AgentLoop(self.settings, self.store, self.model, tools, AgentTelemetry(None))
        self.hub = Hub(self.settings, self.store, self.log, tools, body)
        self.hub.start()
        await recover(self.hub)
        return self.hub

    async def stop(self, grace_s: float = 1.0) -> None:
        assert self.hub is not None
        await self.hub.shutdown(grace_s)
        await self.log.close()
        await self.store.close()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    running = Service(tmp_path)
    await running.start()
    yield running
    await running.stop()


async def stored_context(store: SqliteStore, session_id: str, run_id: str) -> list[ChatMessage]:
    """What the store gives run `run_id` as it starts: its steps are not written yet."""
    records = await store.context_for_run(session_id, run_id)
    return context_from_history(m for m in records if m.run_id != run_id or m.role == "user")


async def run_to_end(hub: Hub, session: Session, message_id: str, text: str) -> str:
    """Send a message and wait for its run to end; returns the run id."""
    accepted = await hub.send_message(session.session_id, message_id, text, policy=None)
    await wait_ended(session, accepted.run_id)
    return accepted.run_id


async def wait_ended(session: Session, run_id: str) -> None:
    for _ in range(1000):
        run = session.runs.get(run_id)
        if run is None:
            return
        if run.task is not None:
            await asyncio.wait_for(asyncio.shield(run.task), 10)
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run_id} did not end")


async def wait_for_tool_call(session: Session, run_id: str) -> None:
    for _ in range(1000):
        run = session.runs.get(run_id)
        if run is not None and run.tools:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the tool call did not start")


async def assert_each_run_saw_the_stored_context(
    service: Service, session_id: str, run_ids: list[str]
) -> None:
    expected = [await stored_context(service.store, session_id, r) for r in run_ids]
    assert service.model.seen == expected


async def test_runs_with_tools_failures_and_a_cancel_see_what_the_store_holds(
    service: Service,
) -> None:
    hub = service.hub
    assert hub is not None
    session = await hub.session((await hub.create_session("u", "")).session_id)
    runs = [await run_to_end(hub, session, "m1", "hello there")]
    runs.append(await run_to_end(hub, session, "m2", "calc 2 * (3 + 4)"))
    runs.append(await run_to_end(hub, session, "m3", "/fail"))
    runs.append(await run_to_end(hub, session, "m4", "calc 1 + 1\ncalc 6 * 7"))
    args = json.dumps({"seconds": 30})
    accepted = await hub.send_message(session.session_id, "m5", f"/tool long_task {args}", None)
    await wait_for_tool_call(session, accepted.run_id)
    assert await hub.cancel_run(session.session_id, "")
    await wait_ended(session, accepted.run_id)
    runs.append(accepted.run_id)
    runs.append(await run_to_end(hub, session, "m6", "and now?"))
    assert service.store.context_reads == 1, "only the first run read its context from the store"
    await assert_each_run_saw_the_stored_context(service, session.session_id, runs)
    # the last run's context holds the cancelled call's result, made of what was stored
    assert [m.role for m in service.model.seen[-1][-4:]] == ["user", "assistant", "tool", "user"]


async def test_queued_cancelled_and_interrupted_runs_keep_the_stored_order(
    service: Service,
) -> None:
    hub = service.hub
    assert hub is not None
    session = await hub.session((await hub.create_session("u", "")).session_id)
    first = await run_to_end(hub, session, "m0", "hello")
    args = json.dumps({"seconds": 30})
    busy = await hub.send_message(session.session_id, "m1", f"/tool long_task {args}", None)
    await wait_for_tool_call(session, busy.run_id)
    queued = [
        await hub.send_message(session.session_id, f"q{i}", f"queued {i}", BusyPolicy.QUEUE)
        for i in range(3)
    ]
    assert all(q.queued for q in queued)
    assert await hub.cancel_run(session.session_id, queued[1].run_id)  # never starts
    # interrupt: the active run is cancelled, the queue dropped, this one runs next
    last = await hub.send_message(session.session_id, "m9", "over to me", BusyPolicy.INTERRUPT)
    await wait_ended(session, last.run_id)
    await wait_ended(session, busy.run_id)
    after = await run_to_end(hub, session, "m10", "and after all that?")
    runs = [first, busy.run_id, last.run_id, after]
    await assert_each_run_saw_the_stored_context(service, session.session_id, runs)
    users = [m.content for m in service.model.seen[-1] if m.role == "user"]
    assert users == [
        "hello",
        f"/tool long_task {args}",
        "queued 0",
        "queued 1",
        "queued 2",
        "over to me",
        "and after all that?",
    ]


async def test_after_an_unload_the_context_is_read_from_the_store_again(
    service: Service,
) -> None:
    hub = service.hub
    assert hub is not None
    session = await hub.session((await hub.create_session("u", "")).session_id)
    runs = [await run_to_end(hub, session, "m1", "calc 3 * 3")]
    hub._sessions.pop(session.session_id)  # what the idle unloader does
    reloaded = await hub.session(session.session_id)
    assert reloaded is not session and not reloaded.context.known
    reads = service.store.context_reads
    runs.append(await run_to_end(hub, reloaded, "m2", "once more"))
    runs.append(await run_to_end(hub, reloaded, "m3", "and again"))
    assert service.store.context_reads == reads + 1
    await assert_each_run_saw_the_stored_context(service, session.session_id, runs)


async def test_after_a_restart_mid_tool_call_the_context_is_the_stored_one(
    tmp_path: Path,
) -> None:
    first = Service(tmp_path)
    hub = await first.start()
    session = await hub.session((await hub.create_session("u", "")).session_id)
    runs = [await run_to_end(hub, session, "m1", "hello")]
    args = json.dumps({"seconds": 30})
    accepted = await hub.send_message(session.session_id, "m2", f"/tool long_task {args}", None)
    await wait_for_tool_call(session, accepted.run_id)
    runs.append(accepted.run_id)
    await first.stop(grace_s=0.0)  # the run is interrupted with its call in flight
    second = Service(tmp_path)
    hub = await second.start()
    try:
        session = await hub.session(session.session_id)
        reads = second.store.context_reads  # recovery's
        later = [await run_to_end(hub, session, "m3", "still there?")]
        later.append(await run_to_end(hub, session, "m4", "calc 2 + 2"))
        later.append(await run_to_end(hub, session, "m5", "thanks"))
        assert second.store.context_reads == reads + 1
        await assert_each_run_saw_the_stored_context(second, session.session_id, later)
        roles = [m.role for m in second.model.seen[0]]
        assert roles == ["user", "assistant", "user", "assistant", "tool", "user"]
    finally:
        await second.stop()


async def test_a_failed_store_write_makes_the_next_run_read_the_store(service: Service) -> None:
    hub = service.hub
    assert hub is not None
    session = await hub.session((await hub.create_session("u", "")).session_id)
    runs = [await run_to_end(hub, session, "m1", "hello")]
    service.store.fail_next_upsert = True  # the step of this run is not stored
    runs.append(await run_to_end(hub, session, "m2", "calc 5 * 5"))
    reads = service.store.context_reads
    runs.append(await run_to_end(hub, session, "m3", "what did you say?"))
    assert service.store.context_reads == reads + 1
    await assert_each_run_saw_the_stored_context(service, session.session_id, runs)
