"""Faults: kill -9 mid-run, restart, graceful SIGTERM, and stock gRPC tooling."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.support.backends import postgres_database, redis_prefix
from tests.support.chat import ChatClient, assembled_text, joined_session
from tests.support.service import start_agent_service
from tests.support.timing import scaled

SLOW = ("--demo-tokens-per-s", "40", "--demo-reply-words", "400")


def seqs(events: list[pb.SessionEvent]) -> list[int]:
    return [e.seq for e in events]


@pytest.fixture(params=["sqlite", "sqlite+redis", "postgresql+redis"])
async def log_args(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, ...]]:
    """The backends the service runs on: the default SQLite file for both, the SQLite store
    with the log on Redis Streams, or the scale-out pair (PostgreSQL and Redis)."""
    if request.param == "sqlite":
        yield ()
        return
    async with redis_prefix() as (url, prefix):
        # the same replica restarted: it takes its sessions' leases back at once (another
        # replica id would wait for the lease TTL, see test_replicas.py)
        log = ("--log-url", f"{url}?prefix={prefix}", "--replica-id", "restarted")
        if request.param == "sqlite+redis":
            yield log
            return
        async with postgres_database() as store_url:
            yield (*log, "--store-url", store_url)


async def test_kill_9_mid_run_then_restart_continues_the_log_with_no_gap(
    tmp_path: Path, log_args: tuple[str, ...]
):
    first = start_agent_service(tmp_path, *SLOW, *log_args)
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session, chat = await joined_session(stub, "u")
        run_id = (await chat.send(session, "m1", "tell me a long story")).accepted.run_id
        await chat.wait_for(session, lambda e: e.HasField("response_delta") and e.seq >= 20)
        first.kill()
        await asyncio.sleep(0.2)  # whatever was in flight has arrived or is lost
        seen = list(chat.events[session])
        await chat.close()
    seen_text = assembled_text(seen, run_id)
    last_seq = seen[-1].seq
    assert seqs(seen) == list(range(1, last_seq + 1))

    second = start_agent_service(tmp_path, *SLOW, *log_args, store_path=first.store_path)
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            chat = ChatClient(stub)
            joined = await chat.join(session, after_seq=last_seq)
            done = await chat.wait_completed(session, run_id)
            events = chat.events[session]
            assert not any(e.HasField("replay_gap") for e in events)
            assert seqs(events)[0] == last_seq + 1  # dense: no jump, no repeat
            assert joined.joined.head_seq == done.seq
            assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
            # exactly what the client assembles: what it saw (all of it durable first), then
            # any delta that was durable but not yet delivered when the process died
            assert done.run_completed.text == seen_text + assembled_text(events, run_id)

            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            user, assistant = history.messages[0], history.messages[-1]
            assert (user.message_id, user.text) == ("m1", "tell me a long story")
            assert assistant.status == pb.MESSAGE_STATUS_INTERRUPTED
            assert assistant.text == done.run_completed.text
            # a retry of the old message id is still the same message
            retry = await chat.send(session, "m1", "tell me a long story")
            assert retry.accepted.duplicate and retry.accepted.run_id == run_id
            fresh = await chat.send(session, "m2", "/fail")
            assert fresh.accepted.seq == done.seq + 1
            await chat.wait_completed(session, fresh.accepted.run_id)
            assert seqs(chat.events[session]) == list(
                range(last_seq + 1, chat.events[session][-1].seq + 1)
            )
            await chat.close()
    finally:
        second.stop()


async def test_a_run_killed_before_its_first_word_is_stored_shows_as_interrupted(
    tmp_path: Path,
):
    first = start_agent_service(tmp_path, "--demo-tokens-per-s", "0.5")
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session, chat = await joined_session(stub)
        run_id = (await chat.send(session, "m1", "slow start")).accepted.run_id
        queued = (await chat.send(session, "m2", "and then this")).accepted
        assert queued.queued
        await chat.wait_for(session, lambda e: e.HasField("run_started"))
        first.kill()
        await chat.close()
    second = start_agent_service(tmp_path, store_path=first.store_path)
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            assert [(m.message_id, m.role, m.status) for m in history.messages] == [
                ("m1", pb.ROLE_USER, pb.MESSAGE_STATUS_COMPLETE),
                (f"{run_id}.0", pb.ROLE_ASSISTANT, pb.MESSAGE_STATUS_INTERRUPTED),
                # a queued message that will never run says so
                ("m2", pb.ROLE_USER, pb.MESSAGE_STATUS_INTERRUPTED),
            ]
            chat = ChatClient(stub)
            await chat.join(session)
            done = await chat.wait_completed(session, run_id)
            assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
            dropped = await chat.wait_completed(session, queued.run_id)
            assert dropped.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
            # the next run's model context skips the empty reply and works
            reply = await chat.send(session, "m3", "hello again")
            after = await chat.wait_completed(session, reply.accepted.run_id)
            assert after.run_completed.finish_reason == pb.FINISH_REASON_STOP
            await chat.close()
    finally:
        second.stop()


async def test_kill_9_during_a_tool_call_gives_that_call_exactly_one_final_event(
    tmp_path: Path,
):
    first = start_agent_service(tmp_path)
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session, chat = await joined_session(stub)
        run_id = (await chat.send(session, "m1", "long task 30s")).accepted.run_id
        started = await chat.wait_for(
            session, lambda e: e.tool_execution.WhichOneof("update") == "progress"
        )
        call_id = started.tool_execution.call_id
        first.kill()
        await chat.close()
    second = start_agent_service(tmp_path, store_path=first.store_path)
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            chat = ChatClient(stub)
            await chat.join(session)  # the whole log, live and replayed alike
            await chat.wait_completed(session, run_id)
            finals = [
                e.tool_execution
                for e in chat.events[session]
                if e.tool_execution.call_id == call_id
                and e.tool_execution.WhichOneof("update") in {"completed", "failed", "cancelled"}
            ]
            assert [f.WhichOneof("update") for f in finals] == ["cancelled"]
            assert finals[0].cancelled.reason == "interrupted"
            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            tool = [m for m in history.messages if m.role == pb.ROLE_TOOL]
            assert [(m.call_id, m.status) for m in tool] == [
                (call_id, pb.MESSAGE_STATUS_INTERRUPTED)
            ]
            reply = await chat.send(session, "m2", "are you back?")
            after = await chat.wait_completed(session, reply.accepted.run_id)
            assert after.run_completed.finish_reason == pb.FINISH_REASON_STOP
            await chat.close()
    finally:
        second.stop()


def completions_in_log(store_path: Path) -> list[str]:
    """The run ids of every RunCompleted in the durable log, read from the file itself."""
    with sqlite3.connect(store_path) as db:
        bodies = db.execute("SELECT body FROM events ORDER BY session_id, seq").fetchall()
    events = [pb.SessionEvent.FromString(body) for (body,) in bodies]
    return [e.run_id for e in events if e.HasField("run_completed")]


def ended_in_store(store_path: Path) -> int:
    """How many runs the store marks ended (recovery marks each last, after its log)."""
    with sqlite3.connect(store_path) as db:
        return db.execute("SELECT count(*) FROM runs WHERE status = 'ended'").fetchone()[0]


async def test_kill_9_during_recovery_again_and_again_still_ends_each_run_once(tmp_path: Path):
    # replies far longer than setting up takes, however slow the machine: none ends by itself
    first = start_agent_service(tmp_path, "--demo-tokens-per-s", "20", "--demo-reply-words", "9000")
    runs: list[str] = []
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        chats = []
        for index in range(120):  # enough runs in flight that recovery takes a while
            session, chat = await joined_session(stub)
            runs.append((await chat.send(session, f"m{index}", "a long story")).accepted.run_id)
            chats.append((session, chat))
        for session, chat in chats:
            await chat.wait_for(session, lambda e: e.HasField("response_delta"))
        first.kill()
        for _, chat in chats:
            await chat.close()
    assert completions_in_log(first.store_path) == []
    progress = []
    for target in (1, len(runs) // 3, 2 * len(runs) // 3):  # kill mid-recovery, 3 times
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent_service",
            *first.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = asyncio.get_running_loop().time() + scaled(20)
        # a cheap count, so the kill lands within milliseconds of the target: recovery ends
        # a run in a few, and reading the whole log to count could outlast all 120
        while ended_in_store(first.store_path) < target:
            assert asyncio.get_running_loop().time() < deadline, "recovery did not start"
            await asyncio.sleep(0.002)
        process.kill()
        await process.wait()
        progress.append(len(completions_in_log(first.store_path)))
    print(f"RunCompleted in the log after each killed recovery: {progress} of {len(runs)}")
    assert progress[0] < len(runs)  # the first kill did land mid-recovery
    last = start_agent_service(tmp_path, *first.args[4:], store_path=first.store_path)
    try:
        ended = completions_in_log(first.store_path)
        assert sorted(ended) == sorted(runs)  # every run, exactly once
        async with grpc.aio.insecure_channel(last.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = chats[0]
            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            assert history.messages[-1].status == pb.MESSAGE_STATUS_INTERRUPTED
    finally:
        last.stop()


async def test_sigterm_lets_short_runs_finish_and_interrupts_long_ones(tmp_path: Path):
    service = start_agent_service(tmp_path, *SLOW, "--shutdown-grace-s", "0.5")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session, chat = await joined_session(stub)
        run_id = (await chat.send(session, "m1", "a story that takes ten seconds")).accepted.run_id
        queued = (await chat.send(session, "m2", "and then another")).accepted.run_id
        await chat.wait_for(session, lambda e: e.HasField("response_delta"))
        service.process.send_signal(signal.SIGTERM)
        done = await chat.wait_completed(session, run_id)
        dropped = await chat.wait_completed(session, queued)
        assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
        assert done.run_completed.text == assembled_text(chat.events[session], run_id)
        assert dropped.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
        last_seq = chat.events[session][-1].seq
        await chat.close()
    assert service.process.wait(timeout=scaled(15)) == 0

    again = start_agent_service(tmp_path, *SLOW, store_path=service.store_path)
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            chat = ChatClient(stub)
            joined = await chat.join(session, after_seq=last_seq)
            assert joined.joined.head_seq == last_seq  # a clean stop leaves nothing to add
            reply = await chat.send(session, "m3", "/fail")
            assert reply.accepted.seq == last_seq + 1
            await chat.wait_completed(session, reply.accepted.run_id)
            assert not any(e.HasField("replay_gap") for e in chat.events[session])
            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            statuses = {m.message_id: m.status for m in history.messages}
            assert statuses["m2"] == pb.MESSAGE_STATUS_INTERRUPTED
            await chat.close()
    finally:
        again.stop()


def test_grpcurl_lists_the_service_and_checks_health(tmp_path: Path):
    beside_python = Path(sys.executable).with_name("grpcurl")
    grpcurl = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    if grpcurl is None:
        pytest.fail("grpcurl is not installed: it comes with the dev extras")
    service = start_agent_service(tmp_path)
    try:
        listed = subprocess.run(
            [grpcurl, "-plaintext", service.address, "list"],
            capture_output=True,
            text=True,
            timeout=scaled(30),
            check=True,
        )
        assert "agent_relay.v1.AgentService" in listed.stdout.split()
        assert "grpc.health.v1.Health" in listed.stdout.split()
        health = subprocess.run(
            [grpcurl, "-plaintext", service.address, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            timeout=scaled(30),
            check=True,
        )
        assert json.loads(health.stdout)["status"] == "SERVING"
        tools = subprocess.run(
            [grpcurl, "-plaintext", service.address, "agent_relay.v1.AgentService/ListTools"],
            capture_output=True,
            text=True,
            timeout=scaled(30),
            check=True,
        )
        names = {t["name"] for t in json.loads(tools.stdout)["tools"]}
        assert {"calculator", "python", "search_files", "read_file", "long_task"} <= names
    finally:
        service.stop()


async def test_an_idle_session_is_unloaded_and_a_later_resume_continues_with_no_gap(
    tmp_path: Path,
):
    service = start_agent_service(tmp_path, "--session-idle-unload-s", "0.3")
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = await joined_session(stub)
            first = (await chat.send(session, "m1", "hello")).accepted.run_id
            done = await chat.wait_completed(session, first)
            await chat.close()  # no subscriber, no run: the session may go
            await asyncio.sleep(scaled(1.5))

            later = ChatClient(stub)
            joined = await later.join(session, after_seq=done.seq - 3)
            assert joined.joined.head_seq == done.seq  # the same log, reloaded
            reply = await later.send(session, "m2", "still here?")
            await later.wait_completed(session, reply.accepted.run_id)
            events = later.events[session]
            assert not any(e.HasField("replay_gap") for e in events)
            assert seqs(events) == list(range(done.seq - 2, events[-1].seq + 1))
            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            assert [m.message_id for m in history.messages if m.role == pb.ROLE_USER] == [
                "m1",
                "m2",
            ]
            retry = await later.send(session, "m1", "hello")  # ids are still remembered
            assert retry.accepted.duplicate and retry.accepted.run_id == first
            await later.close()
    finally:
        service.stop()


async def test_a_resume_older_than_the_retained_events_is_told_of_the_gap(tmp_path: Path):
    # one event per word (no merging): the reply overruns the 5 retained events
    service = start_agent_service(tmp_path, "--retention-events", "5", "--merge-delta-chars", "0")
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = await joined_session(stub)
            run = (await chat.send(session, "m1", "hello")).accepted.run_id
            done = await chat.wait_completed(session, run)
            await chat.close()
            later = ChatClient(stub)
            await later.join(session, after_seq=1)
            await later.wait_for(session, lambda e: e.seq == done.seq)
            events = later.events[session]
            assert events[0].replay_gap == pb.ReplayGap(after_seq=1, first_seq=done.seq - 4)
            assert seqs(events[1:]) == list(range(done.seq - 4, done.seq + 1))
            await later.close()
    finally:
        service.stop()
