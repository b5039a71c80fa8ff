"""The client's pure core: backoff, close advice, connection states, outbox, conversation.

No event loop, no sockets: fake random sources and clocks pick every number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_relay_client.backoff import BackoffPolicy, CloseAdvice, advise_close
from agent_relay_client.connection import (
    ConnectionMachine,
    GiveUp,
    Reconnect,
    RefreshToken,
    State,
)
from agent_relay_client.conversation import SENDING, Conversation, HistoryMessage, Outcome
from agent_relay_client.errors import (
    Busy,
    InvalidRequest,
    NotFound,
    ProtocolError,
    RateLimited,
    RequestError,
    Unavailable,
    error_from_code,
)
from agent_relay_client.events import (
    Ack,
    ErrorReply,
    MessageAccepted,
    ReplayGap,
    ResponseDelta,
    RunCompleted,
    RunStarted,
    ToolExecution,
    Welcome,
    decode_frame,
)
from agent_relay_client.outbox import Outbox, OutboxEntry

# ----- backoff and close codes -----------------------------------------------------------


def test_full_jitter_backoff_grows_then_caps() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=4.0)
    assert [policy.ceiling_s(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay_s(2, lambda: 0.0) == 0.0
    assert policy.delay_s(2, lambda: 0.5) == 1.0
    assert policy.ceiling_s(10_000) == 4.0  # no overflow for huge attempt counts


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(base_s=0)
    with pytest.raises(ValueError):
        BackoffPolicy(base_s=5, cap_s=1)


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (1000, CloseAdvice.STOP),
        (1001, CloseAdvice.RECONNECT),
        (1006, CloseAdvice.RECONNECT),
        (1008, CloseAdvice.STOP),
        (1009, CloseAdvice.STOP),
        (1011, CloseAdvice.RECONNECT),
        (1012, CloseAdvice.RECONNECT_NOW),
        (1013, CloseAdvice.RECONNECT),
        (4000, CloseAdvice.RECONNECT),
        (4001, CloseAdvice.RECONNECT),
        (4499, CloseAdvice.RECONNECT),
        (4500, CloseAdvice.STOP),
        (4501, CloseAdvice.REFRESH_TOKEN),  # renew the token, then reconnect (codes.json)
        (1003, CloseAdvice.STOP),
        (1007, CloseAdvice.STOP),
        (1010, CloseAdvice.STOP),
        (3000, CloseAdvice.RECONNECT),  # unknown, outside 4xxx: reconnect with backoff
        (4509, CloseAdvice.STOP),
        (4999, CloseAdvice.STOP),
    ],
)
def test_close_codes_follow_the_protocol_table(code: int, advice: CloseAdvice) -> None:
    assert advise_close(code) is advice


# ----- connection state machine ----------------------------------------------------------


def machine(randoms: list[float], **kw: object) -> ConnectionMachine:
    values = iter(randoms)
    return ConnectionMachine(
        backoff=BackoffPolicy(base_s=1.0, cap_s=8.0, restart_cap_s=0.5),
        random=lambda: next(values),
        **kw,  # type: ignore[arg-type]
    )


def test_reconnects_with_growing_jittered_delays_and_resets_after_success() -> None:
    m = machine([1.0 - 1e-9, 0.5, 0.25, 0.5])
    m.receive_start()
    assert m.state is State.CONNECTING
    m.receive_connected()
    first = m.receive_closed(1006)
    assert isinstance(first, Reconnect) and first.attempt == 0
    assert first.delay_s == pytest.approx(1.0)
    assert m.state is State.RECONNECTING
    m.receive_attempt()
    second = m.receive_closed(1006)  # the attempt failed too
    assert second == Reconnect(delay_s=1.0, attempt=1)  # 0.5 * ceiling 2
    m.receive_attempt()
    third = m.receive_closed(4001)
    assert third == Reconnect(delay_s=1.0, attempt=2)  # 0.25 * ceiling 4
    m.receive_attempt()
    m.receive_connected()
    assert m.attempt == 0
    again = m.receive_closed(1011)
    assert again == Reconnect(delay_s=0.5, attempt=0)  # back to the first ceiling
    assert [new for _, new in m.transitions] == [
        State.CONNECTING,
        State.CONNECTED,
        State.RECONNECTING,
        State.CONNECTED,
        State.RECONNECTING,
    ]


def test_restart_close_reconnects_at_once_with_small_jitter() -> None:
    m = machine([0.9])
    m.receive_start()
    m.receive_connected()
    decision = m.receive_closed(1012)
    assert decision == Reconnect(delay_s=pytest.approx(0.45), attempt=0)


def test_a_refused_token_asks_for_a_renewal_once_then_stops() -> None:
    m = machine([0.0])
    m.receive_start()
    m.receive_connected()
    assert m.receive_closed(4501, "expired") == RefreshToken(attempt=0)
    m.receive_attempt()
    assert m.receive_closed(4501, "still bad") == GiveUp(4501, "still bad")
    assert m.state is State.DISCONNECTED


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1008, 1010, 4503, 4509])
def test_closes_that_say_stop_disconnect_for_good(code: int) -> None:
    m = machine([])
    m.receive_start()
    m.receive_connected()
    assert m.receive_closed(code, "why") == GiveUp(code, "why")
    assert m.state is State.DISCONNECTED


def test_failed_first_attempt_reconnects_and_max_attempts_gives_up() -> None:
    m = machine([0.0, 0.0, 0.0], max_attempts=2)
    m.receive_start()
    assert isinstance(m.receive_closed(1006), Reconnect)
    m.receive_attempt()
    assert isinstance(m.receive_closed(1006), Reconnect)
    m.receive_attempt()
    decision = m.receive_closed(1006)
    assert isinstance(decision, GiveUp)
    assert m.state is State.DISCONNECTED


def test_stop_and_calling_rule_violations() -> None:
    m = machine([])
    with pytest.raises(RuntimeError):
        m.receive_connected()
    m.receive_start()
    with pytest.raises(RuntimeError):
        m.receive_start()
    m.receive_stop()
    assert m.state is State.DISCONNECTED
    assert isinstance(m.receive_closed(1006), GiveUp)  # closes after stop never reconnect
    m.receive_start()  # a stopped client may start again
    assert m.state is State.CONNECTING


# ----- outbox ------------------------------------------------------------------------------


def entry(mid: str, session: str = "s1", text: str = "hi") -> OutboxEntry:
    return OutboxEntry(session_id=session, message_id=mid, text=text)


def test_outbox_sends_each_entry_once_per_connection_and_replays_after_drop() -> None:
    box = Outbox()
    box.add(entry("m1"))
    box.add(entry("m2"))
    box.add(entry("m3", session="other"))
    assert [e.message_id for e in box.take_due(["s1"], now_ms=0)] == ["m1", "m2"]
    assert box.take_due(["s1"], now_ms=1) == []  # in flight: never twice on one connection
    assert box.receive_ack("m1") is not None
    box.receive_disconnected()
    replay = box.take_due(["s1", "other"], now_ms=2)
    assert [e.message_id for e in replay] == ["m2", "m3"]
    assert [e.attempts for e in replay] == [2, 1]
    assert box.receive_ack("m2") and box.receive_ack("m3")
    assert len(box) == 0
    assert box.receive_ack("m2") is None  # a late duplicate ack is harmless


def test_outbox_retries_rate_limited_after_the_wait_and_drops_final_errors() -> None:
    box = Outbox()
    box.add(entry("m1"))
    box.add(entry("m2"))
    box.take_due(["s1"], now_ms=1000)
    assert box.receive_error("m1", "rate_limited", 800, now_ms=1000) == "retry"
    assert box.receive_error("m2", "forbidden", 0, now_ms=1000) == "dropped"
    assert box.receive_error("zz", "forbidden", 0, now_ms=1000) == "unknown"
    assert box.take_due(["s1"], now_ms=1500) == []
    assert box.next_due_ms(["s1"]) == 1800
    assert [e.message_id for e in box.take_due(["s1"], now_ms=1800)] == ["m1"]


def test_outbox_refuses_duplicate_ids() -> None:
    box = Outbox()
    box.add(entry("m1"))
    with pytest.raises(ValueError):
        box.add(entry("m1"))
    with pytest.raises(ValueError):
        box.add(entry(""))


def test_outbox_survives_a_restart_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    box = Outbox(path)
    box.add(OutboxEntry(session_id="s1", message_id="m1", text="héllo", busy_policy="queue"))
    box.add(entry("m2"))
    box.take_due(["s1"], now_ms=0)  # in flight when the process dies
    box.receive_ack("m2")
    reopened = Outbox(path)
    [restored] = reopened.entries()
    assert (restored.message_id, restored.text, restored.busy_policy) == ("m1", "héllo", "queue")
    assert not restored.in_flight  # a new process sends it again
    assert [e.message_id for e in reopened.take_due(["s1"], now_ms=0)] == ["m1"]
    assert json.loads(path.read_text())["version"] == 1


def test_an_unreadable_outbox_file_is_kept_aside_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    path.write_text("{not json")
    box = Outbox(path)
    assert len(box) == 0
    assert box.recovered_file is not None
    assert box.recovered_file.read_text() == "{not json"
    box.add(entry("m1"))
    assert Outbox(path).entries()[0].message_id == "m1"


# ----- frames ------------------------------------------------------------------------------


def test_frames_decode_into_typed_events_and_replies() -> None:
    delta = decode_frame(
        '{"type":"chat:response","session_id":"s","seq":"63","from_seq":60,"run_id":"r",'
        '"text":"Hello there, ","step":0,"time_unix_ms":1}'
    )
    assert delta == ResponseDelta(
        session_id="s", seq=63, from_seq=60, run_id="r", text="Hello there, ", time_unix_ms=1
    )
    tool = decode_frame(
        '{"type":"chat:tool_execution","session_id":"s","seq":64,"call_id":"c",'
        '"tool_name":"long_task","status":"progress","fraction":0.4,"note":"step 4"}'
    )
    assert isinstance(tool, ToolExecution) and tool.fraction == 0.4
    done = decode_frame(
        '{"type":"chat:complete","session_id":"s","seq":71,"finish_reason":"stop",'
        '"usage":{"input_tokens":12,"output_tokens":40},"text":"x"}'
    )
    assert isinstance(done, RunCompleted) and done.usage.output_tokens == 40
    assert isinstance(decode_frame('{"type":"welcome","heartbeat_ms":15000}'), Welcome)
    ack = decode_frame('{"type":"ack","ref":"m1","seq":58,"duplicate":true}')
    assert ack == Ack(ref="m1", seq=58, duplicate=True)
    err = decode_frame('{"type":"error","ref":"m1","code":"busy","retryable":true}')
    assert isinstance(err, ErrorReply) and err.code == "busy"


@pytest.mark.parametrize(
    "raw",
    ["not json", "[]", '{"type":"mystery"}', '{"type":"chat:response","seq":1}', '{"seq":1}'],
)
def test_bad_frames_raise_a_protocol_error_naming_the_problem(raw: str) -> None:
    with pytest.raises(ProtocolError, match="bad frame"):
        decode_frame(raw)


def test_error_codes_map_onto_one_tree() -> None:
    assert isinstance(error_from_code("busy"), Busy)
    assert isinstance(error_from_code("invalid_field", "text"), InvalidRequest)
    assert isinstance(error_from_code("not_joined"), NotFound)
    limited = error_from_code("rate_limited", "slow down", retryable=True, retry_after_ms=800)
    assert isinstance(limited, RateLimited) and limited.retry_after_ms == 800
    assert isinstance(error_from_code("something_new"), Unavailable)
    assert all(
        isinstance(error_from_code(c), RequestError) for c in ("forbidden", "unauthenticated")
    )


# ----- conversation: dedup, gaps, assembly -------------------------------------------------


S = "s1"


def run_events(start: int, run: str = "r1", words: tuple[str, ...] = ("Hel", "lo ", "you")):
    """A run's events from seq `start`: accepted, started, one delta per word, completed."""
    seq = start
    events: list[object] = [
        MessageAccepted(session_id=S, seq=seq, run_id=run, message_id="m1", text="hi")
    ]
    seq += 1
    events.append(
        RunStarted(session_id=S, seq=seq, run_id=run, message_id="m1", assistant_message_id="a1")
    )
    for word in words:
        seq += 1
        events.append(ResponseDelta(session_id=S, seq=seq, run_id=run, text=word))
    seq += 1
    events.append(
        RunCompleted(
            session_id=S,
            seq=seq,
            run_id=run,
            finish_reason="stop",
            text="".join(words),
            assistant_message_id="a1",
        )
    )
    return events


