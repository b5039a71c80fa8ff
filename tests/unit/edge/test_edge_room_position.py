"""A join past the head of a live room is refused as out_of_range, as the service refuses it.

It was accepted silently: the socket then counted every event up to its position as seen,
so a client whose service lost its log would never see the new events (docs/protocol.md).
"""

from ws_edge.errors import ErrorCode
from ws_edge.room import (
    AckJoin,
    ExpireAt,
    Preferences,
    RejectJoin,
    Room,
    RoomSettings,
    RoomState,
)

S = "s_1"


def live_room(head: int) -> Room:
    room = Room(S, RoomSettings(batch_window_s=0.005, grace_s=30.0, buffer_events=100))
    room.join("a", "j0", after_seq=0, prefs=Preferences(), now=0.0)
    room.receive_joined(head, now=0.0)
    assert room.state is RoomState.LIVE
    return room


def test_a_join_past_the_head_is_refused_out_of_range() -> None:
    room = live_room(head=12)
    effects = room.join("b", "j1", after_seq=500, prefs=Preferences(), now=1.0)
    rejects = [e for e in effects if isinstance(e, RejectJoin)]
    assert [(r.socket_id, r.ref, r.error.code) for r in rejects] == [
        ("b", "j1", ErrorCode.OUT_OF_RANGE)
    ]
    assert not rejects[0].error.retryable
    assert not any(isinstance(e, AckJoin) for e in effects)
    assert room.socket_ids == ("a",)


def test_a_join_at_the_head_is_still_acked() -> None:
    room = live_room(head=12)
    effects = room.join("b", "j1", after_seq=12, prefs=Preferences(), now=1.0)
    assert [e for e in effects if isinstance(e, AckJoin)] == [AckJoin("b", "j1", 12)]


def test_the_last_socket_refused_leaves_the_room_to_its_grace_period() -> None:
    room = live_room(head=3)
    effects = room.join("a", "j2", after_seq=99, prefs=Preferences(), now=5.0)
    assert any(isinstance(e, RejectJoin) for e in effects)
    assert ExpireAt(35.0) in effects
