"""Bad input gets the right status with a message naming the problem, and disturbs nothing."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agent_relay.v1 import agent_pb2 as pb
from tests.support.chat import ChatClient

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "rich status details are missing"
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


async def test_unary_bad_input_gets_invalid_argument_naming_the_field(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListMessages(pb.ListMessagesRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "session_id" in err.value.details()
    assert bad_request_fields(err.value) == ["session_id"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSession(pb.CreateSessionRequest(title="x" * 500))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["title"]

    session = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListMessages(pb.ListMessagesRequest(session_id=session, page_token="nope"))
    assert bad_request_fields(err.value) == ["page_token"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Cancel(pb.CancelRequest(session_id=session))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_session_is_not_found(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSession(pb.GetSessionRequest(session_id="s_nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "s_nope" in err.value.details()


@pytest.mark.parametrize(
    ("command", "code", "needle"),
    [
        ({}, INVALID, "command"),
        ({"join": pb.JoinSession()}, INVALID, "join.session_id"),
        (
            {"join": pb.JoinSession(session_id="s_nope")},
            grpc.StatusCode.NOT_FOUND.value[0],
            "s_nope",
        ),
        (
            {"send": pb.SendMessage(session_id="SESSION", message_id="m1", text="  ")},
            INVALID,
            "send.text",
        ),
        (
            {"send": pb.SendMessage(session_id="SESSION", message_id="bad id!", text="x")},
            INVALID,
            "send.message_id",
        ),
        (
            {"send": pb.SendMessage(session_id="SESSION", message_id="m1", text="x" * 100_001)},
            INVALID,
            "send.text",
        ),
        (
            {
                "send": pb.SendMessage(
                    session_id="SESSION", message_id="m1", text="x", busy_policy=99
                )
            },
            INVALID,
            "send.busy_policy",
        ),
        (
            {"join": pb.JoinSession(session_id="SESSION", after_seq=10_000)},
            grpc.StatusCode.OUT_OF_RANGE.value[0],
            "after_seq",
        ),
        ({"cancel_tool_call": pb.CancelToolCall(session_id="SESSION")}, INVALID, "call_id"),
    ],
)
async def test_a_bad_chat_command_gets_an_error_reply_and_the_stream_goes_on(
    stub, command, code, needle
):
    healthy = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
    target = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
    for value in command.values():
        if hasattr(value, "session_id") and value.session_id == "SESSION":
            value.session_id = target
    chat = ChatClient(stub)
    await chat.join(healthy)
    reply = await chat.command(**command)
    assert reply.status.code == code
    assert needle in reply.status.message
    # the same stream, and its other session, carry on
    ok = await chat.send(healthy, "after-error", "still there?")
    assert ok.status.code == 0
    done = await chat.wait_completed(healthy)
    assert done.run_completed.finish_reason == pb.FINISH_REASON_STOP
    await chat.close()


async def test_execute_tool_must_start_with_a_start(stub):
    async def requests():
        yield pb.ExecuteToolRequest(cancel=pb.CancelToolCall(call_id="x"))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.ExecuteTool(requests()):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start" in err.value.details()
