"""The event log's pure core: seq numbering, the retained window, replay and gaps."""

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.eventlog import OutOfRange, SessionLog


def delta(text: str) -> pb.SessionEvent:
    return pb.SessionEvent(response_delta=pb.ResponseDelta(text=text))


def seqs(events: list[pb.SessionEvent]) -> list[int]:
    return [e.seq for e in events]


def test_append_numbers_events_one_two_three_and_names_the_session() -> None:
    log = SessionLog("s1", capacity=10)
    events = [log.append(delta(str(i))) for i in range(3)]
    assert seqs(events) == [1, 2, 3]
    assert {e.session_id for e in events} == {"s1"}
    assert log.head_seq == 3


def test_replay_after_n_returns_exactly_the_events_after_n() -> None:
    log = SessionLog("s1", capacity=10)
    for i in range(6):
        log.append(delta(str(i)))
    replay = log.read_after(2)
    assert replay.gap is None
    assert seqs(replay.events) == [3, 4, 5, 6]
    assert log.read_after(6).events == []


def test_replay_older_than_the_window_gets_a_gap_marker_then_the_window() -> None:
    log = SessionLog("s1", capacity=3)
    for i in range(10):
        log.append(delta(str(i)))
    replay = log.read_after(2)
    assert replay.gap == pb.ReplayGap(after_seq=2, first_seq=8)
    assert seqs(replay.events) == [8, 9, 10]


def test_replay_just_before_the_window_has_no_gap() -> None:
    log = SessionLog("s1", capacity=3)
    for i in range(10):
        log.append(delta(str(i)))
    replay = log.read_after(7)
    assert replay.gap is None
    assert seqs(replay.events) == [8, 9, 10]


def test_limit_bounds_one_read() -> None:
    log = SessionLog("s1", capacity=100)
    for i in range(50):
        log.append(delta(str(i)))
    assert seqs(log.read_after(10, limit=5).events) == [11, 12, 13, 14, 15]


def test_window_stays_bounded_and_correct_over_many_appends() -> None:
    log = SessionLog("s1", capacity=7)
    for i in range(1000):
        log.append(delta(str(i)))
        assert len(log) == min(i + 1, 7)
    assert seqs(log.read_after(993).events) == [994, 995, 996, 997, 998, 999, 1000]
    assert [e.response_delta.text for e in log.read_after(997).events] == ["997", "998", "999"]


def test_a_log_started_after_a_restart_gives_old_cursors_a_gap() -> None:
    log = SessionLog("s1", capacity=10, first_seq=10_001)
    assert log.head_seq == 10_000
    assert log.read_after(500).events == []  # nothing yet, and nothing to skip
    log.append(delta("x"))
    replay = log.read_after(500)
    assert replay.gap == pb.ReplayGap(after_seq=500, first_seq=10_001)
    assert seqs(replay.events) == [10_001]


def test_resume_beyond_the_head_is_refused() -> None:
    log = SessionLog("s1", capacity=10)
    log.append(delta("a"))
    with pytest.raises(OutOfRange):
        log.read_after(2)
    with pytest.raises(OutOfRange):
        log.read_after(-1)
