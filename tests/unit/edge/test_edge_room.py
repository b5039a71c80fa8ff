"""The room: membership, fan-out encoded once, resume, batching, grace, upstream loss."""

import gc
import json

from agent_relay.v1 import agent_pb2 as pb
from ws_edge.errors import EdgeError, ErrorCode
from ws_edge.room import (
    AckJoin,
    CatchUpWhenDrained,
    Deliver,
    ExpireAt,
    FlushAt,
    Preferences,
    RejectJoin,
    Room,
    RoomClosed,
    RoomSettings,
    RoomState,
    RunFinished,
    SubscribeUpstream,
    UnsubscribeUpstream,
)

S = "s_1"
STREAM = Preferences()
FINALS = Preferences(deltas=False, tool_output=False)


def make_room(**kw) -> Room:
    options = {"batch_window_s": 0.005, "grace_s": 30.0, "buffer_events": 100} | kw
    return Room(S, RoomSettings(**options))


def accepted(seq: int, run: str = "r_1") -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=S,
        seq=seq,
        run_id=run,
        message_accepted=pb.MessageAccepted(message_id=f"m{seq}", text="hi"),
    )


def delta(seq: int, text: str, run: str = "r_1", step: int = 0) -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=S, seq=seq, run_id=run, response_delta=pb.ResponseDelta(text=text, step=step)
    )


def tool(seq: int, **update) -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=S,
        seq=seq,
        run_id="r_1",
        tool_execution=pb.ToolExecution(call_id="c", tool_name="long_task", **update),
    )


def completed(seq: int, run: str = "r_1") -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=S,
        seq=seq,
        run_id=run,
        run_completed=pb.RunCompleted(finish_reason=pb.FINISH_REASON_STOP, text="done"),
    )


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def frames_for(effects, socket_id):
    return [json.loads(e.data.json()) for e in of(effects, Deliver) if socket_id in e.socket_ids]


def live_room(*sockets: str, after_seq: int = 0, head: int = 0) -> Room:
    room = make_room()
    for sid in sockets:
        room.join(sid, f"j-{sid}", after_seq, STREAM, now=0.0)
    room.receive_joined(head, now=0.0)
    return room


def test_first_join_subscribes_upstream_and_is_acked_when_the_upstream_join_succeeds():
    room = make_room()
    effects = room.join("a", "j1", 5, STREAM, now=0.0)
    assert of(effects, SubscribeUpstream) == [SubscribeUpstream(S, 5)]
    assert not of(effects, AckJoin)
    assert room.join("b", "j2", 5, STREAM, now=0.0) == [ExpireAt(None)]
    acks = room.receive_joined(9, now=0.1)
    assert acks == [AckJoin("a", "j1", 9), AckJoin("b", "j2", 9)]
    assert room.state is RoomState.LIVE
    assert room.join("c", "j3", 9, STREAM, now=0.2)[-1] == AckJoin("c", "j3", 9)


def test_an_idle_room_holds_no_table_of_waiting_joins_and_shares_its_settings():
    """Memory per idle socket (PERFORMANCE.md): the table of joins awaiting the upstream
    reply exists only while one waits; the settings are one object for every room."""
    settings = RoomSettings(batch_window_s=0.005, grace_s=30.0, buffer_events=100)
    room, other = Room(S, settings), Room("s_2", settings)
    assert room._waiting is None
    room.join("a", "j1", 0, STREAM, now=0.0)
    room.join("b", "j2", 0, STREAM, now=0.0)
    room.leave("b", now=0.0)
    assert room._waiting == {"a": "j1"}
    assert room.receive_joined(0, now=0.1) == [AckJoin("a", "j1", 0)]
    assert room._waiting is None
    assert room._settings is other._settings


def holds_a_dict(room: Room) -> bool:
    return any(type(ref) is dict for ref in gc.get_referents(room))


