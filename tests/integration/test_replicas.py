"""Two agent replicas, real processes, on one PostgreSQL database and one Redis prefix.

Ownership without split brain: the replica that holds a session's lease runs its
runs; the other serves Chat joins from the shared log and routes commands to the
owner; a killed owner's sessions are taken over after the lease TTL; a paused
owner that lost its lease cannot append.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.support.chat import ChatClient
from tests.support.proxy import PausableProxy
from tests.support.replicas import Cluster, cluster
from tests.support.service import ServiceProcess
from tests.support.timing import scaled

TTL_S = 2.0
SLOW = ("--demo-tokens-per-s", "40", "--demo-reply-words", "400")
QUICK = "/fail"  # the demo model ends such a run at once, with a model error


def seqs(events: list[pb.SessionEvent]) -> list[int]:
    return [e.seq for e in events]


def shape(events: list[pb.SessionEvent]) -> list[tuple[int, str, bytes]]:
    """What two subscribers must agree on: seq, run and the event's bytes."""
    return [(e.seq, e.run_id, e.SerializeToString(deterministic=True)) for e in events]


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Cluster, ServiceProcess, ServiceProcess]]:
    async with cluster(tmp_path, *SLOW, ttl_s=TTL_S) as shared:
        a = shared.start("replica-a")
        b = shared.start("replica-b")
        try:
            yield shared, a, b
        finally:
            for replica in (a, b):
                if replica.process.poll() is None:
                    replica.process.send_signal(signal.SIGCONT)
                replica.stop()


async def owned_by_a(
    a_stub: agent_pb2_grpc.AgentServiceStub, text: str = "tell me a long story"
) -> tuple[str, ChatClient, pb.MessageAccepted]:
    """A session whose first message went through replica A (which so owns it)."""
    session = (await a_stub.CreateSession(pb.CreateSessionRequest(user_id="u"))).session_id
    chat = ChatClient(a_stub)
    await chat.join(session)
    reply = await chat.send(session, "m1", text)
    assert reply.status.code == 0, reply.status
    return session, chat, reply.accepted


async def test_both_replicas_stream_the_same_events_and_b_routes_sends_to_the_owner_a(two):
    shared, a, b = two
    async with (
        grpc.aio.insecure_channel(a.address) as a_channel,
        grpc.aio.insecure_channel(b.address) as b_channel,
    ):
        a_stub = agent_pb2_grpc.AgentServiceStub(a_channel)
        b_stub = agent_pb2_grpc.AgentServiceStub(b_channel)
        session, on_a, first = await owned_by_a(a_stub, QUICK)
        assert await shared.lease_owner(session) == "replica-a"
        on_b = ChatClient(b_stub)
        await on_b.join(session)
        await on_a.wait_completed(session, first.run_id)
        # a send through B is accepted once, runs on the owner A, and both see it
        sent = await on_b.send(session, "m2", "hello through b")
        assert sent.status.code == 0, sent.status
        again = await on_b.send(session, "m2", "hello through b")  # a retry, through B too
        assert again.accepted.duplicate and again.accepted.run_id == sent.accepted.run_id
        on_a_again = await on_a.send(session, "m2", "hello through b")  # and through A
        assert on_a_again.accepted.duplicate
        assert on_a_again.accepted.run_id == sent.accepted.run_id
        run_id = sent.accepted.run_id
        done_b = await on_b.wait_completed(session, run_id, timeout_s=30)
        done_a = await on_a.wait_completed(session, run_id, timeout_s=30)
        assert done_a.run_completed.finish_reason == pb.FINISH_REASON_STOP
        assert done_b.seq == done_a.seq
        await asyncio.sleep(0.2)
        assert shape(on_a.events[session]) == shape(on_b.events[session])
        assert seqs(on_b.events[session]) == list(range(1, done_b.seq + 1))
        assert f"run {run_id} ended" in a.text()
        assert f"run {run_id} ended" not in b.text()
        assert await shared.lease_owner(session) == "replica-a"
        history = await b_stub.ListMessages(pb.ListMessagesRequest(session_id=session))
        users = [m.message_id for m in history.messages if m.role == pb.ROLE_USER]
        assert users == ["m1", "m2"]
        await on_a.close()
        await on_b.close()


