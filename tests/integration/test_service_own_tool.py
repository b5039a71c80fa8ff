"""A tool of one's own, registered in a few lines, served in-process on port 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service.config import load
from agent_service.server import create_server
from agent_service.tools.base import ToolContext, ToolError
from agent_service.tools.builtins import build_registry


async def test_a_registered_tool_is_listed_and_called_by_the_model(tmp_path: Path) -> None:
    settings = load(
        [
            "--listen",
            "127.0.0.1:0",
            "--store-url",
            f"sqlite:///{tmp_path}/s.db",
            "--workspace-dir",
            str(tmp_path / "ws"),
            "--demo-tokens-per-s",
            "0",
        ],
        env={},
    )
    registry = build_registry(settings)

    @registry.tool(
        name="word_count",
        description="Count the words of a text.",
        parameters={
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": False,
        },
        timeout_s=5,
    )
    async def word_count(args: dict[str, Any], ctx: ToolContext) -> str:
        if not args["text"].strip():
            raise ToolError("the text is empty", "invalid_arguments")
        ctx.progress(0.5, "counting")
        return str(len(args["text"].split()))

    running = await create_server(settings, tools=registry)
    await running.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            names = [t.name for t in (await stub.ListTools(pb.ListToolsRequest())).tools]
            assert "word_count" in names and "calculator" in names
            session = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
            args = json.dumps({"text": "one two three"})

            async def requests():
                yield pb.ChatRequest(join=pb.JoinSession(session_id=session))
                yield pb.ChatRequest(
                    send=pb.SendMessage(
                        session_id=session, message_id="m1", text=f"/tool word_count {args}"
                    )
                )

            events = [e async for r in stub.Chat(requests()) for e in r.events]
            tools = [e.tool_execution for e in events if e.HasField("tool_execution")]
            assert [t.WhichOneof("update") for t in tools] == ["started", "progress", "completed"]
            assert tools[-1].completed.result == "3"
            assert "word_count returned: 3" in events[-1].run_completed.text
    finally:
        await running.stop(1.0)
