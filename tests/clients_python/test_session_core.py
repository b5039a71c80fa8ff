"""The transport-neutral chat core: joins, resume, outbox replay, gaps. No I/O."""

from __future__ import annotations

from pathlib import Path

from agent_relay_client.conversation import SENDING, HistoryMessage, Outcome
from agent_relay_client.events import MessageAccepted, ReplayGap, ResponseDelta, RunStarted
from agent_relay_client.outbox import Outbox
from agent_relay_client.session_core import Join, Leave, LoadHistory, Send, SessionCore

S = "s1"


def sends(commands: list[object]) -> list[str]:
    return [c.entry.message_id for c in commands if isinstance(c, Send)]


def test_messages_wait_for_the_join_then_go_once_per_connection() -> None:
    core = SessionCore()
    assert core.follow(S) == []  # not connected: nothing to do yet
    entry, commands = core.send_message(S, "hello", message_id="m1", now_ms=0)
    assert commands == []
    assert core.conversations[S].messages[0].status == SENDING
    assert core.receive_connected() == [Join(S, 0)]
    assert core.take_due(now_ms=1) == []  # join not acked: the edge would refuse the message
    assert sends(core.receive_joined(S, now_ms=1)) == ["m1"]
    assert core.take_due(now_ms=2) == []  # in flight
    # the connection drops before the ack: the next connection sends it once more
    core.receive_disconnected()
    assert core.receive_connected() == [Join(S, 0)]
    assert sends(core.receive_joined(S, now_ms=3)) == ["m1"]
    assert core.receive_sent("m1") is entry
    core.receive_disconnected()
    core.receive_connected()
    assert core.receive_joined(S, now_ms=4) == []  # acked: never sent again


def test_rejoins_after_the_last_processed_seq() -> None:
    core = SessionCore()
    core.receive_connected()
    core.follow(S)
    core.receive_joined(S, now_ms=0)
    for seq, event in enumerate(
        [
            MessageAccepted(session_id=S, seq=1, run_id="r", message_id="m"),
            RunStarted(session_id=S, seq=2, run_id="r"),
            ResponseDelta(session_id=S, seq=5, from_seq=3, run_id="r", text="abc"),
        ]
    ):
        assert core.receive_event(event) == (Outcome.APPLIED, []), seq
    core.receive_disconnected()
    assert core.receive_connected() == [Join(S, 5)]


def test_a_gap_loads_history_once_and_rejoins_after_it() -> None:
    core = SessionCore()
    core.receive_connected()
    core.follow(S)
    core.receive_joined(S, now_ms=0)
    gap = ReplayGap(session_id=S, after_seq=0, first_seq=40)
    assert core.receive_event(gap) == (Outcome.GAP, [LoadHistory(S)])
    late = ResponseDelta(session_id=S, seq=41, run_id="r", text="x")
    assert core.receive_event(late) == (Outcome.DROPPED, [])  # not a second LoadHistory
    history = [HistoryMessage(message_id="m", role="user", text="hi", status="complete")]
    assert core.receive_history(S, history, as_of_seq=44) == [Leave(S), Join(S, 44)]
    assert core.conversations[S].last_seq == 44


def test_history_opens_an_unfollowed_session_after_its_as_of_seq() -> None:
    core = SessionCore()
    core.receive_connected()
    assert core.receive_history(S, [], as_of_seq=7) == [Join(S, 7)]
    assert core.follow(S) == []  # joining already


def test_retryable_refusals_wait_and_final_ones_mark_the_message_rejected() -> None:
    core = SessionCore()
    core.receive_connected()
    core.follow(S)
    core.receive_joined(S, now_ms=0)
    _, first = core.send_message(S, "one", message_id="m1", now_ms=0)
    _, second = core.send_message(S, "two", message_id="m2", now_ms=0)
    assert sends(first) == ["m1"] and sends(second) == ["m2"]
    assert core.receive_send_failed("m1", "rate_limited", "slow", 1000, now_ms=10) == "retry"
    assert core.receive_send_failed("m2", "invalid_field", "text", 0, now_ms=10) == "dropped"
    assert core.conversations[S].find("m2").status == "rejected"  # type: ignore[union-attr]
    assert core.next_due_ms() == 1010
    assert core.take_due(now_ms=500) == []
    assert sends(core.take_due(now_ms=1010)) == ["m1"]


def test_a_restarted_client_sends_leftovers_once_their_session_is_followed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.json"
    first = SessionCore(outbox=Outbox(path))
    first.send_message(S, "typed before a crash", message_id="m1", now_ms=0)
    second = SessionCore(outbox=Outbox(path))
    assert second.receive_connected() == []  # nothing is joined behind the user's back
    assert second.receive_history(S, [], as_of_seq=5) == [Join(S, 5)]
    assert second.conversations[S].find("m1").status == SENDING  # type: ignore[union-attr]
    assert sends(second.receive_joined(S, now_ms=0)) == ["m1"]


def test_a_message_refused_as_not_joined_rejoins_and_goes_again() -> None:
    core = SessionCore()
    core.receive_connected()
    core.follow(S)
    core.receive_joined(S, now_ms=0)
    _, commands = core.send_message(S, "hi", message_id="m1", now_ms=0)
    assert sends(commands) == ["m1"]
    assert core.receive_not_joined("m1") == [Join(S, 0)]
    assert not core.is_joined(S) and core.take_due(now_ms=1) == []
    assert sends(core.receive_joined(S, now_ms=2)) == ["m1"]
