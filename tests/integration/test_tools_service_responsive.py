"""Against the real service: the tool calls the attacks used to freeze it leave the health
check and other calls answering (issue 12, items 3 and 4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

BAD_GLOB = "*?" * 9 + "Q"  # about 3 s of backtracking per 40-character name, GIL held


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root: Path = tmp_path_factory.mktemp("responsive")
    workspace = root / "workspace"
    workspace.mkdir()
    for i in range(3):
        (workspace / f"{'a' * 40}{i}.txt").write_text("needle\n")
    proc = start_agent_service(root, "--workspace-dir", str(workspace))
    yield proc
    proc.stop()


async def execute(stub: agent_pb2_grpc.AgentServiceStub, tool: str, args: dict) -> pb.ToolExecution:
    async def one():
        yield pb.ExecuteToolRequest(
            start=pb.StartTool(tool_name=tool, arguments_json=json.dumps(args))
        )

    events = [r.execution async for r in stub.ExecuteTool(one())]
    return events[-1]


@pytest.mark.parametrize(
    ("tool", "args", "final"),
    [
        ("calculator", {"expression": "round(1, -10000000)"}, "failed"),
        ("search_files", {"query": "needle", "glob": BAD_GLOB}, "completed"),
    ],
)
async def test_the_health_check_answers_while_a_hostile_call_runs(
    service: ServiceProcess, tool: str, args: dict, final: str
) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=scaled(10))  # warm
        hostile = asyncio.create_task(execute(stub, tool, args))
        await asyncio.sleep(0.05)  # the call has reached the service
        answered = 0
        for _ in range(10):  # each in far less than 2 s unless the service's loop stalls
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=scaled(2))
            answered += reply.status == health_pb2.HealthCheckResponse.SERVING
        assert answered == 10
        outcome = await asyncio.wait_for(hostile, scaled(30))
        assert outcome.WhichOneof("update") == final