def test_a_lone_subscriber_is_kept_without_a_dict_and_a_second_one_makes_one():
    """Memory per idle socket (PERFORMANCE.md): most rooms have one socket, kept without a
    dict of subscribers (184 bytes); the dict exists only while two or more follow, and
    fan-out, batching and resume hold across the changes."""
    room = live_room("a")
    assert not holds_a_dict(room)
    assert room.join("b", "j-b", 0, STREAM, now=1.0)[-1] == AckJoin("b", "j-b", 0)
    assert holds_a_dict(room)
    (deliver,) = of(room.receive_events([accepted(1)], now=1.0), Deliver)
    assert deliver.socket_ids == ("a", "b")
    effects = room.receive_events([delta(2, "x")], now=1.0)
    assert [f["seq"] for f in frames_for(effects, "a")] == [2]
    assert [f["seq"] for f in frames_for(effects, "b")] == [2]

    assert room.leave("a", now=2.0) == []
    assert not holds_a_dict(room) and room.socket_ids == ("b",)
    effects = room.receive_events([completed(3)], now=2.0)
    assert [f["seq"] for f in frames_for(effects, "b")] == [3]
    assert not frames_for(effects, "a")
    assert room.leave("b", now=3.0) == [ExpireAt(33.0)]
    assert room.socket_ids == ()

    effects = room.join("a", "j2", 1, STREAM, now=4.0)  # resumes from the buffer
    assert [f["seq"] for f in frames_for(effects, "a")] == [2, 3]
    assert room.join("a", "j3", 3, FINALS, now=4.0)[-1] == AckJoin("a", "j3", 3)  # replaces
    assert room.socket_ids == ("a",) and not holds_a_dict(room)
    assert room.after_seq_of("a") == 3


def test_an_event_is_encoded_once_and_the_same_bytes_go_to_every_socket():
    room = live_room("a", "b", "c")
    effects = room.receive_events([accepted(1)], now=1.0)
    (deliver,) = of(effects, Deliver)
    assert set(deliver.socket_ids) == {"a", "b", "c"}
    assert json.loads(deliver.data.json())["type"] == "chat:accepted"


def test_duplicate_and_out_of_order_events_are_never_delivered_twice():
    room = live_room("a")
    room.receive_events([accepted(1)], now=1.0)
    assert not of(room.receive_events([accepted(1)], now=1.1), Deliver)
    effects = room.receive_events([accepted(3)], now=1.2)  # 2 went missing: resubscribe
    assert not of(effects, Deliver)
    assert of(effects, SubscribeUpstream) == [SubscribeUpstream(S, 1)]
    room.receive_joined(3, now=1.3)
    effects = room.receive_events([accepted(2), accepted(3)], now=1.4)
    assert [f["seq"] for f in frames_for(effects, "a")] == [2, 3]


def test_a_resuming_socket_gets_exactly_the_missed_events_from_the_buffer():
    room = live_room("a")
    room.receive_events([accepted(1), completed(2), accepted(3, "r_2")], now=1.0)
    room.leave("a", now=1.0)
    effects = room.join("a", "j2", 1, STREAM, now=2.0)
    assert of(effects, AckJoin) == [AckJoin("a", "j2", 3)]
    assert [f["seq"] for f in frames_for(effects, "a")] == [2, 3]
    assert not of(effects, SubscribeUpstream)
    later = room.receive_events([completed(4, "r_2")], now=3.0)
    assert [f["seq"] for f in frames_for(later, "a")] == [4]


