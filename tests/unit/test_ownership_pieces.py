"""The pure pieces of replicas: a follower's window, its view of replies, a resumed queue."""

from __future__ import annotations

from agent_relay.v1 import agent_pb2 as pb
from agent_service.eventlog import SessionLog
from agent_service.runs import BusyPolicy
from agent_service.session import followed_replies
from agent_service.session_state import SessionState, StartRun


def ev(seq: int, run_id: str = "r1", **kind: object) -> pb.SessionEvent:
    return pb.SessionEvent(session_id="s", seq=seq, run_id=run_id, **kind)  # type: ignore[arg-type]


def delta(seq: int, text: str, step: int = 0, run_id: str = "r1") -> pb.SessionEvent:
    return ev(seq, run_id, response_delta=pb.ResponseDelta(text=text, step=step))


def test_a_followers_window_takes_durable_events_once_and_in_order() -> None:
    window = SessionLog("s", capacity=10, durable_head=2)
    assert window.receive([delta(2, "old"), delta(3, "a"), delta(4, "b")]) == 2
    assert window.head_seq == 4 and window.next_seq == 5
    assert window.receive([delta(4, "b")]) == 0  # already there
    assert [e.seq for e in window.read_after(2).events] == [3, 4]


def test_a_follower_that_fell_behind_retention_gives_readers_a_gap() -> None:
    window = SessionLog("s", capacity=10)
    window.receive([delta(1, "a")])
    window.receive([delta(5, "e"), delta(6, "f")])  # 2..4 were trimmed before it read them
    replay = window.read_after(1)
    assert replay.gap is not None and replay.gap.first_seq == 5
    assert [e.seq for e in replay.events] == [5, 6]


def test_followed_replies_are_each_unfinished_runs_newest_step_as_of_a_seq() -> None:
    events = [
        ev(1, run_started=pb.RunStarted()),
        delta(2, "Calling x."),
        delta(3, "The ", step=1),
        delta(4, "answer", step=1),
        ev(5, "r2", run_started=pb.RunStarted()),
        delta(6, "other", run_id="r2"),
        ev(7, "r2", run_completed=pb.RunCompleted()),
    ]
    (only,) = followed_replies(events, 7)  # r2 completed
    assert (only.run_id, only.text) == ("r1", "The answer")
    assert followed_replies(events, 7)[0].message_id == "r1.1"
    assert followed_replies(events, 3)[0].text == "The "
    assert {r.run_id for r in followed_replies(events, 6)} == {"r1", "r2"}


def test_runs_a_dead_owner_queued_go_on_in_order() -> None:
    state = SessionState()
    assert state.receive_resumed("r1", "m1") == [StartRun("r1")]
    assert state.receive_resumed("r2", "m2") == []  # waits behind r1
    assert state.receive_run_ended("r1", accepting=True) == [StartRun("r2")]


def test_a_message_whose_acceptance_could_not_be_stored_leaves_no_trace() -> None:
    state = SessionState()
    state.receive_message("m1", "first", "r1", BusyPolicy.QUEUE)
    before = state.snapshot()
    state.receive_message("m2", "second", "r2", BusyPolicy.INTERRUPT)
    state.restore(before)
    assert state.queue.active == "r1" and state.queue.waiting == ()
    assert "r2" not in state.user_message_of
    assert state.receive_run_ended("r1", accepting=True) == []