async def test_a_cancel_through_b_stops_the_run_on_a(two):
    shared, a, b = two
    async with (
        grpc.aio.insecure_channel(a.address) as a_channel,
        grpc.aio.insecure_channel(b.address) as b_channel,
    ):
        a_stub = agent_pb2_grpc.AgentServiceStub(a_channel)
        b_stub = agent_pb2_grpc.AgentServiceStub(b_channel)
        session, on_a, first = await owned_by_a(a_stub)
        assert await shared.lease_owner(session) == "replica-a"
        on_b = ChatClient(b_stub)
        await on_b.join(session)
        await on_b.wait_for(session, lambda e: e.HasField("response_delta"))
        reply = await on_b.command(cancel_run=pb.CancelRun(session_id=session, run_id=first.run_id))
        assert reply.status.code == 0 and reply.cancelled.cancelled
        done = await on_b.wait_completed(session, first.run_id)
        assert done.run_completed.finish_reason == pb.FINISH_REASON_CANCELLED
        assert (await on_a.wait_completed(session, first.run_id)).seq == done.seq
        # the unary Cancel through B reaches A as well (nothing is running any more)
        response = await b_stub.Cancel(pb.CancelRequest(session_id=session, run_id=first.run_id))
        assert not response.cancelled
        assert f"run {first.run_id} ended: cancelled" in a.text()
        await on_a.close()
        await on_b.close()


async def test_kill_9_of_the_owner_mid_run_the_survivor_ends_it_and_runs_the_queue(two):
    shared, a, b = two
    async with (
        grpc.aio.insecure_channel(a.address) as a_channel,
        grpc.aio.insecure_channel(b.address) as b_channel,
    ):
        a_stub = agent_pb2_grpc.AgentServiceStub(a_channel)
        b_stub = agent_pb2_grpc.AgentServiceStub(b_channel)
        session, on_a, first = await owned_by_a(a_stub)
        queued = (await on_a.send(session, "m2", QUICK)).accepted
        assert queued.queued
        on_b = ChatClient(b_stub)
        await on_b.join(session)
        await on_b.wait_for(session, lambda e: e.HasField("response_delta") and e.seq >= 10)
        a.kill()
        await on_a.close()
        # the run A started ends interrupted, once, after the lease TTL ...
        done = await on_b.wait_completed(session, first.run_id, timeout_s=TTL_S + 20)
        assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
        # ... and the message A had queued goes on, on B (the run starts: the model fails it)
        after = await on_b.wait_completed(session, queued.run_id, timeout_s=30)
        assert after.run_completed.finish_reason == pb.FINISH_REASON_ERROR
        assert f"run {queued.run_id} ended: error" in b.text()
        assert await shared.lease_owner(session) == "replica-b"
        nxt = await on_b.send(session, "m3", QUICK)
        assert nxt.status.code == 0, nxt.status
        last = await on_b.wait_completed(session, nxt.accepted.run_id, timeout_s=30)
        assert f"run {nxt.accepted.run_id} ended" in b.text()
        events = on_b.events[session]
        assert seqs(events) == list(range(1, last.seq + 1))
        completions = [e.run_id for e in events if e.HasField("run_completed")]
        assert completions == [first.run_id, queued.run_id, nxt.accepted.run_id]
        history = await b_stub.ListMessages(pb.ListMessagesRequest(session_id=session))
        users = [(m.message_id, m.status) for m in history.messages if m.role == pb.ROLE_USER]
        assert users == [
            ("m1", pb.MESSAGE_STATUS_COMPLETE),
            ("m2", pb.MESSAGE_STATUS_COMPLETE),
            ("m3", pb.MESSAGE_STATUS_COMPLETE),
        ]
        interrupted = [m for m in history.messages if m.run_id == first.run_id and m.role == 2]
        assert [m.status for m in interrupted] == [pb.MESSAGE_STATUS_INTERRUPTED]
        assert interrupted[0].text == done.run_completed.text
        await on_b.close()