def test_assembles_deltas_into_messages_with_their_states() -> None:
    conv = Conversation(S)
    conv.add_local_message("m1", "hi")
    assert conv.messages[0].status == SENDING
    events = run_events(1)
    outcomes = [conv.receive_event(e) for e in events[:4]]  # type: ignore[arg-type]
    assert outcomes == [Outcome.APPLIED] * 4
    user, assistant = conv.messages
    assert (user.status, assistant.status, assistant.text) == ("complete", "streaming", "Hello ")
    assert conv.active_run_id == "r1"
    for e in events[4:]:
        conv.receive_event(e)  # type: ignore[arg-type]
    assert (assistant.message_id, assistant.text, assistant.status) == (
        "a1",
        "Hello you",
        "complete",
    )
    assert conv.active_run_id == "" and conv.last_seq == 6 and conv.corrected_runs == []


def test_repeats_are_ignored_and_batches_advance_by_their_last_seq() -> None:
    conv = Conversation(S)
    for e in run_events(1)[:2]:
        conv.receive_event(e)  # type: ignore[arg-type]
    batch = ResponseDelta(session_id=S, seq=5, from_seq=3, run_id="r1", text="Hello you")
    assert conv.receive_event(batch) is Outcome.APPLIED
    assert conv.last_seq == 5
    # the same events again, one by one (a replay after reconnect): all duplicates
    for e in run_events(1)[:5]:
        assert conv.receive_event(e) is Outcome.DUPLICATE  # type: ignore[arg-type]
    assert conv.assistant_for_run("r1").text == "Hello you"  # type: ignore[union-attr]


