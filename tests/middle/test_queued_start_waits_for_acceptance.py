"""A queued run starts only once its acceptance is stored and appended.

A run that ended while the next message's acceptance was still being stored started
that message's run at once: its RunStarted could precede its MessageAccepted in the
log, and the store's later write of the acceptance left the message `queued` after its
run had completed (seen with PostgreSQL under load in test_replicas.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_service.runs import BusyPolicy
from agent_service.session import Session
from agent_service.store import MessageRecord, RunRecord
from agent_service.store_sqlite import SqliteStore
from tests.middle.hubs import running_hub
from tests.middle.test_context_in_memory import wait_ended, wait_for_tool_call


class StallingStore(SqliteStore):
    """Holds a queued message's acceptance until `release` is set."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def accept_user_message(
        self, message: MessageRecord, run: RunRecord, *, title: str
    ) -> None:
        if message.status == "queued":
            self.stalled.set()
            await self.release.wait()
        await super().accept_user_message(message, run, title=title)


async def completed(session: Session, run_id: str) -> None:
    """Until the run's completion is in the log (its end goes on after that)."""
    for _ in range(1000):
        events = session.log.read_after(0, 10_000).events
        if any(e.run_id == run_id and e.HasField("run_completed") for e in events):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not complete")


async def test_a_run_ending_during_an_acceptance_waits_for_it(tmp_path: Path) -> None:
    store = StallingStore()
    async with running_hub(tmp_path, store) as hub:
        session = await hub.session((await hub.create_session("u", "")).session_id)
        busy = await hub.send_message(
            session.session_id, "m1", '/tool long_task {"seconds": 30}', policy=None
        )
        await wait_for_tool_call(session, busy.run_id)
        sending = asyncio.create_task(
            hub.send_message(session.session_id, "m2", "later", BusyPolicy.QUEUE)
        )
        await asyncio.wait_for(store.stalled.wait(), 10)
        assert await hub.cancel_run(session.session_id, busy.run_id)
        await completed(session, busy.run_id)
        await asyncio.sleep(0.1)  # time for a wrongly started run to get going
        store.release.set()
        queued = await asyncio.wait_for(sending, 10)
        await wait_ended(session, queued.run_id)
        events = session.log.read_after(0, 1000).events
        order = [
            e.WhichOneof("kind")
            for e in events
            if e.run_id == queued.run_id and e.WhichOneof("kind") != "response_delta"
        ]
        assert order[:2] == ["message_accepted", "run_started"]
        assert order[-1] == "run_completed"
        history = await store.list_messages(session.session_id, 100, 0)
        assert [(m.message_id, m.status) for m in history if m.role == "user"] == [
            ("m1", "complete"),
            ("m2", "complete"),
        ]
