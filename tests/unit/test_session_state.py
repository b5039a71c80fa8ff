"""SessionState: messages in, effects out, no I/O."""

from __future__ import annotations

from agent_relay.v1 import agent_pb2 as pb
from agent_service.runs import BusyPolicy
from agent_service.session_state import (
    Accepted,
    AppendEvent,
    Busy,
    CancelRun,
    Duplicate,
    EndUnstarted,
    PersistAcceptance,
    SessionState,
    StartRun,
)

Q, R, INTERRUPT = BusyPolicy.QUEUE, BusyPolicy.REJECT, BusyPolicy.INTERRUPT


def kinds(outcome: object) -> list[str]:
    assert isinstance(outcome, Accepted)
    return [type(e).__name__ for e in outcome.effects]


def test_a_first_message_is_persisted_announced_and_started_and_titles_the_session() -> None:
    state = SessionState()
    outcome = state.receive_message("m1", "  what   is 2+2? ", "r1", Q)
    assert kinds(outcome) == ["PersistAcceptance", "AppendEvent", "StartRun"]
    assert isinstance(outcome, Accepted)
    persist, append, start = outcome.effects
    assert persist == PersistAcceptance("m1", "  what   is 2+2? ", "r1", False, "what is 2+2?")
    assert isinstance(append, AppendEvent) and append.event.message_accepted.run_id == "r1"
    assert start == StartRun("r1") and state.title == "what is 2+2?"


def test_a_retried_id_is_a_duplicate_of_the_first_acceptance_from_memory_or_store() -> None:
    state = SessionState()
    first = state.receive_message("m1", "hi", "r1", Q)
    assert isinstance(first, Accepted)
    event = first.effects[1]
    assert isinstance(event, AppendEvent)
    state.receive_appended(event.event.message_accepted, seq=7)
    again = state.receive_message("m1", "hi", "r9", Q)
    assert isinstance(again, Duplicate)
    assert (again.accepted.run_id, again.accepted.seq, again.accepted.duplicate) == ("r1", 7, True)
    older = pb.MessageAccepted(message_id="m0", run_id="r0", seq=3)
    from_store = state.receive_message("m0", "old", "r10", Q, stored=older)
    assert isinstance(from_store, Duplicate) and from_store.accepted.run_id == "r0"
    assert not state.queue.waiting  # neither retry queued anything


def test_busy_policies_queue_reject_and_interrupt() -> None:
    state = SessionState()
    state.receive_message("m1", "a", "r1", Q)
    assert kinds(state.receive_message("m2", "b", "r2", Q)) == ["PersistAcceptance", "AppendEvent"]
    assert isinstance(state.receive_message("m3", "c", "r3", R), Busy)
    interrupt = state.receive_message("m4", "d", "r4", INTERRUPT)
    assert kinds(interrupt) == ["PersistAcceptance", "AppendEvent", "EndUnstarted", "CancelRun"]
    assert isinstance(interrupt, Accepted)
    assert interrupt.effects[2] == EndUnstarted("r2", "m2", "cancelled")
    assert interrupt.effects[3] == CancelRun("r1", "cancelled")
    assert state.receive_run_ended("r1", accepting=True) == [StartRun("r4")]


def test_cancel_ends_a_queued_run_unstarted_and_asks_the_active_one_to_stop() -> None:
    state = SessionState()
    state.receive_message("m1", "a", "r1", Q)
    state.receive_message("m2", "b", "r2", Q)
    assert state.receive_cancel("r2") == [EndUnstarted("r2", "m2", "cancelled")]
    assert state.receive_cancel("") == [CancelRun("r1", "cancelled")]
    assert state.receive_cancel("nope") == []


def test_at_shutdown_queued_runs_end_interrupted_and_none_starts() -> None:
    state = SessionState()
    for index in range(3):
        state.receive_message(f"m{index}", "x", f"r{index}", Q)
    assert state.receive_run_ended("r0", accepting=False) == [
        EndUnstarted("r1", "m1", "interrupted"),
        EndUnstarted("r2", "m2", "interrupted"),
    ]
    assert not state.busy  # nothing is left active or waiting
    state.receive_message("m3", "x", "r3", Q)
    state.receive_message("m4", "x", "r4", Q)
    assert state.receive_shutdown() == [EndUnstarted("r4", "m4", "interrupted")]
