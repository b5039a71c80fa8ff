"""The client's event types against the contract: every proto field has a home, and an event
read from an edge frame equals the same event read from protobuf."""

from __future__ import annotations

import json

import msgspec
import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_relay_client import events
from agent_relay_client.proto_convert import event_from_proto
from tests.support.sample_events import sample_events
from ws_edge.events import FRAME_TYPES, event_to_dict

KIND_TO_STRUCT = {
    "message_accepted": events.MessageAccepted,
    "run_started": events.RunStarted,
    "response_delta": events.ResponseDelta,
    "tool_execution": events.ToolExecution,
    "run_error": events.RunError,
    "run_completed": events.RunCompleted,
    "replay_gap": events.ReplayGap,
}


def struct_fields(cls: type) -> set[str]:
    return {f.name for f in msgspec.structs.fields(cls)}


def test_every_event_kind_of_the_proto_has_a_type() -> None:
    kinds = {f.name for f in pb.SessionEvent.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert kinds == set(KIND_TO_STRUCT) == set(FRAME_TYPES)
    for kind, cls in KIND_TO_STRUCT.items():
        assert cls.__struct_config__.tag == FRAME_TYPES[kind]


@pytest.mark.parametrize("kind", sorted(KIND_TO_STRUCT))
def test_every_field_of_every_kind_has_a_home(kind: str) -> None:
    message = pb.SessionEvent.DESCRIPTOR.fields_by_name[kind].message_type
    names = {f.name for f in message.fields if f.containing_oneof is None}
    for oneof in message.oneofs:  # ToolExecution's `update`: the cases' fields, flattened
        for case in oneof.fields:
            names |= {f.name for f in case.message_type.fields}
    names -= {"usage"} if kind != "run_completed" else set()
    assert names <= struct_fields(KIND_TO_STRUCT[kind]), names - struct_fields(KIND_TO_STRUCT[kind])


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.WhichOneof("kind"))
def test_the_edge_frame_and_the_protobuf_read_as_the_same_event(event: pb.SessionEvent) -> None:
    from_frame = events.decode_frame(json.dumps(event_to_dict(event)))
    assert from_frame == event_from_proto(event)