def test_a_join_older_than_the_buffer_rewinds_upstream_and_others_skip_the_overlap():
    room = make_room(buffer_events=2)
    room.join("a", "j1", 0, STREAM, now=0.0)
    room.receive_joined(0, now=0.0)
    room.receive_events([accepted(1), completed(2), accepted(3, "r_2"), completed(4, "r_2")], 1.0)
    effects = room.join("b", "j2", 0, STREAM, now=2.0)
    assert of(effects, SubscribeUpstream) == [SubscribeUpstream(S, 0)]
    assert room.state is RoomState.SUBSCRIBING
    assert room.receive_joined(4, now=2.1) == [AckJoin("b", "j2", 4)]
    replay = room.receive_events(
        [accepted(1), completed(2), accepted(3, "r_2"), completed(4, "r_2"), accepted(5, "r_3")],
        now=2.2,
    )
    # b catches up from the buffer as it drains: what the buffer held before it filled
    # went out; what it dropped meanwhile is fetched again when b has drained
    assert [f["seq"] for f in frames_for(replay, "b")] == [1, 2]
    assert [f["seq"] for f in frames_for(replay, "a")] == [5]
    assert of(replay, CatchUpWhenDrained) == [CatchUpWhenDrained("b")]
    again = room.receive_drained("b", 65_536, now=2.3)
    assert of(again, SubscribeUpstream) == [SubscribeUpstream(S, 2)]
    early = room.receive_events([completed(4, "r_2"), accepted(5, "r_3")], now=2.4)
    assert early == []  # the old subscription's events, past the rewind: never skip ahead
    rest = room.receive_events(
        [accepted(3, "r_2"), completed(4, "r_2"), accepted(5, "r_3")], now=2.4
    )
    assert [f["seq"] for f in frames_for(rest, "b")] == [3, 4]
    assert [f["seq"] for f in frames_for(room.receive_drained("b", 65_536, now=2.5), "b")] == [5]
    room.receive_joined(5, now=2.6)
    assert room.receive_drained("b", 65_536, now=2.7) == []  # caught up: live from here on
    live = room.receive_events([completed(6, "r_3")], now=2.8)
    assert [f["seq"] for f in frames_for(live, "a")] == [6]
    assert [f["seq"] for f in frames_for(live, "b")] == [6]


def test_deltas_within_the_window_share_one_frame_and_the_first_is_not_delayed():
    room = live_room("a")
    first = room.receive_events([accepted(1), delta(2, "Hel")], now=1.0)
    assert [f.get("text") for f in frames_for(first, "a")] == ["hi", "Hel"]
    held = room.receive_events([delta(3, "lo "), delta(4, "wor")], now=1.001)
    assert not of(held, Deliver)
    assert of(held, FlushAt) == [FlushAt(1.005)]
    assert not of(room.receive_events([delta(5, "ld")], now=1.002), FlushAt)  # already scheduled
    (frame,) = frames_for(room.receive_flush_due(now=1.005), "a")
    assert (frame["from_seq"], frame["seq"], frame["text"]) == (3, 5, "lo world")


def test_a_backlog_of_deltas_arriving_at_once_goes_out_in_frames_of_a_bounded_size():
    """The service may send many events in one response (a fast reply, a stall's backlog):
    a live delta frame goes once its text reaches batch_max_chars, and nothing is lost."""
    room = make_room(batch_max_chars=10)
    room.join("a", "j-a", 0, STREAM, now=0.0)
    room.receive_joined(0, now=0.0)
    room.receive_events([delta(1, "x")], now=1.0)  # the first goes at once
    effects = room.receive_events([delta(seq, "abcd") for seq in range(2, 10)], now=1.001)
    effects += room.receive_flush_due(now=1.006)
    frames = frames_for(effects, "a")
    assert [(f["from_seq"], f["seq"], f["text"]) for f in frames] == [
        (2, 4, "abcd" * 3),
        (5, 7, "abcd" * 3),
        (8, 9, "abcd" * 2),
    ]


def test_a_non_delta_event_flushes_pending_deltas_first_so_order_holds():
    room = live_room("a")
    room.receive_events([delta(1, "a")], now=1.0)
    effects = room.receive_events([delta(2, "b"), delta(3, "c"), completed(4)], now=1.001)
    frames = frames_for(effects, "a")
    assert [(f["type"], f["seq"]) for f in frames] == [("chat:response", 3), ("chat:complete", 4)]
    assert frames[0]["text"] == "bc" and frames[0]["from_seq"] == 2
    assert of(effects, RunFinished) == [RunFinished("r_1")]


