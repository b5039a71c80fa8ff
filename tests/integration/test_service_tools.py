"""Tools through the real service: the agent loop, concurrency, cancel, ExecuteTool."""

from __future__ import annotations

import asyncio
import json

from agent_relay.v1 import agent_pb2 as pb
from tests.support.chat import assembled_text, joined_session


def tool_events(events, call_id=None):
    return [
        e.tool_execution
        for e in events
        if e.HasField("tool_execution") and (call_id is None or e.tool_execution.call_id == call_id)
    ]


async def test_a_multi_step_run_with_concurrent_tool_calls(stub):
    session, chat = await joined_session(stub)
    text = "calc 6 * 7\nlong task 0.6s\nlong task 0.6 seconds\nsearch for TODO"
    run_id = (await chat.send(session, "m1", text)).accepted.run_id
    done = await chat.wait_completed(session, run_id)
    events = chat.events[session]
    tools = tool_events(events)
    calls = {t.call_id: t.tool_name for t in tools}
    assert sorted(calls.values()) == ["calculator", "long_task", "long_task", "search_files"]
    # all four started before any long task finished: they ran concurrently
    order = [(t.call_id, t.WhichOneof("update")) for t in tools]
    long_calls = [c for c, name in calls.items() if name == "long_task"]
    first_long_done = min(order.index((c, "completed")) for c in long_calls)
    assert all(order.index((c, "started")) < first_long_done for c in calls)
    assert any(t.HasField("progress") and 0 < t.progress.fraction < 1 for t in tools)
    results = {calls[t.call_id]: t.completed.result for t in tools if t.HasField("completed")}
    assert results["calculator"] == "42"
    assert "notes.txt:2" in results["search_files"]
    # the model saw the results and answered in a second step
    steps = {e.response_delta.step for e in events if e.HasField("response_delta")}
    assert steps == {0, 1}
    assert "calculator returned: 42" in done.run_completed.text
    assert done.run_completed.text == assembled_text(events, run_id)
    history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session))
    roles = [m.role for m in history.messages]
    assert roles == [pb.ROLE_USER, pb.ROLE_ASSISTANT] + [pb.ROLE_TOOL] * 4 + [pb.ROLE_ASSISTANT]
    await chat.close()


async def test_a_failing_tool_becomes_its_result_and_the_run_goes_on(stub):
    session, chat = await joined_session(stub)
    run_id = (await chat.send(session, "m1", "calc 1 / 0")).accepted.run_id
    done = await chat.wait_completed(session, run_id)
    failed = [t for t in tool_events(chat.events[session]) if t.HasField("failed")]
    assert len(failed) == 1 and failed[0].failed.message
    assert done.run_completed.finish_reason == pb.FINISH_REASON_STOP
    assert "error" in done.run_completed.text
    await chat.close()


async def test_cancelling_one_tool_call_leaves_the_run_going(stub):
    session, chat = await joined_session(stub)
    run_id = (await chat.send(session, "m1", "long task 30s\ncalc 2 + 2")).accepted.run_id
    started = await chat.wait_for(
        session,
        lambda e: e.HasField("tool_execution") and e.tool_execution.tool_name == "long_task",
    )
    call_id = started.tool_execution.call_id
    response = await stub.Cancel(pb.CancelRequest(session_id=session, call_id=call_id))
    assert response.cancelled
    done = await chat.wait_completed(session, run_id)
    mine = tool_events(chat.events[session], call_id)
    assert mine[-1].WhichOneof("update") == "cancelled"
    assert mine[-1].cancelled.reason == "requested"
    assert done.run_completed.finish_reason == pb.FINISH_REASON_STOP
    assert "calculator returned: 4" in done.run_completed.text
    await chat.close()


