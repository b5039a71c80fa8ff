"""The WebSocket client against the real edge and agent service: streaming, reconnects in the
middle of a reply (a cut TCP connection, a silent one, a restarted edge), the outbox, gaps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_relay_client.connection import State
from agent_relay_client.conversation import Conversation
from agent_relay_client.events import ResponseDelta, RunCompleted, ToolExecution
from agent_relay_client.resilient import (
    ClientError,
    EventApplied,
    HistoryLoaded,
    MessageRejected,
    MessageSent,
    StateChanged,
    Update,
)
from agent_relay_client.wire import PROTOCOLS
from agent_relay_client.ws import EdgeClient
from tests.clients_python.tcp_proxy import CuttableProxy
from tests.support.edge import EdgeProcess, make_token, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled


class Recorder:
    """Every update of a client, and the seqs of applied events per session."""

    def __init__(self, client: EdgeClient) -> None:
        self.client = client
        self.updates: list[Update] = []
        self.seqs: dict[str, list[int]] = {}
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for update in self.client.updates():
            self.updates.append(update)
            if isinstance(update, EventApplied):
                event = update.event
                first = event.first_seq if isinstance(event, ResponseDelta) else event.seq
                self.seqs.setdefault(event.session_id, []).extend(range(first, event.seq + 1))
            self._changed.set()

    async def until(self, predicate, timeout_s: float = 20.0) -> Update:
        async def scan() -> Update:
            seen = 0
            while True:
                for update in self.updates[seen:]:
                    if predicate(update):
                        return update
                seen = len(self.updates)
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), scaled(timeout_s))

    async def completed(self, session_id: str, timeout_s: float = 20.0) -> RunCompleted:
        update = await self.until(
            lambda u: (
                isinstance(u, EventApplied)
                and isinstance(u.event, RunCompleted)
                and u.event.session_id == session_id
            ),
            timeout_s,
        )
        assert isinstance(update, EventApplied) and isinstance(update.event, RunCompleted)
        return update.event

    def deltas(self, session_id: str) -> int:
        return sum(
            isinstance(u, EventApplied)
            and isinstance(u.event, ResponseDelta)
            and u.event.session_id == session_id
            for u in self.updates
        )

    def states(self) -> list[State]:
        return [u.state for u in self.updates if isinstance(u, StateChanged)]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def eventually(predicate, timeout_s: float = 10.0) -> None:
    """Poll a condition that no update announces."""

    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - no event announces these conditions
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), scaled(timeout_s))


def assert_exact(seqs: list[int], conv: Conversation, done: RunCompleted) -> None:
    """Every seq once, in order, and the assembled reply equal to the service's own text."""
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    item = conv.assistant_for_run(done.run_id)
    assert item is not None and item.text == done.text and done.text
    assert conv.corrected_runs == []


@pytest.fixture
async def proxy(edge: EdgeProcess) -> AsyncIterator[tuple[CuttableProxy, str]]:
    p = CuttableProxy(edge.url.removeprefix("http://"))
    address = await p.start()
    yield p, f"http://{address}"
    await p.close()


@pytest.mark.parametrize("wire", ["json", "proto"])
async def test_a_reply_streams_and_assembles(edge: EdgeProcess, wire) -> None:
    async with EdgeClient(edge.url, wire=wire) as client:
        rec = Recorder(client)
        session = await client.create_session(title="ws")
        conv = await client.follow(session)
        await eventually(lambda: client.link is not None)  # follow does not wait for the socket
        assert client.link is not None
        assert client.link.welcome.protocol == PROTOCOLS[wire]
        await client.send(session, "hello through the edge")
        done = await rec.completed(session)
        assert done.finish_reason == "stop"
        assert_exact(rec.seqs[session], conv, done)
        assert [(m.role, m.status) for m in conv.messages] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        history = await client.history(session)
        assert [m.text for m in history.messages] == [m.text for m in conv.messages]
        assert history.as_of_seq == conv.last_seq
        assert await client.link.ping() > 0  # type: ignore[union-attr]
        await rec.close()


@pytest.mark.parametrize("wire", ["json", "proto"])
async def test_a_cut_connection_mid_reply_resumes_exactly(
    proxy: tuple[CuttableProxy, str], wire
) -> None:
    cutter, url = proxy
    async with EdgeClient(url, wire=wire) as client:
        rec = Recorder(client)
        session = await client.create_session()
        conv = await client.follow(session)
        await client.send(session, "a long reply please")
        await rec.until(lambda u: rec.deltas(session) >= 10)
        assert cutter.cut() > 0
        done = await rec.completed(session)
        assert_exact(rec.seqs[session], conv, done)
        assert cutter.connections >= 2
        assert rec.states().count(State.RECONNECTING) >= 1
        assert rec.states()[-1] is State.CONNECTED
        await rec.close()


