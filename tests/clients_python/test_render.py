"""What the terminal chat prints for a sequence of updates (pure: a StringIO is the screen)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from agent_relay_client.conversation import Conversation, HistoryMessage
from agent_relay_client.events import (
    MessageAccepted,
    ResponseDelta,
    RunCompleted,
    RunStarted,
    ToolExecution,
    UpstreamChanged,
)
from agent_relay_client.render import Renderer
from agent_relay_client.resilient import EventApplied, HistoryLoaded
from tests.support.service import ServiceProcess
from tests.support.timing import scaled

S = "s1"


def feed(renderer: Renderer, conv: Conversation, *events: object) -> None:
    for event in events:
        conv.receive_event(event)  # type: ignore[arg-type]
        renderer.receive(EventApplied(event, conv))  # type: ignore[arg-type]


def test_a_reply_with_a_tool_call_reads_naturally() -> None:
    screen = io.StringIO()
    conv, renderer = Conversation(S), Renderer(screen, S)
    renderer.own_messages.add("m1")

    def tool(seq: int, status: str, **kw: object) -> ToolExecution:
        return ToolExecution(
            session_id=S,
            seq=seq,
            run_id="r",
            call_id="c",
            tool_name="long_task",
            status=status,
            **kw,
        )  # type: ignore[arg-type]

    feed(
        renderer,
        conv,
        MessageAccepted(session_id=S, seq=1, run_id="r", message_id="m1", text="go"),
        RunStarted(session_id=S, seq=2, run_id="r"),
        ResponseDelta(session_id=S, seq=3, run_id="r", text="Working "),
        ResponseDelta(session_id=S, seq=4, run_id="r", text="on it."),
        tool(5, "started", arguments_json='{"seconds": 2}'),
        tool(6, "progress", fraction=0.5, note="step 1 of 2"),
        tool(7, "output", text="line one\nline two\n"),
        tool(8, "completed", result="done", duration_ms=2001.4),
        ResponseDelta(session_id=S, seq=9, run_id="r", text="All done."),
        RunCompleted(
            session_id=S, seq=10, run_id="r", finish_reason="stop", text="Working on it.All done."
        ),
    )
    assert screen.getvalue() == (
        "agent> Working on it.\n"
        "  [tool long_task(seconds=2)]\n"
        "  [long_task 50% step 1 of 2]\n"
        "  | line one\n"
        "  | line two\n"
        "  [long_task done in 2001 ms: done]\n"
        "agent> All done.\n"
    )


def test_a_cancelled_reply_and_a_message_from_elsewhere_are_marked() -> None:
    screen = io.StringIO()
    conv, renderer = Conversation(S), Renderer(screen, S)
    feed(
        renderer,
        conv,
        MessageAccepted(session_id=S, seq=1, run_id="r", message_id="other", text="hi from a tab"),
        RunStarted(session_id=S, seq=2, run_id="r"),
        ResponseDelta(session_id=S, seq=3, run_id="r", text="Hel"),
        RunCompleted(session_id=S, seq=4, run_id="r", finish_reason="cancelled", text="Hel"),
    )
    assert screen.getvalue() == "you> hi from a tab\nagent> Hel [cancelled]\n"


def test_after_a_gap_only_the_missing_text_is_printed() -> None:
    screen = io.StringIO()
    conv, renderer = Conversation(S), Renderer(screen, S)
    feed(
        renderer,
        conv,
        RunStarted(session_id=S, seq=1, run_id="r"),
        ResponseDelta(session_id=S, seq=2, run_id="r", text="The quick "),
    )
    conv.receive_history(
        [
            HistoryMessage(
                message_id="a",
                role="assistant",
                text="The quick brown fox",
                status="complete",
                run_id="r",
            )
        ],
        as_of_seq=9,
    )
    renderer.receive(HistoryLoaded(conv))
    assert screen.getvalue() == "agent> The quick brown fox\n"


def test_history_is_shown_and_a_streaming_reply_stays_open() -> None:
    screen = io.StringIO()
    conv, renderer = Conversation(S), Renderer(screen, S)
    conv.receive_history(
        [
            HistoryMessage(message_id="u", role="user", text="calc 1+2", status="complete"),
            HistoryMessage(
                message_id="a",
                role="assistant",
                text="",
                status="complete",
                run_id="r1",
                tool_calls=(("c", "calculator", '{"expression": "1+2"}'),),
            ),
            HistoryMessage(message_id="t", role="tool", text="3", status="complete", call_id="c"),
            HistoryMessage(
                message_id="a2", role="assistant", text="It is 3.", status="complete", run_id="r1"
            ),
            HistoryMessage(message_id="u2", role="user", text="more", status="complete"),
            HistoryMessage(
                message_id="a3", role="assistant", text="Stre", status="streaming", run_id="r2"
            ),
        ],
        as_of_seq=20,
    )
    renderer.show_history(conv)
    feed(renderer, conv, ResponseDelta(session_id=S, seq=21, run_id="r2", text="aming"))
    assert screen.getvalue() == (
        "you> calc 1+2\n"
        '  [tool calculator(expression="1+2")]\n'
        "  [result: 3]\n"
        "agent> It is 3.\n"
        "you> more\n"
        "agent> Streaming"
    )


def test_history_prints_in_live_order_with_its_marks() -> None:
    screen = io.StringIO()
    conv, renderer = Conversation(S), Renderer(screen, S)
    call = (("c", "long_task", '{"seconds": 2}'),)
    conv.receive_history(
        [
            HistoryMessage(message_id="u", role="user", text="go", status="complete"),
            HistoryMessage(
                message_id="r1.0",
                role="assistant",
                text="Calling long_task.",
                status="complete",
                run_id="r1",
                tool_calls=call,
            ),
            HistoryMessage(
                message_id="t",
                role="tool",
                text="cancelled (requested)",
                status="failed",
                call_id="c",
            ),
            HistoryMessage(
                message_id="r1.1", role="assistant", text="Done.", status="complete", run_id="r1"
            ),
            HistoryMessage(message_id="u2", role="user", text="stop at once", status="complete"),
            HistoryMessage(
                message_id="r2.0", role="assistant", text="", status="cancelled", run_id="r2"
            ),
            HistoryMessage(message_id="u3", role="user", text="and now", status="complete"),
            HistoryMessage(
                message_id="r3.0", role="assistant", text="Half", status="interrupted", run_id="r3"
            ),
        ],
        as_of_seq=30,
    )
    renderer.show_history(conv)
    assert screen.getvalue() == (
        "you> go\n"
        "agent> Calling long_task.\n"
        "  [tool long_task(seconds=2)]\n"
        "  [failed: cancelled (requested)]\n"
        "agent> Done.\n"
        "you> stop at once\n"
        "agent> [cancelled]\n"
        "you> and now\n"
        "agent> Half [interrupted]\n"
    )


def test_the_agent_services_state_is_told_between_the_lines_of_a_reply() -> None:
    screen = io.StringIO()
    conv, renderer = Conversation(S), Renderer(screen, S)
    feed(
        renderer,
        conv,
        RunStarted(session_id=S, seq=1, run_id="r"),
        ResponseDelta(session_id=S, seq=2, run_id="r", text="Before "),
    )
    renderer.receive(UpstreamChanged(session_id=S, state="unavailable"))
    renderer.receive(UpstreamChanged(session_id="other", state="unavailable"))
    renderer.receive(UpstreamChanged(session_id=S, state="available"))
    feed(renderer, conv, ResponseDelta(session_id=S, seq=3, run_id="r", text="after."))
    assert screen.getvalue() == (
        "agent> Before \n"
        "[the agent service is unavailable: waiting for it to come back]\n"
        "[the agent service is back]\n"
        "agent> after."
    )


def test_the_readme_backend_example_runs(service: ServiceProcess) -> None:
    example = Path(__file__).resolve().parents[2] / "clients/python/examples/backend_chat.py"
    done = subprocess.run(
        [sys.executable, str(example), service.address, "calc 6 * 7"],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr
    assert "[calculator -> 42]" in done.stdout
    assert done.stdout.rstrip().endswith("(stop)")


def test_on_a_terminal_progress_redraws_one_line() -> None:
    screen = io.StringIO()
    conv, renderer = Conversation(S), Renderer(screen, S, live_progress=True)

    def tool(seq: int, status: str, **kw: object) -> ToolExecution:
        return ToolExecution(
            session_id=S, seq=seq, run_id="r", call_id="c", tool_name="t", status=status, **kw
        )  # type: ignore[arg-type]

    feed(
        renderer,
        conv,
        RunStarted(session_id=S, seq=1, run_id="r"),
        tool(2, "started"),
        tool(3, "progress", fraction=0.1),
        tool(4, "progress", fraction=0.2),
        tool(5, "completed", result="ok"),
    )
    assert screen.getvalue() == (
        "agent> \n  [tool t()]\n  [t 10%]\r\x1b[K  [t 20%]\n  [t done in 0 ms: ok]\n"
    )
