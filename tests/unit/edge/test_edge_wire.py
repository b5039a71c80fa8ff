"""The edge's two wire formats: the handshake's choice, one encoding per format for a
fan-out, and proto client frames that decode to what their JSON twins decode to."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_relay.v1 import edge_pb2 as epb
from tests.support import wire_frames
from ws_edge.errors import EdgeError, ErrorCode
from ws_edge.frames import decode_client_binary, decode_client_frame, decode_for
from ws_edge.room import DeltaInfo
from ws_edge.send_queue import SendQueue
from ws_edge.wire import FieldsFrame, Wire, select_protocol

JSON, PROTO = Wire.JSON.value, Wire.PROTO.value


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([PROTO], Wire.PROTO),
        ([JSON], Wire.JSON),
        ([PROTO, JSON], Wire.PROTO),
        ([JSON, PROTO], Wire.JSON),
        (["x", PROTO, JSON], Wire.PROTO),
        (["agent-relay.v2"], None),
        ([], None),
    ],
)
def test_the_first_offered_subprotocol_the_edge_speaks_is_chosen(offered, chosen):
    assert select_protocol(offered) is chosen


class CountingFrame(FieldsFrame):
    __slots__ = ("counts",)

    def __init__(self, fields):
        super().__init__(fields)
        self.counts = {"json": 0, "proto": 0}

    def _encode_json(self):
        self.counts["json"] += 1
        return super()._encode_json()

    def _encode_proto(self):
        self.counts["proto"] += 1
        return super()._encode_proto()


def test_a_frame_sent_to_many_sockets_is_encoded_once_per_wire_in_use():
    frame = CountingFrame({"type": "upstream", "session_id": "s", "state": "available"})
    queues = [
        SendQueue(max_bytes=10**6, max_frames=10, coalesce_after_frames=5, wire=wire)
        for wire in [Wire.JSON] * 50 + [Wire.PROTO] * 50
    ]
    for queue in queues:
        assert queue.push(frame, None, "s")
    assert frame.counts == {"json": 1, "proto": 1}
    json_only = CountingFrame({"type": "upstream", "session_id": "s", "state": "available"})
    for queue in queues[:50]:
        queue.push(json_only, None, "s")
    assert json_only.counts == {"json": 1, "proto": 0}  # no socket asked for proto
    assert json.loads(queues[0].pop()) == frame.fields
    parsed = epb.Frame.FromString(queues[-1].pop())
    assert parsed.upstream.session_id == "s" and parsed.upstream.state == "available"


def test_coalesced_deltas_are_written_in_the_queue_s_own_wire():
    queue = SendQueue(max_bytes=10**6, max_frames=100, coalesce_after_frames=0, wire=Wire.PROTO)
    first = DeltaInfo("s", "r", 0, 1, 1, 10, "a")
    later = DeltaInfo("s", "r", 0, 2, 2, 11, "b")
    queue.push(first.encode(), first)
    queue.push(later.encode(), later)
    assert len(queue) == 1
    merged = epb.Frame.FromString(queue.pop()).response
    assert (merged.from_seq, merged.seq, merged.text) == (1, 2, "ab")


def test_the_recorded_frames_are_fresh():
    assert wire_frames.PATH.read_text(encoding="utf-8") == wire_frames.render(), (
        "run: .venv/bin/python -m tests.support.wire_frames"
    )


@pytest.mark.parametrize("case", wire_frames.build()["client"], ids=lambda c: c["frame"]["type"])
def test_a_proto_client_frame_decodes_to_what_its_json_twin_decodes_to(case):
    data = base64.b64decode(case["proto"])
    text = json.dumps(case["frame"])
    assert decode_client_binary(data, max_bytes=65536) == decode_client_frame(text, max_bytes=65536)


def test_a_binary_frame_past_the_limit_is_frame_too_large_and_wires_do_not_mix():
    big = epb.Frame(auth=epb.AuthFrame(token="x" * 2000)).SerializeToString()
    with pytest.raises(EdgeError) as info:
        decode_client_binary(big, max_bytes=1000)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    frame, error, _ = decode_for(Wire.JSON, b"\x00", max_bytes=1000)
    assert frame is None and error is not None and error.code is ErrorCode.BAD_FRAME
    frame, error, _ = decode_for(Wire.PROTO, '{"type": "ping"}', max_bytes=1000)
    assert frame is None and error is not None and "binary" in error.message


def test_groups_nested_past_the_parser_s_limit_are_bad_frame_not_a_crash():
    # field 99 as a start-group, 1,000 deep (the schema itself nests only a few levels)
    data = b"\x9b\x06" * 1000 + b"\x9c\x06" * 1000
    frame, error, _ = decode_for(Wire.PROTO, data, max_bytes=65536)
    assert frame is None and error is not None and error.code is ErrorCode.BAD_FRAME


_RECORDED_CLIENT = [base64.b64decode(c["proto"]) for c in wire_frames.build()["client"]]
_ANSWERS = {ErrorCode.BAD_FRAME, ErrorCode.INVALID_FIELD, ErrorCode.FRAME_TOO_LARGE}


def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_RECORDED_CLIENT)))
    for _ in range(draw(st.integers(1, 4))):
        if data and draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.composite(_mutated)()))
def test_any_bytes_on_the_proto_wire_get_a_frame_or_a_documented_error(data: bytes) -> None:
    frame, error, ref = decode_for(Wire.PROTO, data, max_bytes=256)
    if frame is None:
        assert error is not None and error.code in _ANSWERS and error.message
        assert ref is None or (isinstance(ref, str) and len(ref) <= 64)
    else:
        assert error is None and ref is None