async def test_a_silent_connection_is_detected_by_the_app_heartbeat(
    proxy: tuple[CuttableProxy, str],
) -> None:
    cutter, url = proxy
    async with EdgeClient(url, heartbeat_s=0.3) as client:
        rec = Recorder(client)
        session = await client.create_session()
        conv = await client.follow(session)
        await client.send(session, "keep talking")
        await rec.until(lambda u: rec.deltas(session) >= 5)
        cutter.freeze()  # packets vanish; no FIN, no RST: only a heartbeat can tell
        down = await rec.until(lambda u: isinstance(u, StateChanged) and u.code == 4001)
        assert isinstance(down, StateChanged) and down.state is State.RECONNECTING
        done = await rec.completed(session)
        assert_exact(rec.seqs[session], conv, done)
        await rec.close()


async def test_an_edge_restart_mid_reply_loses_nothing(service, tmp_path: Path) -> None:
    first = start_edge(service.address)
    port = first.port
    second: EdgeProcess | None = None
    try:
        async with EdgeClient(first.url) as client:
            rec = Recorder(client)
            session = await client.create_session()
            conv = await client.follow(session)
            await client.send(session, "survive a restart")
            await rec.until(lambda u: rec.deltas(session) >= 10)
            await asyncio.to_thread(first.stop)  # drains: closes sockets with 1012
            second = await asyncio.to_thread(
                start_edge, service.address, listen=f"127.0.0.1:{port}"
            )
            done = await rec.completed(session, timeout_s=30)
            assert_exact(rec.seqs[session], conv, done)
            assert any(isinstance(u, StateChanged) and u.code == 1012 for u in rec.updates)
            await rec.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_messages_typed_while_the_edge_is_down_are_sent_once_it_is_back(
    service, tmp_path: Path
) -> None:
    first = start_edge(service.address)
    port = first.port
    second: EdgeProcess | None = None
    outbox = tmp_path / "outbox.json"
    try:
        async with EdgeClient(first.url, outbox_path=outbox) as client:
            rec = Recorder(client)
            session = await client.create_session()
            conv = await client.follow(session)
            await eventually(lambda: client.core.is_joined(session))
            await asyncio.to_thread(first.stop)
            await rec.until(lambda u: isinstance(u, StateChanged) and u.state is State.RECONNECTING)
            message_id = await client.send(session, "sent while offline")
            assert conv.find(message_id).status == "sending"  # type: ignore[union-attr]
            assert message_id in outbox.read_text()  # on disk, survives a crash of the client
            second = await asyncio.to_thread(
                start_edge, service.address, listen=f"127.0.0.1:{port}"
            )
            done = await rec.completed(session, timeout_s=30)
            assert_exact(rec.seqs[session], conv, done)
            history = await client.history(session)
            users = [m for m in history.messages if m.role == "user"]
            assert [m.message_id for m in users] == [message_id]  # exactly once
            assert message_id not in outbox.read_text()
            await rec.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_a_refused_token_stops_without_retrying(edge: EdgeProcess) -> None:
    bad = make_token("u_x", ["s_x"], secret="another-secret-0123456789abcdef-0123456789")
    async with EdgeClient(edge.url, token=bad) as client:
        rec = Recorder(client)
        await rec.until(lambda u: isinstance(u, StateChanged) and u.state is State.DISCONNECTED)
        assert client.closed_by is not None and 4500 <= client.closed_by.code <= 4999
        assert State.RECONNECTING not in rec.states()
        await rec.close()


async def finish_run(rec: Recorder, client: EdgeClient, session: str, text: str) -> str:
    """Send `text`; wait until its reply is final in the conversation; return the run id.

    With a tiny log window a fast reply may outrun it and end in a gap: then there is no
    RunCompleted to see, only history that says the reply is complete.
    """
    message_id = await client.send(session, text)
    sent = await rec.until(
        lambda u: isinstance(u, MessageSent) and u.accepted.message_id == message_id
    )
    assert isinstance(sent, MessageSent)
    run_id = sent.accepted.run_id
    conv = client.conversation(session)

    def finished() -> bool:
        item = conv.assistant_for_run(run_id)
        return item is not None and item.status == "complete"

    await eventually(finished, timeout_s=20)
    return run_id


