"""Ask the agent something from backend code and stream the answer (the README's example)."""

import asyncio
import sys

from agent_relay_client.events import ResponseDelta, ToolExecution
from agent_relay_client.grpc import AgentClient


async def main(address: str, question: str) -> None:
    async with AgentClient(address) as agent:
        session = await agent.create_session(title="from a backend")
        run = agent.chat(session.session_id, question)
        async for event in run:
            if isinstance(event, ResponseDelta):
                print(event.text, end="", flush=True)
            elif isinstance(event, ToolExecution) and event.status == "completed":
                print(f"[{event.tool_name} -> {event.result}]")
        print(f"\n({run.completed.finish_reason})")


asyncio.run(
    main(
        sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051",
        sys.argv[2] if len(sys.argv) > 2 else "calc 6 * 7",
    )
)