def test_a_new_step_or_run_starts_a_new_delta_frame():
    room = live_room("a")
    effects = room.receive_events([delta(1, "a"), delta(2, "b", step=1)], now=1.0)
    effects += room.receive_flush_due(now=1.1)
    assert [(f["step"], f["text"]) for f in frames_for(effects, "a")] == [(0, "a"), (1, "b")]


def test_selective_streaming_sends_finals_only_to_sockets_that_asked_for_them():
    room = make_room()
    room.join("all", "j1", 0, STREAM, now=0.0)
    room.join("finals", "j2", 0, FINALS, now=0.0)
    room.receive_joined(0, now=0.0)
    events = [
        delta(1, "x"),
        tool(2, started=pb.ToolStarted(arguments_json="{}")),
        tool(3, progress=pb.ToolProgress(fraction=0.5)),
        tool(4, output=pb.ToolOutput(text="o")),
        tool(5, completed=pb.ToolCompleted(result="r")),
        completed(6),
    ]
    effects = room.receive_events(events, now=1.0)
    assert [f["seq"] for f in frames_for(effects, "all")] == [1, 2, 3, 4, 5, 6]
    assert [f["seq"] for f in frames_for(effects, "finals")] == [2, 5, 6]
    assert room.after_seq_of("finals") == 6


def test_the_room_lingers_for_the_grace_period_after_the_last_socket_leaves():
    room = live_room("a", "b")
    assert room.leave("a", now=1.0) == []
    assert room.leave("b", now=2.0) == [ExpireAt(32.0)]
    room.receive_events([accepted(1), completed(2)], now=3.0)  # still following upstream
    effects = room.join("a", "j", 0, STREAM, now=10.0)
    assert effects[0] == ExpireAt(None)
    assert [f["seq"] for f in frames_for(effects, "a")] == [1, 2]
    assert room.receive_expired(now=32.0) == []  # a socket came back
    room.leave("a", now=40.0)
    assert room.receive_expired(now=70.0) == [UnsubscribeUpstream(S), RoomClosed(S)]
    assert room.state is RoomState.CLOSED


def test_upstream_loss_tells_the_sockets_and_restoration_resumes_at_the_last_seq():
    room = live_room("a")
    room.receive_events([accepted(1), delta(2, "x")], now=1.0)
    lost = room.receive_upstream_lost(now=2.0)
    (error,) = [f for f in frames_for(lost, "a") if f["type"] == "error"]
    assert error["code"] == "upstream_unavailable" and error["retryable"] is True
    joined_meanwhile = room.join("b", "jb", 2, STREAM, now=2.5)
    assert AckJoin("b", "jb", 2) in joined_meanwhile
    assert room.receive_upstream_restored(now=3.0) == [SubscribeUpstream(S, 2)]
    room.receive_joined(3, now=3.1)
    effects = room.receive_events([delta(2, "x"), delta(3, "y")], now=3.2)
    assert [(f["from_seq"], f["seq"]) for f in frames_for(effects, "a")] == [(3, 3)]


def test_sockets_hear_the_upstream_go_and_come_back_in_upstream_frames():
    room = live_room("a")
    lost = room.receive_upstream_lost(now=2.0)
    assert [f for f in frames_for(lost, "a") if f["type"] == "upstream"] == [
        {"type": "upstream", "session_id": S, "state": "unavailable"}
    ]
    joined_meanwhile = room.join("b", "jb", 0, STREAM, now=2.5)
    assert [f["state"] for f in frames_for(joined_meanwhile, "b") if f["type"] == "upstream"] == [
        "unavailable"
    ]
    room.receive_upstream_restored(now=3.0)
    back = room.receive_joined(0, now=3.1)
    for socket_id in ("a", "b"):
        assert [f for f in frames_for(back, socket_id) if f["type"] == "upstream"] == [
            {"type": "upstream", "session_id": S, "state": "available"}
        ]
    # A first subscription is no recovery: nothing to announce.
    fresh = make_room()
    fresh.join("c", "jc", 0, STREAM, now=5.0)
    assert frames_for(fresh.receive_joined(0, now=5.1), "c") == []


