"""Client frame validation: every bad frame gets an error naming what is wrong."""

import pytest

from ws_edge.errors import EdgeError, ErrorCode
from ws_edge.frames import (
    Auth,
    ChatMessage,
    Join,
    Ping,
    decode_client_frame,
    error_frame,
    frame_ref,
)


def decode(text: str, max_bytes: int = 65_536):
    return decode_client_frame(text, max_bytes=max_bytes)


def refused(text: str, max_bytes: int = 65_536) -> EdgeError:
    with pytest.raises(EdgeError) as info:
        decode(text, max_bytes)
    return info.value


def test_good_frames_decode_to_their_struct_with_defaults():
    join = decode('{"type": "join", "id": "j1", "session_id": "s_1", "after_seq": 41}')
    assert join == Join(session_id="s_1", after_seq=41, id="j1")
    assert (join.deltas, join.tool_output) == ("stream", "stream")
    msg = decode(
        '{"type":"chat:message","session_id":"s","message_id":"m","text":"hi",'
        '"busy_policy":"reject","traceparent":"00-ab-cd-01"}'
    )
    assert isinstance(msg, ChatMessage) and msg.busy_policy == "reject"
    assert decode('{"type": "auth", "token": "t"}') == Auth(token="t")
    assert decode('{"type": "ping", "ts": 5}') == Ping(ts=5)


def test_unknown_fields_are_ignored_for_forward_compatibility():
    assert decode('{"type": "ping", "future": [1, 2]}') == Ping()


@pytest.mark.parametrize("text", ["nope", "[1, 2]", "{}", '{"type": "launch"}', '"str"', "{"])
def test_not_a_frame_is_bad_frame(text):
    assert refused(text).code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"type": "join"}', "session_id"),
        ('{"type": "join", "session_id": 3}', "session_id"),
        ('{"type": "join", "session_id": "s", "after_seq": -1}', "after_seq"),
        ('{"type": "join", "session_id": "s", "deltas": "some"}', "deltas"),
        ('{"type": "chat:message", "session_id": "s", "message_id": "m", "text": ""}', "text"),
        (
            '{"type": "chat:message", "session_id": "s", "message_id": "m", "text": "x",'
            ' "busy_policy": "shove"}',
            "busy_policy",
        ),
        ('{"type": "auth", "id": "a", "token": 7}', "token"),
        ('{"type": "ping", "id": "' + "x" * 65 + '"}', "id"),
    ],
)
def test_a_bad_field_is_invalid_field_and_the_message_names_it(text, field):
    error = refused(text)
    assert error.code is ErrorCode.INVALID_FIELD
    assert field in error.message
    assert not error.retryable


def test_oversized_frame_is_refused_before_parsing():
    error = refused('{"type": "ping", "pad": "' + "x" * 200 + '"}', max_bytes=100)
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert "100" in error.message


def test_size_counts_utf8_bytes_not_characters():
    text = '{"type": "ping", "pad": "' + "\u00e9" * 40 + '"}'  # 66 chars, 106 bytes
    assert refused(text, max_bytes=100).code is ErrorCode.FRAME_TOO_LARGE
    assert decode(text, max_bytes=200) == Ping()


def test_ref_is_salvaged_from_an_invalid_frame_when_readable():
    assert frame_ref('{"type": "join", "id": "j9", "after_seq": "x"}') == "j9"
    assert frame_ref("not json") is None
    assert frame_ref('{"id": 5}') is None


def test_error_frame_carries_retry_after_only_when_known():
    limited = error_frame(EdgeError(ErrorCode.RATE_LIMITED, "slow down", 800), "m1").json()
    assert b'"retry_after_ms":800' in limited and b'"retryable":true' in limited
    assert b"retry_after_ms" not in error_frame(EdgeError(ErrorCode.FORBIDDEN, "no"), "j1").json()


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "ping", "x": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}",
        '{"id": "n1", "type": "join", "extra": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"a": ' * 3000 + "1" + "}" * 3000,
    ],
)
def test_json_nested_past_the_decoders_limit_is_a_bad_frame_not_a_recursion_error(text):
    error = refused(text)
    assert error.code is ErrorCode.BAD_FRAME and "nested too deep" in error.message
    assert frame_ref(text) is None
