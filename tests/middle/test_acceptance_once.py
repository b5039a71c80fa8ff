"""A message id is accepted once, also when the session was reloaded in between.

A new id is no longer looked up in the store before it is accepted: storing it
checks it (DuplicateMessage). These cases make sure a retry still gets the first
acceptance, through the hub with a real SQLite store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_service.errors import AlreadyExists, Unavailable
from agent_service.hub import Hub
from agent_service.runs import BusyPolicy
from agent_service.store import MessageRecord, RunRecord
from agent_service.store_sqlite import SqliteStore
from tests.middle.hubs import running_hub
from tests.middle.test_context_in_memory import run_to_end, wait_for_tool_call


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as running:
        yield running


async def test_a_retry_after_a_reload_gets_the_first_acceptance(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    first = await hub.send_message(session.session_id, "m1", "hello", policy=None)
    await run_to_end(hub, session, "m2", "next")
    hub._sessions.pop(session.session_id)  # unloaded: the ids are no longer in memory
    reloaded = await hub.session(session.session_id)
    again = await hub.send_message(session.session_id, "m1", "hello", policy=None)
    assert again.duplicate
    assert (again.run_id, again.seq) == (first.run_id, first.seq)
    assert not reloaded.busy, "the retry started no run"
    history = await hub.store.list_messages(session.session_id, 100, 0)
    assert [m.message_id for m in history if m.role == "user"] == ["m1", "m2"]
    assert [r.run_id for r in await hub.store.runs_in_flight()] == []


async def test_a_retry_after_a_reload_while_busy_with_reject_is_a_duplicate(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    first = await hub.send_message(session.session_id, "m1", "hello", policy=None)
    await run_to_end(hub, session, "m2", "next")
    hub._sessions.pop(session.session_id)
    reloaded = await hub.session(session.session_id)
    busy = await hub.send_message(
        session.session_id, "m3", '/tool long_task {"seconds": 30}', policy=None
    )
    await wait_for_tool_call(reloaded, busy.run_id)
    again = await hub.send_message(session.session_id, "m1", "hello", BusyPolicy.REJECT)
    assert again.duplicate and again.run_id == first.run_id
    assert await hub.cancel_run(session.session_id, "")


async def test_an_id_taken_by_a_tool_result_is_refused_clearly(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    await run_to_end(hub, session, "m1", "calc 1 + 1")
    history = await hub.store.list_messages(session.session_id, 100, 0)
    call_id = next(m.call_id for m in history if m.role == "tool")
    with pytest.raises(AlreadyExists) as refused:
        await hub.send_message(session.session_id, call_id, "hi", policy=None)
    assert refused.value.field == "message_id"
    assert not session.busy
    # the session goes on
    assert not (await hub.send_message(session.session_id, "m2", "hi", policy=None)).duplicate


async def test_each_stored_message_knows_the_seq_of_its_acceptance_event(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    await run_to_end(hub, session, "m1", "hello")  # idle: the seq is stored with the message
    busy = await hub.send_message(
        session.session_id, "m2", '/tool long_task {"seconds": 30}', policy=None
    )
    await wait_for_tool_call(session, busy.run_id)
    queued = await hub.send_message(session.session_id, "m3", "later", BusyPolicy.QUEUE)
    assert queued.queued  # noted after its event got its seq
    assert await hub.cancel_run(session.session_id, busy.run_id)
    await run_to_end(hub, session, "m4", "calc 2 + 2")
    logged = {
        e.message_accepted.message_id: e.seq
        for e in session.log.retained()
        if e.HasField("message_accepted")
    }
    history = await hub.store.list_messages(session.session_id, 100, 0)
    stored = {m.message_id: m.accept_seq for m in history if m.role == "user"}
    assert stored == logged
    assert sorted(stored) == ["m1", "m2", "m3", "m4"]


class LandsThenFails(SqliteStore):
    """The next acceptance is stored, and then its caller is told it failed (a write that
    landed after a timeout)."""

    lands_then_fails = False

    async def accept_user_message(
        self, message: MessageRecord, run: RunRecord, *, title: str
    ) -> None:
        await super().accept_user_message(message, run, title=title)
        if self.lands_then_fails:
            self.lands_then_fails = False
            raise TimeoutError("made up by the test")


async def test_a_retry_of_an_acceptance_whose_event_never_came_gets_no_other_events_seq(
    tmp_path: Path,
) -> None:
    store = LandsThenFails(":memory:")
    async with running_hub(tmp_path, store) as hub:
        session = await hub.session((await hub.create_session("u", "")).session_id)
        store.lands_then_fails = True
        with pytest.raises(Unavailable):
            await hub.send_message(session.session_id, "m1", "hello", policy=None)
        second = await hub.send_message(session.session_id, "m2", "hi", policy=None)
        retry = await hub.send_message(session.session_id, "m1", "hello", policy=None)
        assert retry.duplicate
        assert retry.seq != second.seq, "m2's acceptance is not m1's"
