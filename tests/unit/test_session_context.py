"""SessionContext, pure: when the memory vouches for a run's context and when the store must."""

from __future__ import annotations

from agent_service.context import SessionContext, context_from_history
from agent_service.store import MessageRecord, StoredToolCall


def user(run_id: str, text: str) -> MessageRecord:
    return MessageRecord("s", f"u-{run_id}", "user", text, run_id, "complete", 1)


def assistant(run_id: str, text: str, *calls: str) -> MessageRecord:
    tool_calls = tuple(StoredToolCall(c, "calculator", "{}") for c in calls)
    return MessageRecord("s", f"{run_id}.0", "assistant", text, run_id, "complete", 1, tool_calls)


def tool(run_id: str, call_id: str, text: str) -> MessageRecord:
    return MessageRecord("s", call_id, "tool", text, run_id, "complete", 1, call_id=call_id)


def loaded(history: list[MessageRecord], run_id: str) -> SessionContext:
    """A context loaded from the store for `run_id` (history ends with its user message)."""
    context = SessionContext()
    context.receive_accepted(history[-1])
    assert context.start(run_id) is None, "nothing is known before the store was read"
    context.load(run_id, history, context.generation)
    return context


def test_a_run_after_a_loaded_one_gets_its_context_from_memory() -> None:
    history = [user("r1", "hi")]
    context = loaded(history, "r1")
    reply = assistant("r1", "calling", "c1")
    result = tool("r1", "c1", "2")
    for record in (reply, result):
        context.receive_stored("r1", record)
    context.receive_run_ended("r1")
    context.receive_accepted(user("r2", "and?"))
    got = context.start("r2")
    assert got == context_from_history([*history, reply, result, user("r2", "and?")])


def test_runs_ended_unstarted_keep_their_place_and_a_run_out_of_order_reads_the_store() -> None:
    context = loaded([user("r1", "hi")], "r1")
    context.receive_run_ended("r1")
    for run_id in ("r2", "r3", "r4"):
        context.receive_accepted(user(run_id, run_id))
    assert context.start("r3") is None, "r2 has neither started nor ended"
    context.receive_ended_unstarted("r2")
    got = context.start("r3")
    assert got is not None
    assert [m.content for m in got] == ["hi", "r2", "r3"]


def test_a_run_taken_over_or_an_unknown_unstarted_run_reads_the_store() -> None:
    context = loaded([user("r1", "hi")], "r1")
    context.receive_run_ended("r1")
    assert context.start("r-elsewhere") is None
    context.receive_ended_unstarted("r-elsewhere")
    context.receive_accepted(user("r2", "x"))
    assert context.start("r2") is None


def test_a_failed_write_a_foreign_write_or_an_update_in_place_forget_the_context() -> None:
    for spoil in (
        lambda c: c.receive_write_failed("r1"),
        lambda c: c.receive_stored("r0", assistant("r0", "late")),
        lambda c: c.receive_stored("r1", assistant("r1", "again")),
    ):
        context = loaded([user("r1", "hi")], "r1")
        context.receive_stored("r1", assistant("r1", "first"))
        spoil(context)
        context.receive_run_ended("r1")
        context.receive_accepted(user("r2", "x"))
        assert not context.known
        assert context.start("r2") is None


def test_a_load_read_before_an_invalidate_is_not_kept() -> None:
    context = SessionContext()
    context.receive_accepted(user("r1", "hi"))
    generation = context.generation
    context.invalidate()  # e.g. recovery wrote while the store was being read
    got = context.load("r1", [user("r1", "hi")], generation)
    assert [m.content for m in got] == ["hi"]
    assert not context.known


def test_a_run_still_writing_when_the_next_starts_sends_it_to_the_store() -> None:
    context = loaded([user("r1", "hi")], "r1")
    context.receive_accepted(user("r2", "x"))
    assert context.start("r2") is None  # r1 has not said it stored everything
