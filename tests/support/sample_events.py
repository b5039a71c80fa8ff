"""One SessionEvent of every kind and every update, each field set: for tests that check a
mapping of the proto (the edge's JSON frames, the Python client's types) covers it all."""

from __future__ import annotations

from agent_relay.v1 import agent_pb2 as pb


def sample_events() -> list[pb.SessionEvent]:
    """Every event kind (and every tool update) with every field set."""
    envelope = {"session_id": "s_1", "seq": 7, "run_id": "r_1", "time_unix_ms": 1767000000000}
    tool = {"call_id": "c_1", "tool_name": "long_task"}
    return [
        pb.SessionEvent(
            **envelope,
            message_accepted=pb.MessageAccepted(
                message_id="m_1", text="hi", run_id="r_1", queued=True, seq=7, duplicate=False
            ),
        ),
        pb.SessionEvent(
            **envelope,
            run_started=pb.RunStarted(message_id="m_1", assistant_message_id="a_1", model="demo"),
        ),
        pb.SessionEvent(**envelope, response_delta=pb.ResponseDelta(text="Hel", step=1)),
        pb.SessionEvent(
            **envelope,
            tool_execution=pb.ToolExecution(
                **tool, started=pb.ToolStarted(arguments_json='{"n": 3}')
            ),
        ),
        pb.SessionEvent(
            **envelope,
            tool_execution=pb.ToolExecution(
                **tool, progress=pb.ToolProgress(fraction=0.5, note="half")
            ),
        ),
        pb.SessionEvent(
            **envelope,
            tool_execution=pb.ToolExecution(
                **tool, output=pb.ToolOutput(text="out", stream="stdout")
            ),
        ),
        pb.SessionEvent(
            **envelope,
            tool_execution=pb.ToolExecution(
                **tool, completed=pb.ToolCompleted(result="42", duration_ms=3.5)
            ),
        ),
        pb.SessionEvent(
            **envelope,
            tool_execution=pb.ToolExecution(
                **tool, failed=pb.ToolFailed(code="timeout", message="late", duration_ms=9.0)
            ),
        ),
        pb.SessionEvent(
            **envelope,
            tool_execution=pb.ToolExecution(**tool, cancelled=pb.ToolCancelled(reason="requested")),
        ),
        pb.SessionEvent(
            **envelope,
            run_error=pb.RunError(
                code="model_rate_limited", message="slow", retryable=True, retry_after_ms=2000
            ),
        ),
        pb.SessionEvent(
            **envelope,
            run_completed=pb.RunCompleted(
                finish_reason=pb.FINISH_REASON_STOP,
                usage=pb.Usage(input_tokens=3, output_tokens=4),
                assistant_message_id="a_1",
                text="Hello",
                duration_ms=12.5,
            ),
        ),
        pb.SessionEvent(
            session_id="s_1", seq=0, replay_gap=pb.ReplayGap(after_seq=3, first_seq=900)
        ),
    ]
