"""The JSON mapping of SessionEvent cannot drift from the proto: every field of every kind."""

import json

import pytest

from agent_relay.v1 import agent_pb2 as pb
from tests.support.sample_events import sample_events
from ws_edge.events import FRAME_TYPES, encode_event, event_to_dict, message_to_dict


def leaf_field_names(message) -> set[str]:
    """Every field name a frame must carry for this message: its plain fields, and the fields
    of the case set in each oneof holding messages."""
    names: set[str] = set()
    for fd in message.DESCRIPTOR.fields:
        if fd.containing_oneof is None or fd.message_type is None:
            names.add(fd.name)
        elif message.WhichOneof(fd.containing_oneof.name) == fd.name:
            names |= leaf_field_names(getattr(message, fd.name))
    return names


def test_the_samples_cover_every_case_of_every_oneof():
    updates = {fd.name for fd in pb.ToolExecution.DESCRIPTOR.oneofs_by_name["update"].fields}
    seen = {
        e.tool_execution.WhichOneof("update")
        for e in sample_events()
        if e.WhichOneof("kind") == "tool_execution"
    }
    assert seen == updates
    assert {e.WhichOneof("kind") for e in sample_events()} == set(FRAME_TYPES)


def test_every_kind_of_the_proto_has_a_frame_type():
    kinds = {fd.name for fd in pb.SessionEvent.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert kinds == set(FRAME_TYPES)


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.WhichOneof("kind"))
def test_every_proto_field_appears_under_its_proto_name(event):
    frame = json.loads(encode_event(event).json())
    kind = event.WhichOneof("kind")
    assert frame["type"] == FRAME_TYPES[kind]
    envelope = {"session_id", "run_id", "time_unix_ms", "seq"}
    body = getattr(event, kind)
    expected = envelope | leaf_field_names(body)
    if kind == "replay_gap":
        expected.discard("seq")
    if kind == "tool_execution":
        expected.add("status")
    missing = expected - set(frame)
    assert not missing, f"{kind} frame lacks {missing}"


def test_values_survive_the_mapping():
    frames = [event_to_dict(e) for e in sample_events()]
    accepted, _, delta, started, progress, output, completed, failed, cancelled = frames[:9]
    error, done, gap = frames[9:]
    assert accepted["queued"] is True and accepted["seq"] == 7 and accepted["text"] == "hi"
    assert delta["text"] == "Hel" and delta["step"] == 1
    assert started["status"] == "started" and started["arguments_json"] == '{"n": 3}'
    assert progress["fraction"] == 0.5 and progress["note"] == "half"
    assert output["stream"] == "stdout" and completed["result"] == "42"
    assert failed["code"] == "timeout" and cancelled["reason"] == "requested"
    assert error["retry_after_ms"] == 2000 and error["retryable"] is True
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert "seq" not in gap and (gap["after_seq"], gap["first_seq"]) == (3, 900)


def test_every_finish_reason_maps_to_its_short_name():
    for value in pb.FinishReason.DESCRIPTOR.values:
        event = pb.SessionEvent(seq=1, run_completed=pb.RunCompleted(finish_reason=value.number))
        name = event_to_dict(event)["finish_reason"]
        assert name == value.name.removeprefix("FINISH_REASON_").lower()


def test_history_messages_use_the_same_mapping():
    message = pb.Message(
        message_id="m",
        role=pb.ROLE_ASSISTANT,
        text="t",
        status=pb.MESSAGE_STATUS_STREAMING,
        tool_calls=[pb.ToolCall(call_id="c", tool_name="calc", arguments_json="{}")],
    )
    mapped = message_to_dict(message)
    assert mapped["role"] == "assistant" and mapped["status"] == "streaming"
    assert mapped["tool_calls"] == [{"call_id": "c", "tool_name": "calc", "arguments_json": "{}"}]
    assert set(mapped) == {fd.name for fd in pb.Message.DESCRIPTOR.fields}