async def test_a_paused_owner_cannot_append_after_it_lost_its_lease(two):
    shared, a, b = two
    async with (
        grpc.aio.insecure_channel(a.address) as a_channel,
        grpc.aio.insecure_channel(b.address) as b_channel,
    ):
        a_stub = agent_pb2_grpc.AgentServiceStub(a_channel)
        b_stub = agent_pb2_grpc.AgentServiceStub(b_channel)
        session, on_a, first = await owned_by_a(a_stub)
        on_b = ChatClient(b_stub)
        await on_b.join(session)
        await on_b.wait_for(session, lambda e: e.HasField("response_delta") and e.seq >= 10)
        a.process.send_signal(signal.SIGSTOP)
        done = await on_b.wait_completed(session, first.run_id, timeout_s=TTL_S + 20)
        assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
        assert await shared.lease_owner(session) == "replica-b"
        nxt = await on_b.send(session, "m2", QUICK)
        assert nxt.status.code == 0, nxt.status
        a.process.send_signal(signal.SIGCONT)  # A wakes up mid-reply, still "streaming"
        last = await on_b.wait_completed(session, nxt.accepted.run_id, timeout_s=30)
        # give A time to try: its next appends carry the old token and are fenced
        deadline = asyncio.get_running_loop().time() + scaled(20)
        while "lost the lease" not in a.text() and "refused" not in a.text():
            assert asyncio.get_running_loop().time() < deadline, a.text()[-3000:]
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stream = await shared.stream_seqs(session)
        assert stream == list(range(1, len(stream) + 1))  # no forked or duplicated seq
        fresh = ChatClient(b_stub)
        await fresh.join(session)
        await fresh.wait_completed(session, nxt.accepted.run_id)
        replay = fresh.events[session]
        assert seqs(replay) == stream
        assert [e.run_id for e in replay if e.HasField("run_completed")] == [
            first.run_id,
            nxt.accepted.run_id,
        ]
        # nothing of A's run after B ended it
        assert not [e for e in replay if e.seq > done.seq and e.run_id == first.run_id]
        assert last.seq <= stream[-1]
        await fresh.close()
        await on_b.close()
        await on_a.close()


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
async def test_health_is_not_serving_and_commands_fail_fast_during_an_outage(
    tmp_path: Path, backend: str
):
    """A replica whose Redis (or PostgreSQL) stops answering (a proxy in front of it cuts
    every connection and refuses new ones) says NOT_SERVING and refuses commands with
    UNAVAILABLE, within bounds; afterwards it serves again, by seq, with nothing lost."""
    async with cluster(tmp_path, *SLOW, ttl_s=TTL_S) as shared:
        if backend == "redis":
            proxy = await PausableProxy.start(shared.redis_url)
            shared.redis_url = f"redis://127.0.0.1:{proxy.port}/0"
        else:
            proxy = await PausableProxy.start(shared.store_url)
            host_part, database = shared.store_url.rsplit("/", 1)
            shared.store_url = f"{host_part.rsplit(':', 1)[0]}:{proxy.port}/{database}"
        a = await asyncio.to_thread(shared.start, "replica-a")  # the proxy runs on this loop
        try:
            async with grpc.aio.insecure_channel(a.address) as channel:
                stub = agent_pb2_grpc.AgentServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                session = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
                chat = ChatClient(stub)
                await chat.join(session)
                ok = await chat.send(session, "m1", QUICK)
                assert ok.status.code == 0, ok.status
                await chat.wait_completed(session, ok.accepted.run_id)
                await proxy.cut()
                status = await _wait_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                started = asyncio.get_running_loop().time()
                failed = await chat.send(session, "m2", "during the outage")
                assert failed.status.code == grpc.StatusCode.UNAVAILABLE.value[0], failed.status
                assert asyncio.get_running_loop().time() - started < scaled(30)
                await proxy.restore()
                await _wait_health(health, health_pb2.HealthCheckResponse.SERVING)
                # the same id again: accepted once, and the log goes on by seq
                retry = await chat.send(session, "m2", "during the outage")
                assert retry.status.code == 0, retry.status
                done = await chat.wait_completed(session, retry.accepted.run_id, timeout_s=30)
                assert seqs(chat.events[session]) == list(range(1, done.seq + 1))
                history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
                users = [m.message_id for m in history.messages if m.role == pb.ROLE_USER]
                assert users == ["m1", "m2"]
                await chat.close()
        finally:
            await proxy.restore()
            await asyncio.to_thread(a.stop)
            await proxy.close()


async def _wait_health(health: health_pb2_grpc.HealthStub, want: int) -> int:
    deadline = asyncio.get_running_loop().time() + scaled(30)
    while True:
        response = await health.Check(health_pb2.HealthCheckRequest(service=""))
        if response.status == want or asyncio.get_running_loop().time() > deadline:
            return int(response.status)
        await asyncio.sleep(0.2)
