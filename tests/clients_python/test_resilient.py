"""The asyncio driver with an in-memory link: deterministic timing for the cases that real
servers make hard to hit (close during connect, refusals, retries, backoff growth)."""

from __future__ import annotations

import asyncio

import pytest

from agent_relay_client import errors
from agent_relay_client.backoff import BackoffPolicy
from agent_relay_client.connection import State
from agent_relay_client.events import SessionEvent
from agent_relay_client.outbox import OutboxEntry
from agent_relay_client.resilient import (
    Accepted,
    ClientError,
    History,
    MessageRejected,
    MessageSent,
    ResilientChat,
    StateChanged,
)
from tests.support.timing import scaled

S = "s1"


class FakeLink:
    """A link whose replies the test scripts; records every command."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.events: asyncio.Queue[SessionEvent | errors.TransportError] = asyncio.Queue()
        self.closed = False

    async def join(self, session_id: str, after_seq: int) -> int:
        self.world.log.append(("join", session_id, after_seq))
        if session_id in self.world.forbidden:
            raise errors.PermissionDenied("forbidden", "not yours")
        return self.world.head

    async def leave(self, session_id: str) -> None:
        self.world.log.append(("leave", session_id))

    async def send(self, entry: OutboxEntry) -> Accepted:
        self.world.log.append(("send", entry.message_id))
        self.world.sent.append(entry)
        refusal = self.world.refusals.pop(entry.message_id, None)
        if refusal is not None:
            raise refusal
        self.world.head += 1
        return Accepted(entry.message_id, self.world.head, "r1")

    async def cancel_run(self, session_id: str, run_id: str) -> bool:
        return True

    async def cancel_tool_call(self, session_id: str, call_id: str) -> bool:
        return True

    async def next_event(self) -> SessionEvent:
        item = await self.events.get()
        if isinstance(item, errors.TransportError):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True

    def drop(self, code: int = 1006) -> None:
        self.events.put_nowait(errors.TransportError("dropped", code=code))


class World:
    """What the fake server side knows and does."""

    def __init__(self) -> None:
        self.log: list[tuple[object, ...]] = []
        self.sent: list[OutboxEntry] = []  # every message as the link got it
        self.links: list[FakeLink] = []
        self.failures: list[errors.TransportError] = []  # next connects fail with these
        self.forbidden: set[str] = set()
        self.refusals: dict[str, errors.RequestError] = {}
        self.head = 0
        self.connect_gate: asyncio.Event | None = None

    async def connect(self) -> FakeLink:
        if self.connect_gate is not None:
            await self.connect_gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        link = FakeLink(self)
        self.links.append(link)
        return link

    async def history(self, session_id: str) -> History:
        return History([], self.head)


def client(world: World, **kw: object) -> ResilientChat:
    return ResilientChat(
        world.connect,
        world.history,
        backoff=BackoffPolicy(base_s=0.01, cap_s=0.05, restart_cap_s=0.01),
        retry_tick_s=0.01,
        **kw,  # type: ignore[arg-type]
    )


async def eventually(predicate, timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - the fake has no events to wait on
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), scaled(timeout_s))


async def test_close_while_a_connection_is_being_opened_is_clean() -> None:
    world = World()
    world.connect_gate = asyncio.Event()
    chat = client(world)
    await chat.start()
    await asyncio.sleep(0.01)
    close = asyncio.create_task(chat.close())
    world.connect_gate.set()
    await asyncio.wait_for(close, scaled(5))
    assert chat.state is State.DISCONNECTED
    assert all(link.closed for link in world.links)


async def test_failed_attempts_back_off_then_the_outbox_goes_out_once() -> None:
    world = World()
    world.failures = [errors.TransportError("refused") for _ in range(3)]
    async with client(world) as chat:
        message_id = await chat.send(S, "queued before any connection")
        await eventually(lambda: ("send", message_id) in world.log)
        assert chat.machine.attempt == 0 and chat.state is State.CONNECTED
        reconnecting = [new for old, new in chat.machine.transitions if new is State.RECONNECTING]
        assert len(reconnecting) == 1  # one RECONNECTING spell covering three failed attempts
        assert world.log == [("join", S, 0), ("send", message_id)]


async def test_a_drop_before_the_ack_resends_under_the_same_id() -> None:
    world = World()
    async with client(world) as chat:
        await eventually(lambda: len(world.links) == 1)
        await chat.follow(S, with_history=False)
        world.refusals["m1"] = errors.TransportError("dropped")  # type: ignore[assignment]
        await chat.send(S, "hello", message_id="m1")
        await eventually(lambda: ("send", "m1") in world.log)
        world.links[0].drop()
        await eventually(lambda: world.log.count(("send", "m1")) == 2)
        assert ("join", S, 0) in world.log
        assert len(chat.core.outbox) == 0


async def test_refusals_reach_the_user_and_rate_limits_are_retried() -> None:
    world = World()
    world.forbidden.add("s_other")
    updates: asyncio.Queue = asyncio.Queue()
    async with client(world) as chat:
        chat.add_listener(updates)
        await chat.follow("s_other", with_history=False)
        world.refusals["bad"] = errors.InvalidRequest("invalid_field", "text too long")
        world.refusals["slow"] = errors.RateLimited("rate_limited", "wait", retry_after_ms=30)
        await chat.follow(S, with_history=False)
        await chat.send(S, "x" * 10, message_id="bad")
        await chat.send(S, "later", message_id="slow")
        seen: list[object] = []
        while not any(isinstance(u, MessageSent) for u in seen):
            seen.append(await asyncio.wait_for(updates.get(), scaled(5)))
        assert any(isinstance(u, ClientError) and u.session_id == "s_other" for u in seen)
        rejected = [u for u in seen if isinstance(u, MessageRejected)]
        assert [r.message_id for r in rejected] == ["bad"]
        assert chat.conversation(S).find("bad").status == "rejected"  # type: ignore[union-attr]
        assert world.log.count(("send", "slow")) == 2  # refused once, sent again after the wait
        assert "s_other" not in chat.core.conversations


@pytest.mark.parametrize(
    "failure",
    [
        errors.ConnectionClosed(4501, "token expired"),
        errors.TransportError("auth timeout", code=4503),
    ],
)
async def test_a_close_code_that_says_stop_ends_the_client(failure: errors.TransportError) -> None:
    world = World()
    world.failures = [failure]
    chat = client(world)
    updates: asyncio.Queue = asyncio.Queue()
    chat.add_listener(updates)
    await chat.start()
    while (update := await asyncio.wait_for(updates.get(), scaled(5))) is not None:
        last = update
    assert isinstance(last, StateChanged) and last.state is State.DISCONNECTED
    assert last.code == failure.code and chat.closed_by is not None
    assert len(world.links) == 0 and not world.failures  # one attempt, no retry
    await chat.close()


async def test_a_session_named_by_the_outbox_file_still_gets_its_history(tmp_path) -> None:
    from agent_relay_client.outbox import Outbox

    path = tmp_path / "outbox.json"
    Outbox(path).add(OutboxEntry(session_id=S, message_id="m-left", text="typed last time"))
    world = World()
    world.head = 7
    async with client(world, outbox=Outbox(path)) as chat:
        conv = await chat.follow(S)
        assert conv.last_seq == 7 and conv.find("m-left").status == "sending"  # type: ignore[union-attr]
        await eventually(lambda: ("send", "m-left") in world.log)
        assert world.log[0] == ("join", S, 7)  # after the history, not the whole log


async def test_the_current_span_travels_with_the_message_as_its_traceparent() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    world = World()
    tracer = TracerProvider().get_tracer("test")
    async with client(world) as chat:
        await chat.follow(S, with_history=False)
        with tracer.start_as_current_span("backend job") as span:
            await chat.send(S, "traced", message_id="t1")
        await chat.send(S, "untraced", message_id="t2")
        await eventually(lambda: len(world.sent) == 2)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert world.sent[0].trace_context["traceparent"].split("-")[1] == trace_id
    assert world.sent[1].trace_context == {}
