"""The edge's two wire formats behind one seam: which a socket speaks, and server frames
that encode themselves once per format. No I/O.

- `Wire.JSON`, subprotocol `agent-relay.v1`: text frames, one JSON object each
  (docs/protocol.md).
- `Wire.PROTO`, subprotocol `agent-relay.v1+proto`: binary frames, each one
  serialized `agent_relay.v1.Frame` (proto/agent_relay/v1/edge.proto).

`select_protocol` chooses at the handshake, as RFC 6455 (4.2.2) has it: one of
the values the client offered, the first it lists (its order is its preference)
that the edge speaks; none when it offered none the edge speaks.

Every server frame is an `OutFrame`. The room hands one OutFrame to every socket
of a fan-out and each socket asks for its own format (`data(wire)`): the first
ask encodes, later ones get the same bytes, so a frame costs one encoding per
format in use, never one per socket. A session event's proto encoding wraps the
agent's `SessionEvent` as it came from upstream: no mapping at all.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import edge_pb2 as epb


class Wire(enum.Enum):
    """A socket's wire format; the value is its subprotocol name."""

    JSON = "agent-relay.v1"
    PROTO = "agent-relay.v1+proto"


SUPPORTED_PROTOCOLS = tuple(w.value for w in Wire)


def select_protocol(offered: list[str]) -> Wire | None:
    """The first offered subprotocol the edge speaks (RFC 6455: the client's order is its
    preference), or None when it offered none of them."""
    for name in offered:
        for wire in Wire:
            if wire.value == name:
                return wire
    return None


def parse_offer(header: str) -> list[str]:
    """The subprotocols of a Sec-WebSocket-Protocol header, in order, blanks dropped."""
    return [p.strip() for p in header.split(",") if p.strip()]


_JSON = msgspec.json.Encoder()


class OutFrame:
    """One server frame, encoded at most once per wire format (see the module docstring)."""

    __slots__ = ("_json", "_proto")

    def __init__(self) -> None:
        self._json: bytes | None = None
        self._proto: bytes | None = None

    def data(self, wire: Wire) -> bytes:
        """The frame's bytes in that format."""
        if wire is Wire.JSON:
            data = self._json
            if data is None:
                data = self._json = self._encode_json()
            return data
        data = self._proto
        if data is None:
            data = self._proto = self._encode_proto()
        return data

    def json(self) -> bytes:
        """The JSON bytes (tests and tools read frames this way)."""
        return self.data(Wire.JSON)

    def _encode_json(self) -> bytes:
        raise NotImplementedError

    def _encode_proto(self) -> bytes:
        raise NotImplementedError


class FieldsFrame(OutFrame):
    """A frame given as its JSON mapping: `type` plus fields under their proto names."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def _encode_json(self) -> bytes:
        return _JSON.encode(self.fields)

    def _encode_proto(self) -> bytes:
        data: bytes = fields_to_proto(self.fields).SerializeToString()
        return data


class EventFrame(OutFrame):
    """One session event as the agent sent it; `to_json` maps it for the JSON wire."""

    __slots__ = ("event", "to_json")

    def __init__(self, event: pb.SessionEvent, to_json: Any) -> None:
        super().__init__()
        self.event = event
        self.to_json = to_json  # SessionEvent -> bytes (ws_edge.events; injected: no cycle)

    def _encode_json(self) -> bytes:
        data: bytes = self.to_json(self.event)
        return data

    def _encode_proto(self) -> bytes:
        data: bytes = epb.Frame(event=self.event).SerializeToString()
        return data


# The Frame.kind case of each server frame type given as fields.
_SERVER_KINDS: dict[str, str] = {
    "welcome": "welcome",
    "ack": "ack",
    "error": "error",
    "pong": "pong",
    "upstream": "upstream",
    "chat:response": "response",
}


def fields_to_proto(fields: dict[str, Any]) -> epb.Frame:
    """The proto Frame of a server frame's JSON mapping. A None value is an absent field."""
    frame_type = fields["type"]
    frame = epb.Frame()
    ref = fields.get("ref")
    if ref is not None:
        frame.ref = ref
    if frame_type == "chat:gap":
        event = frame.event
        event.session_id = fields["session_id"]
        event.run_id = fields.get("run_id", "")
        event.time_unix_ms = fields["time_unix_ms"]
        event.replay_gap.after_seq = fields["after_seq"]
        event.replay_gap.first_seq = fields["first_seq"]
        return frame
    body = getattr(frame, _SERVER_KINDS[frame_type])
    body.SetInParent()  # the case is set even when every field is absent
    # Attribute by attribute: about 3x faster than building the message from keywords
    # and copying it into the Frame (upb, measured with timeit).
    for key, value in fields.items():
        if value is not None and key != "type" and key != "ref":
            setattr(body, key, value)
    return frame


class DeltaFrame(OutFrame):
    """`chat:response`: a batch of deltas of one run and step (the most frequent frame)."""

    __slots__ = ("from_seq", "run_id", "seq", "session_id", "step", "text", "time_unix_ms")

    def __init__(
        self,
        *,
        session_id: str,
        run_id: str,
        from_seq: int,
        seq: int,
        time_unix_ms: int,
        text: str,
        step: int,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.run_id = run_id
        self.from_seq = from_seq
        self.seq = seq
        self.time_unix_ms = time_unix_ms
        self.text = text
        self.step = step

    def _encode_json(self) -> bytes:
        return _JSON.encode(
            {
                "type": "chat:response",
                "session_id": self.session_id,
                "seq": self.seq,
                "from_seq": self.from_seq,
                "run_id": self.run_id,
                "time_unix_ms": self.time_unix_ms,
                "text": self.text,
                "step": self.step,
            }
        )

    def _encode_proto(self) -> bytes:
        frame = epb.Frame()
        r = frame.response
        r.session_id = self.session_id
        r.seq = self.seq
        r.from_seq = self.from_seq
        r.run_id = self.run_id
        r.time_unix_ms = self.time_unix_ms
        r.text = self.text
        r.step = self.step
        data: bytes = frame.SerializeToString()
        return data
