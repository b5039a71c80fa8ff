"""Tool latency: from a tool request to its `started` event, and the python tool's start-up.

Three tables, each row beside a baseline measured in the same run:

1. In process: ToolCallRunner from creating the call to its `started` event,
   beside the bare cost of starting an asyncio task and reaching its first line.
2. Over gRPC: ExecuteTool against the real agent service (a separate process),
   from sending StartTool to receiving `started` and to the final event, beside a
   bare grpc.aio server (another process) that answers StartTool with `started`
   and `completed` at once.
3. The python tool: a whole call of `pass` unconfined, with Landlock only, and with
   Landlock plus isolation (namespaces, own uid, seccomp: the default), and the time
   to the first output of `print(1)`, beside spawning `python -c pass` and
   `python -I -c pass` with asyncio.

    .venv/bin/python bench/tool_bench.py [--calls 300] [--spawns 30] [--python-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service.config import ServiceSettings
from agent_service.tools.builtins import build_registry
from agent_service.tools.executor import ToolCallRunner
from bench.common import percentile, summary_ms, table

REPO = Path(__file__).resolve().parents[1]
CALC_ARGS = json.dumps({"expression": "2 + 2"})


def summary_us(values_s: list[float]) -> str:
    """`p50 / p99` in microseconds: the in-process steps are far below a millisecond."""
    return f"{percentile(values_s, 0.5) * 1e6:8.1f} / {percentile(values_s, 0.99) * 1e6:8.1f}"


# --- 1. in process -----------------------------------------------------------------------


async def in_process(calls: int) -> list[list[object]]:
    registry = build_registry(ServiceSettings(workspace_dir=REPO))
    to_started: list[float] = []
    whole: list[float] = []
    for i in range(calls):
        marks: dict[str, float] = {}

        def emit(event: pb.ToolExecution, marks: dict[str, float] = marks) -> None:
            marks.setdefault(str(event.WhichOneof("update")), time.perf_counter())

        begun = time.perf_counter()
        runner = ToolCallRunner(
            registry, call_id=f"c{i}", tool_name="calculator", arguments_json=CALC_ARGS, emit=emit
        )
        await asyncio.create_task(runner.run())
        to_started.append(marks["started"] - begun)
        whole.append(marks["completed"] - begun)

    baseline: list[float] = []
    for _ in range(calls):
        reached: list[float] = []

        async def first_line(reached: list[float] = reached) -> None:
            reached.append(time.perf_counter())

        begun = time.perf_counter()
        await asyncio.create_task(first_line())
        baseline.append(reached[0] - begun)
    return [
        ["baseline: create_task to its first line", summary_us(baseline)],
        ["ToolCallRunner: request to `started`", summary_us(to_started)],
        ["ToolCallRunner: calculator, request to `completed`", summary_us(whole)],
    ]


# --- 2. over gRPC ------------------------------------------------------------------------


class BareToolServicer(agent_pb2_grpc.AgentServiceServicer):
    """The floor: answers StartTool with `started` and `completed`, doing nothing else."""

    async def ExecuteTool(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for request in request_iterator:
            start = request.start
            call = pb.ToolExecution(call_id=start.call_id, tool_name=start.tool_name)
            started = pb.ToolExecution()
            started.CopyFrom(call)
            started.started.arguments_json = start.arguments_json
            yield pb.ExecuteToolResponse(execution=started)
            call.completed.result = "4"
            yield pb.ExecuteToolResponse(execution=call)
            return


async def serve_bare() -> None:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(BareToolServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"bare tool server listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def start_process(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on" in line:
            return process, line.rsplit(" ", 1)[1].strip()
    raise RuntimeError(f"{argv} did not start (exit code {process.wait()})")


def one_start(i: int) -> AsyncIterator[pb.ExecuteToolRequest]:
    async def requests() -> AsyncIterator[pb.ExecuteToolRequest]:
        yield pb.ExecuteToolRequest(
            start=pb.StartTool(
                call_id=f"bench-{i}", tool_name="calculator", arguments_json=CALC_ARGS
            )
        )

    return requests()


async def one_call(stub: agent_pb2_grpc.AgentServiceStub, i: int) -> tuple[float, float]:
    """(request to the first event, which is `started`; request to the final event)."""
    begun = time.perf_counter()
    marks: list[float] = []
    async for _ in stub.ExecuteTool(one_start(i)):
        marks.append(time.perf_counter())
    return marks[0] - begun, marks[-1] - begun


async def over_grpc(calls: int) -> list[list[object]]:
    """Both servers run at once; calls alternate between them, so load drift hits both."""
    with tempfile.TemporaryDirectory() as folder:
        service_argv = [
            sys.executable, "-m", "agent_service", "--listen", "127.0.0.1:0",
            "--log-level", "WARNING", "--store-url", f"sqlite:///{folder}/bench.sqlite3",
            "--workspace-dir", folder, "--metrics-listen", "127.0.0.1:0",
        ]  # fmt: skip
        names = ("bare grpc.aio ExecuteTool", "agent service")
        processes = [start_process([sys.executable, __file__, "--serve-bare"])]
        try:
            processes.append(start_process(service_argv))
            channels = [grpc.aio.insecure_channel(address) for _, address in processes]
            stubs = [agent_pb2_grpc.AgentServiceStub(channel) for channel in channels]
            samples: list[tuple[list[float], list[float]]] = [([], []), ([], [])]
            for i in range(calls + 10):  # the first 10 warm both up
                for k, stub in enumerate(stubs):
                    started, whole = await one_call(stub, i)
                    if i >= 10:
                        samples[k][0].append(started)
                        samples[k][1].append(whole)
            for channel in channels:
                await channel.close()
        finally:
            for process, _ in processes:
                process.terminate()
                process.wait(timeout=10)
    rows: list[list[object]] = []
    for name, (to_started, whole) in zip(names, samples, strict=True):
        rows.append([f"{name}: request to `started`", summary_ms(to_started)])
        rows.append([f"{name}: calculator, request to final event", summary_ms(whole)])
    return rows


# --- 3. the python tool's start-up ------------------------------------------------------


async def spawn(*argv: str) -> float:
    begun = time.perf_counter()
    process = await asyncio.create_subprocess_exec(*argv)
    await process.wait()
    return time.perf_counter() - begun


async def python_tool(code: str, registry: object) -> tuple[float, float]:
    """(request to first output, request to the final event) of one python call."""
    marks: dict[str, float] = {}

    def emit(event: pb.ToolExecution) -> None:
        marks.setdefault(str(event.WhichOneof("update")), time.perf_counter())

    begun = time.perf_counter()
    runner = ToolCallRunner(
        registry,  # type: ignore[arg-type]
        call_id="p",
        tool_name="python",
        arguments_json=json.dumps({"code": code}),
        emit=emit,
    )
    outcome = await asyncio.create_task(runner.run())
    assert outcome.status == "completed", outcome
    first = marks.get("output", marks["completed"])
    return first - begun, marks["completed"] - begun


async def python_startup(spawns: int) -> list[list[object]]:
    registry = build_registry(ServiceSettings(workspace_dir=REPO))
    landlock_only = build_registry(ServiceSettings(workspace_dir=REPO, python_isolation="off"))
    unconfined = build_registry(
        ServiceSettings(workspace_dir=REPO, python_sandbox="off", python_isolation="off")
    )
    tool_pass_off: list[float] = []
    tool_pass_landlock: list[float] = []
    bare: list[float] = []
    isolated: list[float] = []
    tool_pass: list[float] = []
    tool_first_output: list[float] = []
    for _ in range(spawns):  # interleaved, so drift in the machine's load hits all alike
        bare.append(await spawn(sys.executable, "-c", "pass"))
        isolated.append(await spawn(sys.executable, "-I", "-c", "pass"))
        tool_pass.append((await python_tool("pass", registry))[1])
        tool_pass_off.append((await python_tool("pass", unconfined))[1])
        tool_pass_landlock.append((await python_tool("pass", landlock_only))[1])
        tool_first_output.append((await python_tool("print(1)", registry))[0])
    return [
        ["baseline: spawn + wait `python -c pass`", summary_ms(bare)],
        ["baseline: spawn + wait `python -I -c pass`", summary_ms(isolated)],
        ["python tool, unconfined: `pass`, request to `completed`", summary_ms(tool_pass_off)],
        ["python tool, Landlock only: `pass`, to `completed`", summary_ms(tool_pass_landlock)],
        ["python tool, Landlock + isolation: `pass`, to `completed`", summary_ms(tool_pass)],
        ["python tool: `print(1)`, request to first output", summary_ms(tool_first_output)],
    ]


async def main(calls: int, spawns: int, python_only: bool = False) -> None:
    header = ["path", "p50 / p99 ms"]
    if python_only:
        table(
            f"The python tool's start-up, {spawns} runs each", header, await python_startup(spawns)
        )
        return
    table(
        f"In process, {calls} sequential calls", ["path", "p50 / p99 us"], await in_process(calls)
    )
    table(f"ExecuteTool over gRPC, {calls} sequential calls", header, await over_grpc(calls))
    table(f"The python tool's start-up, {spawns} runs each", header, await python_startup(spawns))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300, help="tool calls per row")
    parser.add_argument("--spawns", type=int, default=30, help="process spawns per row")
    parser.add_argument("--python-only", action="store_true", help="only the python table")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        asyncio.run(serve_bare())
    else:
        calls, spawns = max(1, min(args.calls, 5_000)), max(1, min(args.spawns, 500))
        asyncio.run(main(calls, spawns, args.python_only))
