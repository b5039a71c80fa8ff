"""Peer: a bare grpc.aio server on the agent's own proto (no store, no hub).

- `AgentService.Chat` (bidi): each SendMessage is a command in its `text`:
  `rtt` -> one ChatResponse with one ResponseDelta; `push N` -> N of them as fast as
  possible; `pace N RATE` -> N at RATE per second stamped with `time_unix_ms`; each
  but `rtt` ends with a RunCompleted event.
- `/bench.Echo/Unary`: returns the request bytes (a unary round trip, no protobuf).

Prints `peer_grpc listening on 127.0.0.1:PORT`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc


def delta(session: str, seq: int) -> pb.ChatResponse:
    return pb.ChatResponse(
        events=[
            pb.SessionEvent(
                session_id=session,
                seq=seq,
                time_unix_ms=int(time.time() * 1000),
                response_delta=pb.ResponseDelta(text="word "),
            )
        ]
    )


def completed(session: str, seq: int) -> pb.ChatResponse:
    return pb.ChatResponse(
        events=[pb.SessionEvent(session_id=session, seq=seq, run_completed=pb.RunCompleted())]
    )


class PeerServicer(agent_pb2_grpc.AgentServiceServicer):
    async def Chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: Any
    ) -> AsyncIterator[pb.ChatResponse]:
        async for request in request_iterator:
            if request.WhichOneof("command") != "send":
                yield pb.ChatResponse(replies=[pb.CommandReply(request_id=request.request_id)])
                continue
            session = request.send.session_id
            words = request.send.text.split()
            if words[0] == "rtt":
                yield delta(session, 1)
                continue
            count = int(words[1])
            if words[0] == "push":
                for seq in range(1, count + 1):
                    yield delta(session, seq)
            else:
                rate = float(words[2])
                start = time.monotonic()
                for seq in range(1, count + 1):
                    pause = start + seq / rate - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    yield delta(session, seq)
            yield completed(session, count + 1)


async def unary_echo(request: bytes, context: Any) -> bytes:
    return request


async def main() -> None:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(PeerServicer(), server)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary_echo)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"peer_grpc listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
