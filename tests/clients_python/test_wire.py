"""The Python client's codecs against frames the edge itself encoded
(clients/spec/wire/frames.json): a binary frame gives the typed frame its JSON twin gives."""

from __future__ import annotations

import base64
import json

import pytest

from agent_relay.v1 import edge_pb2 as epb
from agent_relay_client.errors import ProtocolError
from agent_relay_client.events import decode_frame
from agent_relay_client.wire import JsonCodec, ProtoCodec, codec_for
from tests.support import wire_frames

RECORDED = json.loads(wire_frames.PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", RECORDED["server"], ids=lambda c: c["name"])
def test_a_binary_server_frame_decodes_to_what_its_json_twin_decodes_to(case):
    assert ProtoCodec().decode(base64.b64decode(case["proto"])) == decode_frame(case["json"])


@pytest.mark.parametrize("case", RECORDED["client"], ids=lambda c: c["frame"]["type"])
def test_both_codecs_write_the_same_client_frame(case):
    text = JsonCodec().encode(case["frame"])
    assert isinstance(text, str) and json.loads(text) == case["frame"]
    data = ProtoCodec().encode(case["frame"])
    assert isinstance(data, bytes)
    assert epb.Frame.FromString(data) == epb.Frame.FromString(base64.b64decode(case["proto"]))


def test_what_a_codec_cannot_read_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        ProtoCodec().decode(b"\xff\xff")
    with pytest.raises(ProtocolError):
        ProtoCodec().decode('{"type": "pong"}')
    with pytest.raises(ProtocolError):
        JsonCodec().decode(b"\x00")
    with pytest.raises(ProtocolError):  # a client frame's kind, from the edge
        ProtoCodec().decode(epb.Frame(ping=epb.PingFrame(ts=1)).SerializeToString())
    with pytest.raises(ValueError, match="wire"):
        codec_for("xml")  # type: ignore[arg-type]