def test_a_hole_or_replay_gap_stops_applying_until_history_is_reloaded() -> None:
    conv = Conversation(S)
    events = run_events(1)
    conv.receive_event(events[0])  # type: ignore[arg-type]
    assert conv.receive_event(events[2]) is Outcome.GAP  # type: ignore[arg-type]  # seq 3 after 1
    assert conv.resyncing
    assert conv.receive_event(events[1]) is Outcome.DROPPED  # type: ignore[arg-type]
    history = [
        HistoryMessage(message_id="m1", role="user", text="hi", status="complete", run_id="r1"),
        HistoryMessage(
            message_id="a1", role="assistant", text="Hel", status="streaming", run_id="r1"
        ),
    ]
    conv.receive_history(history, as_of_seq=3)
    assert not conv.resyncing and conv.last_seq == 3 and conv.active_run_id == "r1"
    for e in events[3:]:
        assert conv.receive_event(e) is Outcome.APPLIED  # type: ignore[arg-type]
    assert conv.assistant_for_run("r1").text == "Hello you"  # type: ignore[union-attr]
    assert conv.corrected_runs == []
    gap = ReplayGap(session_id=S, after_seq=6, first_seq=90)
    assert conv.receive_event(gap) is Outcome.GAP and conv.resyncing


def test_a_batch_straddling_the_resume_point_forces_a_resync() -> None:
    conv = Conversation(S)
    for e in run_events(1)[:3]:
        conv.receive_event(e)  # type: ignore[arg-type]
    straddle = ResponseDelta(session_id=S, seq=5, from_seq=3, run_id="r1", text="Hello you")
    assert conv.receive_event(straddle) is Outcome.GAP


