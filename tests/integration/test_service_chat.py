"""The agent service over real gRPC: streaming, replay, idempotency, cancel, policies."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.support.chat import ChatClient, assembled_text, joined_session, kinds


async def new_session(stub: agent_pb2_grpc.AgentServiceStub) -> str:
    return (await stub.CreateSession(pb.CreateSessionRequest(user_id="u1"))).session_id


async def test_reply_assembled_from_deltas_equals_the_completed_message_in_history(stub):
    session, chat = await joined_session(stub)
    reply = await chat.send(session, "m1", "hello agent")
    assert reply.status.code == 0
    run_id = reply.accepted.run_id
    done = await chat.wait_completed(session, run_id)
    text = assembled_text(chat.events[session], run_id)
    assert text.startswith("You said: “hello agent”.")
    assert done.run_completed.finish_reason == pb.FINISH_REASON_STOP
    assert done.run_completed.text == text
    history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
    assistant = [m for m in history.messages if m.role == pb.ROLE_ASSISTANT]
    assert [m.text for m in assistant] == [text]
    assert assistant[0].status == pb.MESSAGE_STATUS_COMPLETE
    assert history.as_of_seq == done.seq
    assert kinds(chat.events[session])[:2] == ["message_accepted", "run_started"]
    await chat.close()


async def test_history_mid_reply_holds_exactly_the_deltas_through_its_as_of_seq(stub):
    session, chat = await joined_session(stub)
    run_id = (await chat.send(session, "m1", "tell me a long story")).accepted.run_id
    await chat.wait_for(session, lambda e: e.HasField("response_delta"))
    mid_reply = 0
    while True:
        history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
        streaming = [m for m in history.messages if m.status == pb.MESSAGE_STATUS_STREAMING]
        if not streaming:
            break  # the run ended (its completion may be in the answer, or be next)
        mid_reply += 1
        await chat.wait_for(session, lambda e, at=history.as_of_seq: e.seq >= at)
        through = [e for e in chat.events[session] if e.seq <= history.as_of_seq]
        assert streaming[0].text == assembled_text(through, run_id)
    assert mid_reply >= 2, "the reply ended before history was read twice while it streamed"
    await chat.wait_completed(session, run_id)
    await chat.close()


async def test_events_are_numbered_without_gaps_and_batched(stub):
    session, chat = await joined_session(stub)
    await chat.send(session, "m1", "count for me")
    await chat.wait_completed(session)
    seqs = [e.seq for e in chat.events[session]]
    assert seqs == list(range(1, len(seqs) + 1))
    await chat.close()


async def test_two_subscribers_see_identical_ordered_events(stub):
    session = await new_session(stub)
    first, second = ChatClient(stub), ChatClient(stub)
    await first.join(session)
    await second.join(session)
    await first.send(session, "m1", "one")
    await first.send(session, "m2", "two")
    await first.wait_for(session, lambda e: e.HasField("run_completed") and e.seq > 10)
    run_two = (await first.send(session, "m2", "two")).accepted.run_id
    await first.wait_completed(session, run_two)
    await second.wait_completed(session, run_two)
    assert len(first.events[session]) > 10
    assert first.events[session] == second.events[session]
    await first.close()
    await second.close()


async def test_resume_from_seq_n_gets_exactly_the_events_after_n(stub):
    session = await new_session(stub)
    live = ChatClient(stub)
    await live.join(session)
    await live.send(session, "m1", "a reply to resume")
    await live.wait_completed(session)
    everything = live.events[session]
    for n in (0, 1, 5, len(everything) - 1, len(everything)):
        late = ChatClient(stub)
        joined = await late.join(session, after_seq=n)
        assert joined.joined.head_seq == len(everything)
        if n < len(everything):
            await late.wait_for(session, lambda e, last=everything[-1].seq: e.seq == last)
        else:
            await asyncio.sleep(0.2)
        assert late.events[session] == everything[n:]
        await late.close()
    await live.close()


async def test_a_retried_message_id_returns_the_original_acceptance_and_one_run(stub):
    session, chat = await joined_session(stub)
    first = await chat.send(session, "same-id", "only once please")
    retry = await chat.send(session, "same-id", "only once please")
    assert not first.accepted.duplicate
    assert retry.accepted.duplicate
    assert retry.accepted.run_id == first.accepted.run_id
    assert retry.accepted.seq == first.accepted.seq
    await chat.wait_completed(session)
    await asyncio.sleep(0.3)
    assert kinds(chat.events[session]).count("message_accepted") == 1
    assert kinds(chat.events[session]).count("run_started") == 1
    other = ChatClient(stub)  # another stream, e.g. after a reconnect
    again = await other.send(session, "same-id", "only once please")
    assert again.accepted.duplicate and again.accepted.run_id == first.accepted.run_id
    await chat.close()
    await other.close()


@pytest.mark.parametrize("how", ["stream", "unary"])
async def test_cancel_mid_stream_keeps_the_partial_text(stub, how):
    session, chat = await joined_session(stub)
    run_id = (await chat.send(session, "m1", "a long answer")).accepted.run_id
    await chat.wait_for(session, lambda e: e.HasField("response_delta") and e.seq >= 6)
    if how == "stream":
        reply = await chat.command(cancel_run=pb.CancelRun(session_id=session, run_id=run_id))
        assert reply.cancelled.cancelled
    else:
        response = await stub.Cancel(pb.CancelRequest(session_id=session, run_id=run_id))
        assert response.cancelled
    done = await chat.wait_completed(session, run_id)
    partial = assembled_text(chat.events[session], run_id)
    assert done.run_completed.finish_reason == pb.FINISH_REASON_CANCELLED
    assert done.run_completed.text == partial
    assert 0 < len(partial.split()) < 40
    history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
    assistant = [m for m in history.messages if m.role == pb.ROLE_ASSISTANT]
    assert assistant[-1].text == partial
    assert assistant[-1].status == pb.MESSAGE_STATUS_CANCELLED
    again = await stub.Cancel(pb.CancelRequest(session_id=session, run_id=run_id))
    assert not again.cancelled
    await chat.close()


async def test_queue_policy_runs_a_second_message_after_the_first(stub):
    session, chat = await joined_session(stub)
    first = (await chat.send(session, "m1", "first")).accepted
    second = (await chat.send(session, "m2", "second")).accepted
    assert not first.queued and second.queued
    await chat.wait_completed(session, second.run_id)
    order = [
        (e.run_id, e.WhichOneof("kind"))
        for e in chat.events[session]
        if e.HasField("run_started") or e.HasField("run_completed")
    ]
    assert order == [
        (first.run_id, "run_started"),
        (first.run_id, "run_completed"),
        (second.run_id, "run_started"),
        (second.run_id, "run_completed"),
    ]
    await chat.close()


async def test_reject_policy_refuses_while_busy(stub):
    session, chat = await joined_session(stub)
    await chat.send(session, "m1", "first")
    refused = await chat.send(session, "m2", "second", busy_policy=pb.BUSY_POLICY_REJECT)
    assert refused.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "busy" in refused.status.message
    await chat.wait_completed(session)
    history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
    assert [m.message_id for m in history.messages if m.role == pb.ROLE_USER] == ["m1"]
    await chat.close()


async def test_interrupt_policy_cancels_the_active_run_and_runs_the_new_one(stub):
    session, chat = await joined_session(stub)
    first = (await chat.send(session, "m1", "first")).accepted
    await chat.wait_for(session, lambda e: e.HasField("response_delta"))
    second = (
        await chat.send(session, "m2", "second", busy_policy=pb.BUSY_POLICY_INTERRUPT)
    ).accepted
    done_first = await chat.wait_completed(session, first.run_id)
    done_second = await chat.wait_completed(session, second.run_id)
    assert done_first.run_completed.finish_reason == pb.FINISH_REASON_CANCELLED
    assert done_second.run_completed.finish_reason == pb.FINISH_REASON_STOP
    assert done_first.seq < done_second.seq
    await chat.close()


async def test_a_run_outlives_the_stream_that_started_it(stub):
    session = await new_session(stub)
    starter = ChatClient(stub)
    run_id = (await starter.send(session, "m1", "keep going without me")).accepted.run_id
    await starter.close()
    watcher = ChatClient(stub)
    await watcher.join(session)
    done = await watcher.wait_completed(session, run_id)
    assert done.run_completed.finish_reason == pb.FINISH_REASON_STOP
    assert done.run_completed.text == assembled_text(watcher.events[session], run_id)
    await watcher.close()


async def test_one_stream_follows_several_sessions_and_every_event_names_its_session(stub):
    sessions = [await new_session(stub) for _ in range(3)]
    chat = ChatClient(stub)
    for index, session in enumerate(sessions):
        await chat.join(session)
        await chat.send(session, f"m{index}", f"message {index}")
    for session in sessions:
        await chat.wait_completed(session)
        assert {e.session_id for e in chat.events[session]} == {session}
    await chat.close()


async def test_a_half_closed_stream_ends_after_the_run_completes(stub):
    session = await new_session(stub)

    async def requests():
        yield pb.ChatRequest(request_id="j", join=pb.JoinSession(session_id=session))
        yield pb.ChatRequest(
            request_id="s", send=pb.SendMessage(session_id=session, message_id="m1", text="short")
        )

    responses = [r async for r in stub.Chat(requests())]
    events = [e for r in responses for e in r.events]
    assert events[-1].HasField("run_completed")