async def test_a_gap_reloads_history_and_resumes_after_it(tmp_path: Path) -> None:
    # One event per word (no merging), so the 60-word reply overruns the 10 retained events.
    small = start_agent_service(
        tmp_path,
        *("--demo-tokens-per-s", "0", "--demo-reply-words", "60", "--retention-events", "10"),
        *("--merge-delta-chars", "0"),
    )
    front = start_edge(small.address)
    other = start_edge(small.address)  # a fresh node: its room has none of the old events
    try:
        async with EdgeClient(front.url) as writer:
            rec = Recorder(writer)
            session = await writer.create_session()
            await writer.follow(session)
            first_run = await finish_run(rec, writer, session, "fill the log")
            first_text = writer.conversation(session).assistant_for_run(first_run).text  # type: ignore[union-attr]
            await rec.close()
            token = writer.token
        async with EdgeClient(other.url, token=token) as reader:
            rec = Recorder(reader)
            conv = await reader.follow(session, with_history=False)  # replay from seq 0: gone
            await rec.until(lambda u: isinstance(u, HistoryLoaded))
            assert [m.role for m in conv.messages] == ["user", "assistant"]
            assert conv.messages[1].text == first_text and len(first_text.split()) >= 60
            second_run = await finish_run(rec, reader, session, "and after the gap")
            final = await reader.history(session)
            assert [m.text for m in conv.messages] == [m.text for m in final.messages]
            assert conv.assistant_for_run(second_run).text == final.messages[-1].text  # type: ignore[union-attr]
            await rec.close()
    finally:
        front.stop()
        other.stop()
        small.stop()


async def test_a_long_chat_swaps_its_token_before_it_expires(service) -> None:
    short = start_edge(service.address, "--token-ttl-s", "3")
    cutter = CuttableProxy(short.url.removeprefix("http://"))
    url = f"http://{await cutter.start()}"
    try:
        fresh: list[str] = []
        async with EdgeClient(url, on_token=fresh.append, refresh_at_fraction=0.3) as client:
            rec = Recorder(client)
            session = await client.create_session()
            first_token = client.token
            conv = await client.follow(session)
            await eventually(lambda: len(fresh) >= 2, timeout_s=10)  # refreshed, and again
            await asyncio.sleep(1.5)  # the first token has expired by now
            assert fresh[-1] == client.token != first_token
            assert cutter.cut() > 0  # the reconnect must authenticate with a fresh token
            await client.send(session, "still welcome?")
            done = await rec.completed(session)
            assert_exact(rec.seqs[session], conv, done)
            assert client.closed_by is None and State.RECONNECTING in rec.states()
            await rec.close()
    finally:
        await cutter.close()
        short.stop()


async def test_cancel_a_tool_call_then_the_run_through_the_edge(edge: EdgeProcess) -> None:
    async with EdgeClient(edge.url) as client:
        rec = Recorder(client)
        session = await client.create_session()
        conv = await client.follow(session)
        await client.send(session, "long task 20s")
        started = await rec.until(
            lambda u: (
                isinstance(u, EventApplied)
                and isinstance(u.event, ToolExecution)
                and u.event.status == "progress"
            )
        )
        assert isinstance(started, EventApplied) and isinstance(started.event, ToolExecution)
        call_id = started.event.call_id
        assert await client.cancel_tool_call(session, call_id)
        await rec.until(lambda u: conv.tool_calls[call_id].status == "cancelled")
        assert conv.tool_calls[call_id].cancel_reason == "requested"
        first = await rec.completed(session)  # the run goes on without the tool and ends
        assert first.finish_reason == "stop"

        await client.send(session, "tell me everything")

        def second_run_deltas() -> int:
            return sum(
                isinstance(u, EventApplied)
                and isinstance(u.event, ResponseDelta)
                and u.event.run_id != first.run_id
                for u in rec.updates
            )

        await rec.until(lambda u: second_run_deltas() >= 3)
        assert await client.cancel_run(session)  # "": the active run
        second = await rec.until(
            lambda u: (
                isinstance(u, EventApplied)
                and isinstance(u.event, RunCompleted)
                and u.event.run_id != first.run_id
            )
        )
        assert isinstance(second, EventApplied) and isinstance(second.event, RunCompleted)
        assert second.event.finish_reason == "cancelled"
        assert conv.assistant_for_run(second.event.run_id).status == "cancelled"  # type: ignore[union-attr]
        assert_exact(rec.seqs[session], conv, second.event)
        await rec.close()


