"""The edge reports the agent service's gRPC statuses with the codes the gRPC client uses.

One table (proto/agent_relay/v1/codes.json) maps both paths: a join past the session's log
head is OUT_OF_RANGE from the service, `out_of_range` (not retryable) at the edge and
`OutOfRange` in the Python gRPC client, so both clients react the same way (reload history).
"""

from __future__ import annotations

from tests.support.edge import EdgeClient, create_session


async def test_a_join_past_the_head_is_out_of_range_like_over_grpc(edge):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    reply = await client.request(
        {"type": "join", "id": "j1", "session_id": session["session_id"], "after_seq": 999}
    )
    assert reply["type"] == "error"
    assert reply["code"] == "out_of_range"
    assert reply.get("retryable") is False
    await client.close()