def test_a_failed_upstream_join_refuses_the_waiting_sockets_and_closes_a_new_room():
    room = make_room()
    room.join("a", "j1", 0, STREAM, now=0.0)
    effects = room.receive_join_failed(EdgeError(ErrorCode.NOT_FOUND, "no such session"), 0.1)
    assert of(effects, RejectJoin)[0].socket_id == "a"
    assert of(effects, RoomClosed) == [RoomClosed(S)]


def test_a_replay_gap_is_told_to_each_socket_behind_it_with_its_own_after_seq():
    room = make_room()
    room.join("a", "j", 3, STREAM, now=0.0)
    room.receive_joined(950, now=0.0)
    gap = pb.SessionEvent(session_id=S, seq=0, replay_gap=pb.ReplayGap(after_seq=3, first_seq=900))
    effects = room.receive_events([gap, accepted(900)], now=1.0)
    frames = frames_for(effects, "a")
    assert frames[0]["type"] == "chat:gap" and (frames[0]["after_seq"], frames[0]["first_seq"]) == (
        3,
        900,
    )
    assert frames[1]["seq"] == 900


def test_a_socket_rejoining_mid_batch_gets_only_the_tail_of_the_batch():
    room = live_room("a")
    room.receive_events([delta(1, "a")], now=1.0)
    room.receive_events([delta(2, "b"), delta(3, "c")], now=1.001)  # pending batch 2..3
    room.leave("a", now=1.002)
    effects = room.join("a", "j", 2, STREAM, now=1.003)  # it had processed seq 2
    frames = frames_for(effects, "a")
    assert [(f["from_seq"], f["seq"], f["text"]) for f in frames] == [(3, 3, "c")]
    assert not frames_for(room.receive_flush_due(now=1.005), "a")


def test_after_a_rewind_a_socket_ahead_gets_only_the_part_of_a_batch_it_lacks():
    room = make_room(buffer_events=1)
    room.join("a", "ja", 0, STREAM, now=0.0)
    room.receive_joined(0, now=0.0)
    room.receive_events([delta(1, "a"), delta(2, "b")], now=1.0)
    room.receive_flush_due(now=1.1)  # "a" has seq 2
    assert room.after_seq_of("a") == 2
    room.join("b", "jb", 0, STREAM, now=2.0)  # older than the buffer: rewind to 0
    room.receive_joined(3, now=2.0)
    replay = room.receive_events([delta(1, "a"), delta(2, "b"), delta(3, "c")], now=3.0)
    replay += room.receive_flush_due(now=3.1)
    # b catches up as it drains (a buffer of one event: one event now)
    assert [(f["from_seq"], f["seq"], f["text"]) for f in frames_for(replay, "b")] == [(1, 1, "a")]
    assert [(f["from_seq"], f["seq"], f["text"]) for f in frames_for(replay, "a")] == [(3, 3, "c")]


def test_an_empty_room_lingers_while_a_run_is_open_so_its_completion_is_seen():
    room = make_room(max_linger_s=100.0)
    room.join("a", "j", 0, STREAM, now=0.0)
    room.receive_joined(0, now=0.0)
    room.receive_events([accepted(1)], now=1.0)  # run r_1 is open
    assert room.leave("a", now=2.0) == [ExpireAt(32.0)]
    assert room.receive_expired(now=32.0) == [ExpireAt(62.0)]  # still open: linger
    assert of(room.receive_events([completed(2)], now=40.0), RunFinished) == [RunFinished("r_1")]
    assert room.receive_expired(now=62.0) == [UnsubscribeUpstream(S), RoomClosed(S)]


def test_a_run_that_never_completes_does_not_keep_the_room_forever():
    room = make_room(max_linger_s=100.0)
    room.join("a", "j", 0, STREAM, now=0.0)
    room.receive_joined(0, now=0.0)
    room.receive_events([accepted(1)], now=1.0)
    room.leave("a", now=2.0)
    assert room.receive_expired(now=92.0) == [ExpireAt(122.0)]
    assert room.receive_expired(now=122.0) == [UnsubscribeUpstream(S), RoomClosed(S)]


