"""Under overload every chat:message gets a true answer (issue 15).

A message is either refused before acceptance (`overloaded`, or `upstream_unavailable`
when the service gave no answer at all) and is then never stored nor run, or it is
acknowledged and is in history exactly once. The service is overloaded for real: it is
stopped (SIGSTOP) while the messages reach it, so they wait in its stream exactly as
they wait behind a backlog, then resumed (SIGCONT); or its acceptance backlog bound is
tiny. Nothing here asserts a duration: the timeouts only decide which answer is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.edge import EdgeClient, EdgeProcess, create_session, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

SESSIONS = 20
AGENT_ARGS = ("--demo-tokens-per-s", "0", "--demo-reply-words", "3")
REFUSALS = {"overloaded", "upstream_unavailable"}


@contextlib.contextmanager
def stopped(agent: ServiceProcess) -> Iterator[None]:
    """The agent service paused: it reads nothing and answers nothing until resumed."""
    agent.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        agent.process.send_signal(signal.SIGCONT)


def _get(url: str, token: str = "") -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return bytes(r.read())


async def history(edge: EdgeProcess, session: dict) -> list[dict]:
    url = f"{edge.url}/api/sessions/{session['session_id']}/messages"
    body = await asyncio.to_thread(_get, url, session["token"])
    return list(json.loads(body)["messages"])


async def in_flight_at_edge(edge: EdgeProcess) -> int:
    text = (await asyncio.to_thread(_get, edge.url + "/metrics")).decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.split("{")[0] == "agent_relay_edge_upstream_messages_in_flight":
            return int(float(value))
    raise AssertionError("the edge does not report its messages in flight")


async def until_in_flight(edge: EdgeProcess, count: int) -> None:
    """Until the edge has sent `count` messages upstream (each stamped with its deadline)."""
    async with asyncio.timeout(scaled(30)):
        while True:
            if await in_flight_at_edge(edge) >= count:
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def sockets(edge: EdgeProcess, count: int) -> AsyncIterator[list[tuple[dict, EdgeClient]]]:
    """`count` sessions, each with its own socket, authenticated and joined."""
    opened: list[tuple[dict, EdgeClient]] = []
    try:
        for _ in range(count):
            session = await asyncio.to_thread(create_session, edge)
            client = await EdgeClient.connect(edge.ws_url, token=session["token"])
            joined = await client.join(session["session_id"])
            assert joined["type"] == "ack", joined
            opened.append((session, client))
        yield opened
    finally:
        for _, client in opened:
            await client.close()


async def say(client: EdgeClient, session_id: str, text: str, message_id: str) -> dict:
    """One chat:message; its reply (an ack or an error)."""
    frame = {"type": "chat:message", "session_id": session_id, "message_id": message_id}
    return await client.request({**frame, "text": text}, timeout_s=30)


async def send_all(opened: list[tuple[dict, EdgeClient]], prefix: str) -> list[asyncio.Task[dict]]:
    """Every socket sends one message (id prefix-i) at once; their replies, as tasks."""
    tasks = []
    for i, (session, client) in enumerate(opened):
        sent = say(client, session["session_id"], f"message {i}", f"{prefix}-{i}")
        tasks.append(asyncio.create_task(sent))
    await asyncio.sleep(0)
    return tasks


async def settle(opened: list[tuple[dict, EdgeClient]]) -> None:
    """Every session's earlier commands are decided and its runs ended: a probe message
    is acked after them (one session's commands run in order) and runs after them."""
    for i, (session, client) in enumerate(opened):
        sid = session["session_id"]
        while True:
            ack = await say(client, sid, "probe", f"probe-{i}")
            if ack.get("code") != "overloaded":
                break
            await asyncio.sleep(ack["retry_after_ms"] / 1000)
        assert ack["type"] == "ack", ack
        await client.until_complete(sid, ack["run_id"], timeout_s=60)


async def check_truth(
    edge: EdgeProcess, opened: list[tuple[dict, EdgeClient]], answers: list[dict], prefix: str
) -> dict[str, int]:
    """Each message refused is in no history and never ran; each acked is in history once.
    Returns how many answers of each kind there were."""
    counts: dict[str, int] = {}
    for i, ((session, client), answer) in enumerate(zip(opened, answers, strict=True)):
        message_id = f"{prefix}-{i}"
        kind = answer["type"] if answer["type"] == "ack" else answer["code"]
        counts[kind] = counts.get(kind, 0) + 1
        stored = [m for m in await history(edge, session) if m["message_id"] == message_id]
        seen = [f for f in client.frames if f.get("message_id") == message_id and "seq" in f]
        if kind == "ack":
            assert len(stored) == 1, (answer, stored)
        else:
            assert kind in REFUSALS, answer
            assert answer["retryable"] is True and answer["retry_after_ms"] >= 500, answer
            assert stored == [], f"refused with {kind}, yet in history: {answer}"
            assert seen == [], f"refused with {kind}, yet accepted and run: {seen}"
    return counts


@pytest.fixture
def agent(tmp_path) -> Iterator[ServiceProcess]:
    proc = start_agent_service(tmp_path, *AGENT_ARGS)
    yield proc
    proc.process.send_signal(signal.SIGCONT)
    proc.stop()


async def test_a_message_the_service_reads_after_the_edge_gave_up_is_never_stored_nor_run(
    agent: ServiceProcess,
) -> None:
    """The edge gives up (upstream_unavailable) while the service is stalled; the service
    then reads the messages, past their deadline, and refuses them: nothing the sender was
    told failed is stored or run. Sent again with the same id, each is accepted once."""
    edge = start_edge(agent.address, "--command-timeout-s", "2", "--accept-timeout-s", "1")
    try:
        async with sockets(edge, SESSIONS) as opened:
            with stopped(agent):
                answers = [await t for t in await send_all(opened, "m")]
            assert {a.get("code") for a in answers} == {"upstream_unavailable"}, answers
            assert all("same message_id" in a["message"] for a in answers), answers[0]
            await settle(opened)
            await check_truth(edge, opened, answers, "m")
            for i, (session, client) in enumerate(opened):  # what the answer told it to do
                again = await say(client, session["session_id"], "again", f"m-{i}")
                assert again["type"] == "ack" and not again["duplicate"], again
                await client.until_complete(session["session_id"], again["run_id"], 60)
            for i, (session, _) in enumerate(opened):
                stored = [m for m in await history(edge, session) if m["message_id"] == f"m-{i}"]
                assert len(stored) == 1, stored
    finally:
        edge.stop()


async def test_a_message_past_its_acceptance_deadline_is_refused_overloaded_with_a_retry_time(
    agent: ServiceProcess,
) -> None:
    """The service resumes after the messages' deadline but well before the edge would
    give up: the service itself refuses each one `overloaded`, with a retry time, before
    storing it; resent with the same id after that time, each is accepted once."""
    edge = start_edge(agent.address, "--command-timeout-s", "60", "--accept-timeout-s", "1")
    try:
        async with sockets(edge, SESSIONS) as opened:
            with stopped(agent):
                tasks = await send_all(opened, "m")
                await until_in_flight(edge, SESSIONS)
                await asyncio.sleep(1.5)  # past every deadline (1 s after each was sent)
            answers = [await t for t in tasks]
            assert {a.get("code") for a in answers} == {"overloaded"}, answers
            assert all("deadline" in a["message"] for a in answers), answers[0]
            await settle(opened)
            await check_truth(edge, opened, answers, "m")
            for i, ((session, client), refused) in enumerate(zip(opened, answers, strict=True)):
                await asyncio.sleep(refused["retry_after_ms"] / 1000)
                again = await say(client, session["session_id"], "again", f"m-{i}")
                assert again["type"] == "ack" and not again["duplicate"], again
    finally:
        edge.stop()


async def test_past_the_services_backlog_bound_messages_are_refused_at_once(
    tmp_path,
) -> None:
    """With room for 2 messages in acceptance, 20 that arrive together: the rest are
    refused `overloaded` at once (nothing stored), the admitted ones acked and stored."""
    agent = start_agent_service(tmp_path, *AGENT_ARGS, "--max-pending-accepts", "2")
    edge = start_edge(agent.address)
    try:
        async with sockets(edge, SESSIONS) as opened:
            with stopped(agent):  # they all arrive while it reads nothing
                tasks = await send_all(opened, "m")
                await until_in_flight(edge, SESSIONS)
            answers = [await t for t in tasks]
            await settle(opened)
            counts = await check_truth(edge, opened, answers, "m")
            assert counts.get("ack", 0) >= 1 and counts.get("overloaded", 0) >= 1, counts
            assert "upstream_unavailable" not in counts, counts
            backlog = [a for a in answers if a.get("code") == "overloaded"]
            assert all("wait to be accepted here" in a["message"] for a in backlog)
    finally:
        edge.stop()
        agent.process.send_signal(signal.SIGCONT)
        agent.stop()


async def test_past_the_edges_bound_on_one_link_messages_are_refused_at_once(
    agent: ServiceProcess,
) -> None:
    """An edge with room for 1 message per upstream link refuses the others at once,
    without sending them; the sent ones are acked once the service answers."""
    edge = start_edge(agent.address, "--upstream-max-in-flight", "1", "--upstream-channels", "1")
    try:
        async with sockets(edge, SESSIONS) as opened:
            with stopped(agent):
                tasks = await send_all(opened, "m")
                await until_in_flight(edge, 1)
                pending = set(tasks)
                while len(pending) > 1:  # the edge answers all but one on its own
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            answers = [await t for t in tasks]
            await settle(opened)
            counts = await check_truth(edge, opened, answers, "m")
            assert counts == {"ack": 1, "overloaded": SESSIONS - 1}, counts
    finally:
        edge.stop()


async def test_the_edges_bound_is_per_replica_whatever_its_channels_carry(
    agent: ServiceProcess,
) -> None:
    """The bound holds for the replica over all its channels: with room for half the
    messages, exactly half are sent and acked, however the sessions hash over the two
    channels (one bound per channel let each carry up to the bound, and refused at
    once on a channel that drew more than its share while the other had room)."""
    bound = SESSIONS // 2
    edge = start_edge(
        agent.address, "--upstream-max-in-flight", str(bound), "--upstream-channels", "2"
    )
    try:
        async with sockets(edge, SESSIONS) as opened:
            with stopped(agent):
                tasks = await send_all(opened, "m")
                await until_in_flight(edge, bound)
                pending = set(tasks)
                while len(pending) > bound:  # the edge answers the rest on its own
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                assert await in_flight_at_edge(edge) == bound
            answers = [await t for t in tasks]
            await settle(opened)
            counts = await check_truth(edge, opened, answers, "m")
            assert counts == {"ack": bound, "overloaded": SESSIONS - bound}, counts
            refused = [a for a in answers if a.get("code") == "overloaded"]
            assert all("wait for this agent replica at the edge" in a["message"] for a in refused)
    finally:
        edge.stop()


def test_the_edge_refuses_an_acceptance_window_longer_than_its_command_timeout() -> None:
    from ws_edge.config import EdgeSettings

    with pytest.raises(ValueError, match="accept_timeout_s"):
        EdgeSettings(command_timeout_s=2, accept_timeout_s=3)
    with pytest.raises(ValueError, match="margin"):  # no time left for the store's write
        EdgeSettings(command_timeout_s=10, accept_timeout_s=9.5)
    assert EdgeSettings(command_timeout_s=10, accept_timeout_s=9).accept_window_s == 9
    assert EdgeSettings(command_timeout_s=8).accept_window_s == 4
    assert EdgeSettings(command_timeout_s=1).accept_window_s == 0.5