async def test_cancelling_the_run_cancels_its_running_tools(stub):
    session, chat = await joined_session(stub)
    run_id = (await chat.send(session, "m1", "python: import time; time.sleep(60)")).accepted.run_id
    await chat.wait_for(session, lambda e: e.HasField("tool_execution"))
    await chat.command(cancel_run=pb.CancelRun(session_id=session))
    done = await chat.wait_completed(session, run_id)
    final = tool_events(chat.events[session])[-1]
    assert final.WhichOneof("update") == "cancelled"
    assert final.cancelled.reason == "run_cancelled"
    assert done.run_completed.finish_reason == pb.FINISH_REASON_CANCELLED
    await chat.close()


async def test_execute_tool_streams_progress_and_cancels_on_the_same_stream(stub):
    requests: asyncio.Queue = asyncio.Queue()

    async def request_stream():
        while (item := await requests.get()) is not None:
            yield item

    await requests.put(
        pb.ExecuteToolRequest(
            start=pb.StartTool(
                tool_name="long_task", arguments_json=json.dumps({"seconds": 20, "steps": 40})
            )
        )
    )
    updates = []
    async for response in stub.ExecuteTool(request_stream()):
        execution = response.execution
        updates.append(execution.WhichOneof("update"))
        # Cancel once, on the third progress: a second cancel sent after the final update
        # races the end of the call, and a client that writes to a finished call fails.
        if updates[-1] == "progress" and updates.count("progress") == 3:
            await requests.put(
                pb.ExecuteToolRequest(cancel=pb.CancelToolCall(call_id=execution.call_id))
            )
    await requests.put(None)
    assert updates[0] == "started"
    assert updates[-1] == "cancelled"
    assert updates.count("progress") >= 3


async def test_execute_tool_with_bad_arguments_fails_naming_the_problem(stub):
    async def one():
        yield pb.ExecuteToolRequest(
            start=pb.StartTool(tool_name="calculator", arguments_json=json.dumps({"expr": "1"}))
        )

    events = [r.execution async for r in stub.ExecuteTool(one())]
    assert [e.WhichOneof("update") for e in events] == ["started", "failed"]
    assert events[-1].failed.code == "invalid_arguments"
    assert "expression" in events[-1].failed.message


async def test_list_tools_gives_each_tools_argument_schema(stub):
    tools = {t.name: t for t in (await stub.ListTools(pb.ListToolsRequest())).tools}
    schema = json.loads(tools["calculator"].parameters_json_schema)
    assert schema["type"] == "object" and "expression" in schema["properties"]
    assert tools["python"].timeout_s > 0


async def test_python_output_is_the_programs_own_while_chats_stream(stub):
    """Each python call's result is what its program printed, however busy gRPC is.

    A child the service's loop forks (libuv forks; CPython's subprocess uses vfork) ran
    gRPC's fork handlers while other threads were in gRPC: about one child in eight
    printed nothing or a gRPC check failure instead of its program's output (23 of 40 calls
    here were killed by SIGSEGV before the fix).
    """
    chats = [await joined_session(stub) for _ in range(2)]

    async def chatter(session, chat):
        for i in range(100):
            run_id = (await chat.send(session, f"m{i}", "hello")).accepted.run_id
            await chat.wait_completed(session, run_id)

    streams = [asyncio.create_task(chatter(session, chat)) for session, chat in chats]
    results = []
    for i in range(12):
        outcome = await execute_one(stub, "python", {"code": f"print({i} * 2)"})
        results.append(outcome.completed.result if outcome.HasField("completed") else outcome)
    for task in streams:
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    for _, chat in chats:
        await chat.close()
    wrong = [(i, r) for i, r in enumerate(results) if str(i * 2) not in str(r) or "Check" in str(r)]
    assert wrong == []


async def execute_one(stub, tool: str, args: dict) -> pb.ToolExecution:
    async def one():
        yield pb.ExecuteToolRequest(
            start=pb.StartTool(tool_name=tool, arguments_json=json.dumps(args))
        )

    return [r.execution async for r in stub.ExecuteTool(one())][-1]
