"""The binary subprotocol `agent-relay.v1+proto` through the real edge and agent service:
the handshake's choice, a whole chat, resume by seq, and bad binary frames."""

from __future__ import annotations

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent_relay.v1 import edge_pb2 as epb
from tests.support.edge import EdgeClient, create_session, proto_frame_to_dict, start_edge
from tests.support.timing import scaled

JSON, PROTO = "agent-relay.v1", "agent-relay.v1+proto"


async def closed_with(client: EdgeClient) -> int:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10_000):
            await client.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([PROTO], PROTO),
        ([JSON], JSON),
        ([PROTO, JSON], PROTO),  # RFC 6455: the client lists in order of preference
        ([JSON, PROTO], JSON),
        (["agent-relay.v9", PROTO], PROTO),  # an unknown one is passed over
    ],
)
async def test_the_handshake_selects_the_first_offered_subprotocol_the_edge_speaks(
    edge, offered, chosen
):
    ws = await websockets.connect(edge.ws_url, subprotocols=offered, open_timeout=scaled(10))
    try:
        assert ws.subprotocol == chosen
        welcome = await ws.recv(decode=False) if chosen == PROTO else await ws.recv()
        if chosen == PROTO:
            assert isinstance(welcome, bytes)
            frame = proto_frame_to_dict(welcome)
            assert frame["type"] == "welcome" and frame["protocol"] == PROTO
            assert frame["heartbeat_ms"] > 0 and frame["max_frame_bytes"] > 0
        else:
            assert isinstance(welcome, str) and '"protocol":"agent-relay.v1"' in welcome
    finally:
        await ws.close()


async def test_only_unknown_subprotocols_are_refused_naming_both_versions(edge):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(edge.ws_url, subprotocols=["agent-relay.v9", "proto"])
    assert info.value.response.status_code == 400
    assert PROTO.encode() in info.value.response.body
    assert JSON.encode() + b"," in info.value.response.body


async def test_a_whole_chat_over_proto_carries_what_a_json_socket_of_the_session_gets(edge):
    session = create_session(edge, title="proto")
    sid = session["session_id"]
    binary = await EdgeClient.connect(edge.ws_url, token=session["token"], wire="proto")
    text = await EdgeClient.connect(edge.ws_url, token=session["token"], wire="json")
    try:
        assert binary.ws.subprotocol == PROTO
        assert (await binary.join(sid))["head_seq"] == 0
        assert (await text.join(sid))["type"] == "ack"
        ack = await binary.say(sid, "hello in binary", message_id="pm-1")
        assert ack["type"] == "ack" and ack["message_id"] == "pm-1"
        assert ack["duplicate"] is False and ack["queued"] is False
        done = await binary.until_complete(sid, ack["run_id"])
        await text.until_complete(sid, ack["run_id"])
        assert done["finish_reason"] == "stop" and done["text"]
        events = binary.events(sid)
        deltas = [f for f in events if f["type"] == "chat:response"]
        assert deltas and "".join(f["text"] for f in deltas) == done["text"]
        seqs = binary.seqs(sid)
        assert seqs == list(range(1, len(seqs) + 1))

        def clean(frames: list[dict]) -> list[dict]:
            return [{k: v for k, v in f.items() if k != "_seen"} for f in frames]

        # The same session, the same events, whichever wire: the non-delta events equal
        # field for field, the deltas cover the same seqs with the same text.
        others = [f for f in events if f["type"] != "chat:response"]
        json_others = [f for f in text.events(sid) if f["type"] != "chat:response"]
        assert clean(others) == clean(json_others)
        assert seqs == text.seqs(sid)
        json_text = "".join(f["text"] for f in text.events(sid) if f["type"] == "chat:response")
        assert json_text == done["text"]
        pong = await binary.request({"type": "ping", "ts": 123})
        assert pong["type"] == "pong" and pong["ts"] == 123
    finally:
        await binary.close()
        await text.close()


async def test_a_proto_socket_resumes_by_seq_with_exactly_what_it_missed(edge):
    session = create_session(edge, title="proto resume")
    sid = session["session_id"]
    first = await EdgeClient.connect(edge.ws_url, token=session["token"], wire="proto")
    await first.join(sid)
    ack = await first.say(sid, "one")
    await first.until_complete(sid, ack["run_id"])
    seen = first.last_seq(sid)
    await first.close()

    other = await EdgeClient.connect(edge.ws_url, token=session["token"], wire="json")
    await other.join(sid, after_seq=seen)
    ack2 = await other.say(sid, "two")
    missed = await other.until_complete(sid, ack2["run_id"])
    await other.close()

    again = await EdgeClient.connect(edge.ws_url, token=session["token"], wire="proto")
    try:
        joined = await again.join(sid, after_seq=seen)
        assert joined["type"] == "ack" and joined["head_seq"] == missed["seq"]
        done = await again.until_complete(sid, ack2["run_id"])
        assert done["text"] == missed["text"]
        assert again.seqs(sid) == list(range(seen + 1, missed["seq"] + 1))
        assert again.events(sid)[0]["type"] == "chat:accepted"
    finally:
        await again.close()


def _frame(**kind: object) -> bytes:
    return epb.Frame(**kind).SerializeToString()


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"\xff\xff\xff\xff", "bad_frame", "not a protobuf Frame"),
        (b"", "bad_frame", "no kind"),
        (_frame(welcome=epb.WelcomeFrame(protocol=PROTO)), "bad_frame", "not a client frame"),
        (_frame(id="j1", join=epb.JoinFrame(session_id="")), "invalid_field", "session_id"),
        (_frame(id="j2", join=epb.JoinFrame(session_id="s", deltas="all")), "invalid_field", ""),
        (_frame(id="m1", chat_message=epb.ChatMessageFrame(session_id="s")), "invalid_field", ""),
    ],
)
async def test_a_bad_binary_frame_gets_a_clear_error_and_the_socket_stays_open(
    edge, data, code, words
):
    client = await EdgeClient.connect(edge.ws_url, wire="proto")
    try:
        await client.ws.send(data)
        error = await client.until(lambda f: f["type"] == "error")
        assert error["code"] == code and words in error["message"], error
        parsed = epb.Frame.FromString(data) if code == "invalid_field" else None
        if parsed is not None:
            assert error["ref"] == parsed.id  # the id is salvaged for the reply
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    finally:
        await client.close()


async def test_text_on_the_proto_wire_and_repeated_bad_frames_strike_out_with_1008(agent):
    edge = start_edge(agent.address, "--abuse-strikes", "3")
    try:
        client = await EdgeClient.connect(edge.ws_url, wire="proto")
        await client.ws.send('{"type": "ping"}')  # JSON text on the binary wire
        error = await client.until(lambda f: f["type"] == "error")
        assert error["code"] == "bad_frame" and "binary" in error["message"], error
        await client.ws.send(b"\x0a\xff")  # a truncated field
        error = await client.until(lambda f: f["type"] == "error")
        assert error["code"] == "bad_frame"
        assert (await client.request({"type": "ping"}))["type"] == "pong"  # still open
        await client.ws.send(b"\x00")
        assert await closed_with(client) == 1008  # the third strike
    finally:
        edge.stop()
    assert "Traceback" not in edge.text() and "ERROR" not in edge.text()
