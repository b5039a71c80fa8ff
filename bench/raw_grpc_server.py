"""Baseline: a bare grpc.aio server on the same contract that streams N deltas per message.

It answers each SendMessage on a Chat stream with `--words` ResponseDelta events, one
per ChatResponse, as fast as it can: the floor the agent service stands beside.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc


class RawServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, words: int) -> None:
        self.words = words

    async def Chat(self, request_iterator, context):
        async for request in request_iterator:
            if request.WhichOneof("command") != "send":
                yield pb.ChatResponse(replies=[pb.CommandReply(request_id=request.request_id)])
                continue
            session = request.send.session_id
            for seq in range(1, self.words + 1):
                yield pb.ChatResponse(
                    events=[
                        pb.SessionEvent(
                            session_id=session,
                            seq=seq,
                            response_delta=pb.ResponseDelta(text="word "),
                        )
                    ]
                )
            yield pb.ChatResponse(
                events=[
                    pb.SessionEvent(
                        session_id=session, seq=self.words + 1, run_completed=pb.RunCompleted()
                    )
                ]
            )


async def main(words: int) -> None:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(RawServicer(words), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"raw listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
