"""Faults: kill -9 mid-run, restart, graceful SIGTERM, and stock gRPC tooling."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.support.chat import ChatClient, assembled_text, joined_session
from tests.support.service import start_agent_service
from tests.support.timing import scaled

SLOW = (
    "--demo-tokens-per-s",
    "40",
    "--demo-reply-words",
    "400",
    "--partial-flush-interval-s",
    "0.1",
)


async def test_kill_9_mid_run_then_restart_keeps_history_and_marks_the_run_interrupted(
    tmp_path: Path,
):
    first = start_agent_service(tmp_path, *SLOW)
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session, chat = await joined_session(stub, "u")
        run_id = (await chat.send(session, "m1", "tell me a long story")).accepted.run_id
        await chat.wait_for(session, lambda e: e.HasField("response_delta") and e.seq >= 20)
        await asyncio.sleep(0.3)  # past a partial flush
        seen_text = assembled_text(chat.events[session], run_id)
        last_seq = chat.events[session][-1].seq
        first.kill()
        await chat.close()

    second = start_agent_service(tmp_path, *SLOW, store_path=first.store_path)
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            user, assistant = history.messages[0], history.messages[-1]
            assert (user.message_id, user.text) == ("m1", "tell me a long story")
            assert assistant.role == pb.ROLE_ASSISTANT
            assert assistant.status == pb.MESSAGE_STATUS_INTERRUPTED
            assert len(assistant.text.split()) >= 10  # the partial output is kept
            assert seen_text.startswith(assistant.text)

            # a resume from before the restart is told about the gap, never skipped ahead
            chat = ChatClient(stub)
            joined = await chat.join(session, after_seq=last_seq)
            assert joined.joined.head_seq > last_seq
            # a retry of the old message id is still the same message
            retry = await chat.send(session, "m1", "tell me a long story")
            assert retry.accepted.duplicate and retry.accepted.run_id == run_id
            fresh = await chat.send(session, "m2", "/fail")
            await chat.wait_completed(session, fresh.accepted.run_id)
            events = chat.events[session]
            assert events[0].HasField("replay_gap")
            assert events[0].replay_gap.after_seq == last_seq
            assert all(e.seq > last_seq for e in events[1:]), [  # seq never repeats
                (e.seq, e.WhichOneof("kind")) for e in events
            ]
            # the new log opens with the interrupted run's completion, text kept
            assert events[1].run_id == run_id
            assert events[1].run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
            assert events[1].run_completed.text == assistant.text
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
        await chat.wait_for(session, lambda e: e.HasField("run_started"))
        first.kill()
        await chat.close()
    second = start_agent_service(tmp_path, store_path=first.store_path)
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
            assert [(m.role, m.status) for m in history.messages] == [
                (pb.ROLE_USER, pb.MESSAGE_STATUS_COMPLETE),
                (pb.ROLE_ASSISTANT, pb.MESSAGE_STATUS_INTERRUPTED),
            ]
            chat = ChatClient(stub)
            await chat.join(session, after_seq=history.as_of_seq - 1)
            done = await chat.wait_completed(session, run_id)
            assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
            # the next run's model context skips the empty reply and works
            reply = await chat.send(session, "m2", "hello again")
            after = await chat.wait_completed(session, reply.accepted.run_id)
            assert after.run_completed.finish_reason == pb.FINISH_REASON_STOP
            await chat.close()
    finally:
        second.stop()


async def test_sigterm_lets_short_runs_finish_and_interrupts_long_ones(tmp_path: Path):
    service = start_agent_service(tmp_path, *SLOW, "--shutdown-grace-s", "0.5")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session, chat = await joined_session(stub)
        run_id = (await chat.send(session, "m1", "a story that takes ten seconds")).accepted.run_id
        queued = (await chat.send(session, "m2", "and then another")).accepted.run_id
        await chat.wait_for(session, lambda e: e.HasField("response_delta"))
        service.process.send_signal(__import__("signal").SIGTERM)
        done = await chat.wait_completed(session, run_id)
        dropped = await chat.wait_completed(session, queued)
        assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
        assert done.run_completed.text == assembled_text(chat.events[session], run_id)
        assert dropped.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
        await chat.close()
    assert service.process.wait(timeout=scaled(15)) == 0


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


async def test_an_idle_session_is_unloaded_and_a_later_resume_is_told_of_the_gap(
    tmp_path: Path,
):
    service = start_agent_service(
        tmp_path, "--session-idle-unload-s", "0.3", "--partial-flush-interval-s", "0.1"
    )
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session, chat = await joined_session(stub)
            first = (await chat.send(session, "m1", "hello")).accepted.run_id
            done = await chat.wait_completed(session, first)
            await chat.close()  # no subscriber, no run: the session may go
            await asyncio.sleep(scaled(1.5))

            later = ChatClient(stub)
            joined = await later.join(session, after_seq=done.seq)
            assert joined.joined.head_seq > done.seq  # a fresh log, past the old numbers
            reply = await later.send(session, "m2", "still here?")
            await later.wait_completed(session, reply.accepted.run_id)
            events = later.events[session]
            assert events[0].replay_gap.after_seq == done.seq
            assert all(e.seq > done.seq for e in events[1:])
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