def test_non_contiguous_mode_accepts_skipped_seqs_but_not_repeats() -> None:
    conv = Conversation(S, contiguous=False)
    events = run_events(1)
    conv.receive_event(events[0])  # type: ignore[arg-type]
    assert conv.receive_event(events[-1]) is Outcome.APPLIED  # type: ignore[arg-type]
    assert conv.receive_event(events[1]) is Outcome.DUPLICATE  # type: ignore[arg-type]


def test_a_completion_that_disagrees_with_the_deltas_wins_and_is_recorded() -> None:
    conv = Conversation(S)
    events = run_events(1)
    for e in events[:-1]:
        conv.receive_event(e)  # type: ignore[arg-type]
    final = RunCompleted(session_id=S, seq=6, run_id="r1", finish_reason="cancelled", text="Hel")
    conv.receive_event(final)
    item = conv.assistant_for_run("r1")
    assert item is not None and (item.text, item.status) == ("Hel", "cancelled")
    assert conv.corrected_runs == ["r1"]


def test_tool_calls_collect_progress_output_and_result() -> None:
    conv = Conversation(S)
    conv.receive_event(RunStarted(session_id=S, seq=1, run_id="r1", assistant_message_id="a1"))

    def tool(seq: int, status: str, **kw: object) -> ToolExecution:
        return ToolExecution(
            session_id=S,
            seq=seq,
            run_id="r1",
            call_id="c1",
            tool_name="long_task",
            status=status,
            **kw,
        )  # type: ignore[arg-type]

    for e in [
        tool(2, "started", arguments_json='{"steps":3}'),
        tool(3, "progress", fraction=0.5, note="step 2 of 3"),
        tool(4, "output", text="line 1\n"),
        tool(5, "output", text="line 2\n"),
    ]:
        assert conv.receive_event(e) is Outcome.APPLIED
    view = conv.tool_calls["c1"]
    assert (view.status, view.fraction, view.note, view.output) == (
        "output",
        0.5,
        "step 2 of 3",
        "line 1\nline 2\n",
    )
    assert not view.finished
    conv.receive_event(tool(6, "completed", result="done", duration_ms=12.5))
    assert view.finished and view.result == "done" and view.fraction == 1.0
    assert conv.assistant_for_run("r1").tool_calls == ["c1"]  # type: ignore[union-attr]


def test_history_reload_keeps_unsent_messages_and_rebuilds_tool_calls() -> None:
    conv = Conversation(S)
    conv.add_local_message("m9", "still typing")
    conv.receive_history(
        [
            HistoryMessage(message_id="m1", role="user", text="go", status="complete"),
            HistoryMessage(
                message_id="a1",
                role="assistant",
                text="",
                status="complete",
                run_id="r1",
                tool_calls=(("c1", "calculator", '{"e":"1+1"}'),),
            ),
            HistoryMessage(
                message_id="t1", role="tool", text="2", status="complete", run_id="r1", call_id="c1"
            ),
        ],
        as_of_seq=9,
    )
    assert [m.message_id for m in conv.messages] == ["m1", "a1", "t1", "m9"]
    assert conv.tool_calls["c1"].result == "2" and conv.tool_calls["c1"].finished
    assert conv.last_seq == 9
