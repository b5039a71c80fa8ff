"""The event log's pure core: seq numbering, durable-before-visible, the window, replay, gaps."""

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.eventlog import OutOfRange, SessionLog


def delta(text: str) -> pb.SessionEvent:
    return pb.SessionEvent(response_delta=pb.ResponseDelta(text=text))


def seqs(events: list[pb.SessionEvent]) -> list[int]:
    return [e.seq for e in events]


class Log(SessionLog):
    """A SessionLog whose every stamped event is made durable at once."""

    def append(self, event: pb.SessionEvent) -> pb.SessionEvent:
        self.stamp(event)
        self.take_unsubmitted()
        self.publish_through(event.seq)
        return event


def test_append_numbers_events_one_two_three_and_names_the_session() -> None:
    log = Log("s1", capacity=10)
    events = [log.append(delta(str(i))) for i in range(3)]
    assert seqs(events) == [1, 2, 3]
    assert {e.session_id for e in events} == {"s1"}
    assert log.head_seq == 3


def test_replay_after_n_returns_exactly_the_events_after_n() -> None:
    log = Log("s1", capacity=10)
    for i in range(6):
        log.append(delta(str(i)))
    replay = log.read_after(2)
    assert replay.gap is None
    assert seqs(replay.events) == [3, 4, 5, 6]
    assert log.read_after(6).events == []


def test_replay_older_than_the_window_gets_a_gap_marker_then_the_window() -> None:
    log = Log("s1", capacity=3)
    for i in range(10):
        log.append(delta(str(i)))
    replay = log.read_after(2)
    assert replay.gap == pb.ReplayGap(after_seq=2, first_seq=8)
    assert seqs(replay.events) == [8, 9, 10]


def test_replay_just_before_the_window_has_no_gap() -> None:
    log = Log("s1", capacity=3)
    for i in range(10):
        log.append(delta(str(i)))
    replay = log.read_after(7)
    assert replay.gap is None
    assert seqs(replay.events) == [8, 9, 10]


def test_limit_bounds_one_read() -> None:
    log = Log("s1", capacity=100)
    for i in range(50):
        log.append(delta(str(i)))
    assert seqs(log.read_after(10, limit=5).events) == [11, 12, 13, 14, 15]


def test_window_stays_bounded_and_correct_over_many_appends() -> None:
    log = Log("s1", capacity=7)
    for i in range(1000):
        log.append(delta(str(i)))
        assert len(log) == min(i + 1, 7)
    assert seqs(log.read_after(993).events) == [994, 995, 996, 997, 998, 999, 1000]
    assert [e.response_delta.text for e in log.read_after(997).events] == ["997", "998", "999"]


def test_a_reloaded_log_continues_at_its_durable_head_with_no_gap() -> None:
    durable = [pb.SessionEvent(session_id="s1", seq=seq) for seq in range(41, 51)]
    log = SessionLog("s1", capacity=10, durable_head=50)
    log.restore(durable)
    assert log.head_seq == 50
    assert seqs(log.read_after(43).events) == list(range(44, 51))
    assert log.read_after(43).gap is None
    assert log.stamp(delta("x")).seq == 51  # dense: no jump across the reload


def test_a_reloaded_log_tells_a_cursor_older_than_its_window_of_the_gap() -> None:
    log = SessionLog("s1", capacity=3, durable_head=50)
    log.restore(pb.SessionEvent(session_id="s1", seq=seq) for seq in range(41, 51))
    replay = log.read_after(10)
    assert replay.gap == pb.ReplayGap(after_seq=10, first_seq=48)
    assert seqs(replay.events) == [48, 49, 50]


def test_a_stamped_event_is_invisible_until_it_is_durable() -> None:
    log = SessionLog("s1", capacity=10)
    first, second = log.stamp(delta("a")), log.stamp(delta("b"))
    assert (first.seq, second.seq, log.head_seq, log.unpublished) == (1, 2, 0, 2)
    assert log.read_after(0).events == []
    assert seqs(log.take_unsubmitted()) == [1, 2]
    assert log.take_unsubmitted() == []  # handed over once
    log.stamp(delta("c"))
    assert log.publish_through(2) == 2
    assert seqs(log.read_after(0).events) == [1, 2]
    assert seqs(log.take_unsubmitted()) == [3]
    with pytest.raises(OutOfRange):
        log.read_after(3)  # stamped, not durable: nobody may claim to have seen it


def test_resume_beyond_the_head_is_refused() -> None:
    log = Log("s1", capacity=10)
    log.append(delta("a"))
    with pytest.raises(OutOfRange):
        log.read_after(2)
    with pytest.raises(OutOfRange):
        log.read_after(-1)


def run_delta(text: str, run_id: str = "r1", step: int = 0) -> pb.SessionEvent:
    return pb.SessionEvent(run_id=run_id, response_delta=pb.ResponseDelta(text=text, step=step))