async def test_a_position_past_the_log_reloads_history_instead_of_unfollowing(
    edge: EdgeProcess, service: ServiceProcess
) -> None:
    """The edge now says `out_of_range` (as the gRPC client does), so the WebSocket client
    reacts as the gRPC one: it reloads history and joins after it (it used to get
    `invalid_field` and stop following the session)."""
    fresh = start_edge(service.address)  # no room yet: the join goes to the service
    try:
        async with EdgeClient(edge.url) as writer:
            wrec = Recorder(writer)
            session = await writer.create_session()
            await writer.follow(session)
            await writer.send(session, "remember this")
            done = await wrec.completed(session)
            head = writer.conversation(session).last_seq
            # The same on an edge whose room for the session is live (it used to accept the
            # position silently and then skip every event up to it).
            writer.rewind(session, head + 500)
            await wrec.until(lambda u: isinstance(u, HistoryLoaded))
            assert writer.conversation(session).last_seq == head
            assert not [u for u in wrec.updates if isinstance(u, ClientError)]
            await wrec.close()
            async with EdgeClient(fresh.url, token=writer.token) as reader:
                rec = Recorder(reader)
                reader.rewind(session, head + 500)  # a position the log never reached
                await rec.until(lambda u: isinstance(u, HistoryLoaded))
                assert not [u for u in rec.updates if isinstance(u, ClientError)]
                conv = reader.conversation(session)
                assert conv.last_seq == head
                assert [m.role for m in conv.messages] == ["user", "assistant"]
                assert conv.messages[-1].text == done.text
                await eventually(lambda: reader.core.is_joined(session))
                await rec.close()
    finally:
        fresh.stop()


async def test_a_busy_refusal_is_shown_once_and_never_resent(edge: EdgeProcess) -> None:
    """`busy` (busy_policy reject while a run is active) is an answer for the user: the edge
    no longer marks it retryable, and the client drops it from the outbox at once."""
    async with EdgeClient(edge.url) as client:
        rec = Recorder(client)
        session = await client.create_session()
        await client.follow(session)
        await client.send(session, "a long answer, please")
        await rec.until(
            lambda u: isinstance(u, EventApplied) and isinstance(u.event, ResponseDelta)
        )
        refused = await client.send(session, "me too", busy_policy="reject")
        update = await rec.until(lambda u: isinstance(u, MessageRejected))
        assert isinstance(update, MessageRejected) and update.message_id == refused
        assert update.error.code == "busy" and not update.error.retryable
        assert refused not in client.core.outbox
        await rec.completed(session)
        sent = [u for u in rec.updates if isinstance(u, MessageSent)]
        assert refused not in [u.accepted.message_id for u in sent]
        await rec.close()


async def test_a_message_refused_overloaded_is_sent_again_with_its_id_and_accepted_once(
    tmp_path: Path,
) -> None:
    """The service is stalled (SIGSTOP) until the message's acceptance deadline has passed:
    it refuses it `overloaded` before storing it, and the client, on its own, sends it
    again with the same id after retry_after_ms; it is then accepted, once."""
    import signal

    agent = start_agent_service(tmp_path, "--demo-tokens-per-s", "0", "--demo-reply-words", "3")
    edge = start_edge(agent.address, "--command-timeout-s", "60", "--accept-timeout-s", "1")
    try:
        async with EdgeClient(edge.url) as client:
            rec = Recorder(client)
            session = await client.create_session()
            await client.follow(session)
            await eventually(lambda: client.core.is_joined(session))
            agent.process.send_signal(signal.SIGSTOP)
            try:
                message_id = await client.send(session, "under load")
                entry = next(e for e in client.core.outbox.entries() if e.message_id == message_id)
                await eventually(lambda: entry.in_flight)
                await asyncio.sleep(1.5)  # past its deadline, 1 s after the edge sent it
            finally:
                agent.process.send_signal(signal.SIGCONT)
            # refused, kept, and waiting for its retry time: the refusal was retryable
            await eventually(lambda: entry.attempts == 1 and not entry.in_flight, 30)
            sent = await rec.until(lambda u: isinstance(u, MessageSent), 30)
            assert isinstance(sent, MessageSent)
            assert sent.accepted.message_id == message_id and not sent.accepted.duplicate
            assert entry.attempts == 2
            await rec.completed(session, timeout_s=30)
            history = await client.history(session)
            users = [m.message_id for m in history.messages if m.role == "user"]
            assert users == [message_id]  # exactly once
            await rec.close()
    finally:
        edge.stop()
        agent.process.send_signal(signal.SIGCONT)
        agent.stop()
