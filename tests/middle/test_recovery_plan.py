"""Recovery's pure plan: what a run left in flight still needs, and nothing twice."""

from __future__ import annotations

from agent_relay.v1 import agent_pb2 as pb
from agent_service.context import context_from_history
from agent_service.recovery import plan
from agent_service.store import MessageRecord, RunRecord, StoredToolCall


def ev(run_id: str, **kind: object) -> pb.SessionEvent:
    return pb.SessionEvent(run_id=run_id, **kind)  # type: ignore[arg-type]


def delta(run_id: str, text: str, step: int = 0) -> pb.SessionEvent:
    return ev(run_id, response_delta=pb.ResponseDelta(text=text, step=step))


def tool(run_id: str, call_id: str, **update: object) -> pb.SessionEvent:
    return ev(run_id, tool_execution=pb.ToolExecution(call_id=call_id, tool_name="t", **update))  # type: ignore[arg-type]


RUNNING = RunRecord("r1", "s", "m1", "running")


def test_a_run_cut_mid_reply_ends_with_exactly_the_logged_text() -> None:
    events = [
        ev("r1", run_started=pb.RunStarted()),
        delta("r1", "Hello "),
        delta("r0", "other run "),
        delta("r1", "wor"),
    ]
    todo = plan(RUNNING, events)
    assert [e.WhichOneof("kind") for e in todo.append] == ["run_completed"]
    done = todo.append[0].run_completed
    assert (done.finish_reason, done.text) == (pb.FINISH_REASON_INTERRUPTED, "Hello wor")
    assert done.assistant_message_id == "r1.0"
    assert todo.step_texts == {0: "Hello wor"}


def test_each_tool_call_in_flight_gets_one_cancel_before_the_completion() -> None:
    events = [
        delta("r1", "Let me check", 0),
        tool("r1", "c1", started=pb.ToolStarted()),
        tool("r1", "c2", started=pb.ToolStarted()),
        tool("r1", "c1", progress=pb.ToolProgress(fraction=0.5)),
        tool("r1", "c2", completed=pb.ToolCompleted(result="ok")),
    ]
    todo = plan(RUNNING, events)
    kinds = [(e.WhichOneof("kind"), e.tool_execution.call_id) for e in todo.append]
    assert kinds == [("tool_execution", "c1"), ("run_completed", "")]
    assert todo.append[0].tool_execution.cancelled.reason == "interrupted"
    assert todo.calls_in_flight == [("c1", "t")]


def test_a_run_already_completed_in_the_log_gets_nothing_more() -> None:
    events = [
        delta("r1", "x"),
        tool("r1", "c1", started=pb.ToolStarted()),
        tool("r1", "c1", cancelled=pb.ToolCancelled(reason="interrupted")),
        ev("r1", run_completed=pb.RunCompleted(finish_reason=pb.FINISH_REASON_INTERRUPTED)),
    ]
    assert plan(RUNNING, events).append == []


def test_a_queued_run_that_never_started_names_no_assistant_message() -> None:
    todo = plan(RunRecord("r2", "s", "m2", "queued"), [])
    assert todo.append[0].run_completed.assistant_message_id == ""
    assert todo.append[0].run_completed.text == ""


def message(message_id: str, role: str, text: str = "", **extra: object) -> MessageRecord:
    return MessageRecord("s", message_id, role, text, "r1", "complete", 1, **extra)  # type: ignore[arg-type]


def test_the_model_context_answers_every_tool_call_even_when_history_has_no_result() -> None:
    calls = (StoredToolCall("c1", "calculator", "{}"), StoredToolCall("c2", "python", "{}"))
    history = [
        message("m1", "user", "hi"),
        message("r1.0", "assistant", "calling", tool_calls=calls),
        message("c2", "tool", "42", call_id="c2"),
        message("m2", "user", "again"),
        message("c9", "tool", "an orphan result", call_id="c9"),
    ]
    context = context_from_history(history)
    shape = [(m.role, m.call_id) for m in context]
    assert shape == [
        ("user", ""),
        ("assistant", ""),
        ("tool", "c2"),
        ("tool", "c1"),  # made up: the call never got a result stored
        ("user", ""),
    ]
    assert "not_finished" in context[3].content and context[3].name == "calculator"