def test_a_delta_joins_the_newest_delta_of_its_step_until_the_writer_takes_it() -> None:
    log = SessionLog("s1", capacity=10, merge_delta_chars=64)
    first = log.stamp(run_delta("a "))
    assert log.extend_unsubmitted_delta("r1", 0, "b ") is first
    assert first.seq == 1
    assert [e.response_delta.text for e in log.take_unsubmitted()] == ["a b "]
    # handed to the writer: it may be being written, so it is never changed again
    assert log.extend_unsubmitted_delta("r1", 0, "c ") is None
    assert first.response_delta.text == "a b "
    assert log.stamp(run_delta("c ")).seq == 2  # seq stays dense
    log.publish_through(2)
    assert [e.response_delta.text for e in log.read_after(0).events] == ["a b ", "c "]


def test_words_that_joined_an_event_followed_by_another_are_in_its_text_when_taken() -> None:
    log = SessionLog("s1", capacity=10, merge_delta_chars=64)
    first = log.stamp(run_delta("a ", step=0))
    assert log.extend_unsubmitted_delta("r1", 0, "b ") is first
    second = log.stamp(run_delta("c ", step=1))  # the next step's first delta
    assert log.extend_unsubmitted_delta("r1", 1, "d") is second
    assert log.extend_unsubmitted_delta("r1", 0, "x") is None  # no longer the newest
    assert [e.response_delta.text for e in log.take_unsubmitted()] == ["a b ", "c d"]
    log.untake(1)  # the writer gives them back: taken again, the same texts
    assert [e.response_delta.text for e in log.take_unsubmitted()] == ["a b ", "c d"]


def test_a_delta_joins_until_its_event_holds_merge_delta_chars() -> None:
    log = SessionLog("s1", capacity=10, merge_delta_chars=4)
    log.stamp(run_delta("ab"))
    assert log.extend_unsubmitted_delta("r1", 0, "cd") is not None
    assert log.extend_unsubmitted_delta("r1", 0, "e") is None  # 4 characters: full
    assert [e.response_delta.text for e in log.take_unsubmitted()] == ["abcd"]


def test_a_delta_does_not_join_another_run_step_kind_or_a_full_event() -> None:
    log = SessionLog("s1", capacity=10, merge_delta_chars=64)
    log.stamp(run_delta("a", run_id="r1", step=0))
    assert log.extend_unsubmitted_delta("r2", 0, "b") is None
    assert log.extend_unsubmitted_delta("r1", 1, "b") is None
    log.stamp(pb.SessionEvent(run_id="r1", run_started=pb.RunStarted()))
    assert log.extend_unsubmitted_delta("r1", 0, "b") is None
    big = log.stamp(run_delta("x" * 64))
    assert log.extend_unsubmitted_delta("r1", 0, "b") is None
    assert big.response_delta.text == "x" * 64
    assert (
        SessionLog("s2", capacity=10, merge_delta_chars=64).extend_unsubmitted_delta("r1", 0, "b")
        is None
    )
    off = SessionLog("s3", capacity=10)  # the default: every delta is its own event
    off.stamp(run_delta("a"))
    assert off.extend_unsubmitted_delta("r1", 0, "b") is None


def test_a_delta_continues_the_newest_event_of_its_run_and_step_durable_or_not() -> None:
    log = SessionLog("s1", capacity=10, merge_delta_chars=64)
    assert not log.continues_delta("r1", 0)  # nothing yet: a run's first delta
    log.stamp(pb.SessionEvent(run_id="r1", run_started=pb.RunStarted()))
    assert not log.continues_delta("r1", 0)
    log.stamp(run_delta("a "))
    assert log.continues_delta("r1", 0)  # stamped, not yet durable
    assert not log.continues_delta("r1", 1)  # a new step
    assert not log.continues_delta("r2", 0)  # another run
    log.take_unsubmitted()
    log.publish_through(2)
    assert log.continues_delta("r1", 0)  # durable: still the newest
    log.stamp(pb.SessionEvent(run_id="r1", run_completed=pb.RunCompleted()))
    assert not log.continues_delta("r1", 0)


def test_a_delta_stamped_with_its_fields_joins_and_continues_as_one_read_from_the_event() -> None:
    log = SessionLog("s1", capacity=10, merge_delta_chars=64)
    first = run_delta("a ")
    log.stamp_delta(first, "r1", 0, "a ")
    assert log.continues_delta("r1", 0) and not log.continues_delta("r1", 1)
    assert not log.continues_delta("r2", 0)
    assert log.extend_unsubmitted_delta("r2", 0, "x") is None  # another run
    assert log.extend_unsubmitted_delta("r1", 1, "x") is None  # another step
    assert log.extend_unsubmitted_delta("r1", 0, "b ") is first
    assert [e.response_delta.text for e in log.take_unsubmitted()] == ["a b "]
    log.untake(1)  # given back: words that join it now follow every word it has
    assert log.extend_unsubmitted_delta("r1", 0, "c") is first
    assert [e.response_delta.text for e in log.take_unsubmitted()] == ["a b c"]
    log.publish_through(1)
    assert log.continues_delta("r1", 0)  # durable: still the newest
    log.stamp(pb.SessionEvent(run_id="r1", run_completed=pb.RunCompleted()))
    assert not log.continues_delta("r1", 0)
    assert log.extend_unsubmitted_delta("r1", 0, "d") is None
