"""The hub, the supervisor and a Chat stream in one process: no sockets, real store and log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.auth import OPEN_CALLER
from agent_service.auth_interceptor import _caller
from agent_service.chat_stream import ChatStream
from agent_service.context import context_from_history
from agent_service.hub import Hub
from agent_service.store import SessionRecord
from agent_service.store_sqlite import SqliteStore
from tests.middle.hubs import running_hub


class SlowLoads(SqliteStore):
    """A store whose sessions named in `slow` take a second to load."""

    slow: set[str] = set()

    async def get_session(self, session_id: str) -> SessionRecord | None:
        if session_id in self.slow:
            await asyncio.sleep(1.0)
        return await super().get_session(session_id)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path, SlowLoads(":memory:")) as running:
        yield running


async def requests(*items: pb.ChatRequest) -> AsyncIterator[pb.ChatRequest]:
    for item in items:
        yield item
    await asyncio.sleep(3)  # stay open while the commands run


async def test_a_slow_session_load_does_not_delay_other_sessions_on_the_stream(hub: Hub) -> None:
    for session_id in ("slow", "fast"):
        await hub.store.create_session(SessionRecord(session_id, "u", "", 1))
    SlowLoads.slow = {"slow"}
    _caller.set(OPEN_CALLER)  # what the interceptor does for a call on a loopback listener
    stream = ChatStream(hub)
    reader = asyncio.create_task(
        stream.read(
            requests(
                pb.ChatRequest(request_id="1", join=pb.JoinSession(session_id="slow")),
                pb.ChatRequest(request_id="2", join=pb.JoinSession(session_id="fast")),
                pb.ChatRequest(
                    request_id="3",
                    send=pb.SendMessage(session_id="slow", message_id="m1", text="hi"),
                ),
            )
        )
    )
    for _ in range(200):
        if stream.replies:
            break
        await asyncio.sleep(0.01)
    assert [r.request_id for r in stream.replies] == ["2"]  # "fast" did not wait for "slow"
    for _ in range(300):
        if len(stream.replies) == 3:
            break
        await asyncio.sleep(0.01)
    # within one session the order holds: the join before the send
    assert [r.request_id for r in stream.replies] == ["2", "1", "3"]
    reader.cancel()


async def test_cancel_with_a_tool_call_in_flight_stores_a_result_for_the_call(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    args = json.dumps({"seconds": 30})
    accepted = await hub.send_message(
        session.session_id, "m1", f"/tool long_task {args}", policy=None
    )
    run = session.runs[accepted.run_id]
    for _ in range(500):
        if run.tools:
            break
        await asyncio.sleep(0.01)
    assert run.tools, "the tool call did not start"
    assert await hub.cancel_run(session.session_id, "")
    assert run.task is not None
    await asyncio.wait_for(run.task, 10)
    history = await hub.store.list_messages(session.session_id, 100, 0)
    assert [(m.role, m.status) for m in history] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("tool", "cancelled"),
    ]
    assert history[2].call_id == history[1].tool_calls[0].call_id
    context = context_from_history(history)
    assert [m.role for m in context] == ["user", "assistant", "tool"]
    completed = [e for e in session.log.retained() if e.HasField("run_completed")]
    assert [e.run_completed.finish_reason for e in completed] == [pb.FINISH_REASON_CANCELLED]


class StalledFirstWrite(SqliteStore):
    """A store whose write of message `m0` waits until `go` is set: a stalled store holds
    the session's acceptance, and the messages behind it wait in front of theirs."""

    go: asyncio.Event

    async def accept_user_message(self, message, *args, **kwargs):  # type: ignore[no-untyped-def]
        if message.message_id == "m0":
            await self.go.wait()
        return await super().accept_user_message(message, *args, **kwargs)


async def test_a_message_whose_deadline_passes_before_acceptance_is_refused_and_not_stored(
    tmp_path: Path,
) -> None:
    from agent_service.errors import Overloaded
    from agent_service.ids import now_ms

    store = StalledFirstWrite(":memory:")
    store.go = asyncio.Event()
    async with running_hub(tmp_path, store) as hub:
        try:
            sid = (await hub.create_session("u", "")).session_id
            first = asyncio.create_task(hub.send_message(sid, "m0", "first", None))
            await asyncio.sleep(0.05)  # m0's write holds the session's acceptance
            deadline = now_ms() + 100
            late = asyncio.create_task(
                hub.send_message(sid, "m1", "hi", None, accept_by_ms=deadline)
            )
            await asyncio.sleep((deadline - now_ms()) / 1000 + 0.05)  # stalled past the deadline
            assert not late.done()
            store.go.set()
            assert not (await first).duplicate
            with pytest.raises(Overloaded) as refused:
                await late
            assert refused.value.reason == "DEADLINE_PASSED" and refused.value.retry_after_ms >= 500
            assert await store.find_user_message(sid, "m1") is None
            assert hub.admission.depth == 0 and hub.admission.refused == 1
            # the session is as before: the same id, sent again in time, is accepted once
            accepted = await hub.send_message(sid, "m1", "hi", None, accept_by_ms=now_ms() + 60_000)
            assert not accepted.duplicate and accepted.seq > 1
            # and a resend of an accepted id gets its acceptance back, however late
            again = await hub.send_message(sid, "m1", "hi", None, accept_by_ms=1)
            assert again.duplicate and again.seq == accepted.seq
            stored = await store.list_messages(sid, 100, 0)
            assert [m.message_id for m in stored if m.role == "user"] == ["m0", "m1"]
        finally:
            store.go.set()  # before the hub shuts down