def test_a_join_beyond_the_head_of_a_live_room_is_refused_out_of_range_as_the_service_does():
    room = live_room("a", after_seq=4, head=4)
    room.receive_events([accepted(5)], now=1.0)
    assert room.state is RoomState.LIVE
    effects = room.join("b", "j-b", 6, STREAM, now=1.1)
    (reject,) = of(effects, RejectJoin)
    assert reject.socket_id == "b" and reject.error.code is ErrorCode.OUT_OF_RANGE
    assert "after_seq" in reject.error.message and "5" in reject.error.message
    assert not of(effects, AckJoin) and "b" not in room.socket_ids
    assert of(room.join("b", "j-b2", 5, STREAM, now=1.2), AckJoin)  # at the head: fine


def test_a_rejoin_beyond_the_head_drops_the_first_join_and_may_start_the_grace():
    room = live_room("a", after_seq=3, head=3)
    effects = room.join("a", "j-a2", 10, STREAM, now=2.0)
    assert of(effects, RejectJoin) and room.socket_ids == ()
    assert of(effects, ExpireAt) == [ExpireAt(32.0)]


def test_a_join_that_waited_for_the_upstream_reply_is_checked_against_its_head():
    room = make_room()
    room.join("a", "j-a", 2, STREAM, now=0.0)
    room.join("b", "j-b", 50, STREAM, now=0.0)  # subscribing: the head is not known yet
    effects = room.receive_joined(7, now=0.1)
    assert of(effects, AckJoin) == [AckJoin("a", "j-a", 7)]
    (reject,) = of(effects, RejectJoin)
    assert reject.socket_id == "b" and reject.error.code is ErrorCode.OUT_OF_RANGE
    assert room.socket_ids == ("a",)


def test_a_room_closed_by_a_failed_resubscription_names_the_sockets_it_dropped():
    room = make_room()
    room.join("a", "j1", 0, STREAM, now=0.0)
    room.receive_joined(0, now=0.1)
    room.receive_upstream_lost(now=1.0)
    room.receive_upstream_restored(now=2.0)
    effects = room.receive_join_failed(EdgeError(ErrorCode.NOT_FOUND, "no such session"), 2.1)
    assert of(effects, RoomClosed) == [RoomClosed(S, ("a",))]
    assert room.socket_ids == ()


def test_a_catch_up_from_the_buffer_goes_out_in_chunks_as_the_socket_drains():
    room = make_room(catch_up_bytes=1000)
    room.join("a", "ja", 0, STREAM, now=0.0)
    room.receive_joined(0, now=0.0)
    words = [f"{i:0>400}" for i in range(2, 8)]  # 400 characters per event
    room.receive_events([accepted(1)] + [delta(i, w) for i, w in enumerate(words, 2)], 1.0)
    room.receive_flush_due(now=1.1)
    first = room.join("b", "jb", 0, STREAM, now=2.0)
    assert of(first, CatchUpWhenDrained) == [CatchUpWhenDrained("b")]
    got = frames_for(first, "b")
    assert [f["seq"] for f in got] == [1, 3]  # the accepted event, then deltas 2-3 in one frame
    # live events wait in the buffer while b catches up: "a" gets them, b does not yet
    live = room.receive_events([completed(8)], now=2.1)
    assert [f["seq"] for f in frames_for(live, "a")] == [8]
    assert frames_for(live, "b") == []
    while True:
        more = room.receive_drained("b", 1000, now=2.2)
        got += frames_for(more, "b")
        if not of(more, CatchUpWhenDrained):
            break
    assert [n for f in got for n in range(f.get("from_seq", f["seq"]), f["seq"] + 1)] == list(
        range(1, 9)
    )
    assert "".join(f["text"] for f in got if f["type"] == "chat:response") == "".join(words)
    # live again: the next event reaches both, once
    after = room.receive_events([accepted(9, "r_2")], now=3.0)
    assert [f["seq"] for f in frames_for(after, "b")] == [9]
    assert [f["seq"] for f in frames_for(after, "a")] == [9]
