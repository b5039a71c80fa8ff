"""A test client for the Chat RPC: send commands, collect events per session."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.support.timing import scaled


class ChatClient:
    """One Chat stream. Events are kept per session in arrival order."""

    def __init__(self, stub: agent_pb2_grpc.AgentServiceStub) -> None:
        self._requests: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._replies: dict[str, asyncio.Future[pb.CommandReply]] = {}
        self.events: dict[str, list[pb.SessionEvent]] = defaultdict(list)
        self.responses = 0
        self._changed = asyncio.Event()
        self._call = stub.Chat(self._request_stream())
        self._reader = asyncio.create_task(self._read())

    async def _request_stream(self) -> AsyncIterator[pb.ChatRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for response in self._call:
            self.responses += 1
            for event in response.events:
                self.events[event.session_id].append(event)
            for reply in response.replies:
                future = self._replies.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
            self._changed.set()

    async def command(self, **command: object) -> pb.CommandReply:
        """Send one command and wait for its reply."""
        request_id = f"q{next(self._ids)}"
        future: asyncio.Future[pb.CommandReply] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        await self._requests.put(pb.ChatRequest(request_id=request_id, **command))  # type: ignore[arg-type]
        return await asyncio.wait_for(future, scaled(10))

    async def join(self, session_id: str, after_seq: int = 0) -> pb.CommandReply:
        return await self.command(join=pb.JoinSession(session_id=session_id, after_seq=after_seq))

    async def send(
        self, session_id: str, message_id: str, text: str, **extra: object
    ) -> pb.CommandReply:
        return await self.command(
            send=pb.SendMessage(session_id=session_id, message_id=message_id, text=text, **extra)
        )  # type: ignore[arg-type]

    async def wait_for(
        self, session_id: str, predicate: Callable[[pb.SessionEvent], bool], timeout_s: float = 15
    ) -> pb.SessionEvent:
        """The first event of the session (seen so far or later) that satisfies predicate."""

        async def scan() -> pb.SessionEvent:
            while True:
                for event in self.events[session_id]:
                    if predicate(event):
                        return event
                self._changed.clear()
                if self._reader.done():
                    self._reader.result()
                    raise AssertionError("the Chat stream ended")
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), scaled(timeout_s))
        except TimeoutError:
            seen = self.events[session_id]
            kinds = [(e.seq, e.WhichOneof("kind")) for e in seen[-5:]]
            raise AssertionError(
                f"no matching event of {session_id} in {scaled(timeout_s):.0f} s: "
                f"{len(seen)} events came, the last {kinds}"
            ) from None

    async def wait_completed(
        self, session_id: str, run_id: str = "", timeout_s: float = 15
    ) -> pb.SessionEvent:
        return await self.wait_for(
            session_id,
            lambda e: e.HasField("run_completed") and (not run_id or e.run_id == run_id),
            timeout_s,
        )

    async def close(self) -> None:
        await self._requests.put(None)
        self._call.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass


def kinds(events: list[pb.SessionEvent]) -> list[str]:
    """The event kinds, in order."""
    return [str(e.WhichOneof("kind")) for e in events]


def assembled_text(events: list[pb.SessionEvent], run_id: str) -> str:
    """The run's text as a client assembles it from deltas."""
    return "".join(
        e.response_delta.text for e in events if e.run_id == run_id and e.HasField("response_delta")
    )


async def joined_session(
    stub: agent_pb2_grpc.AgentServiceStub, user_id: str = ""
) -> tuple[str, ChatClient]:
    """A new session, and a Chat stream that has joined it."""
    session = (await stub.CreateSession(pb.CreateSessionRequest(user_id=user_id))).session_id
    chat = ChatClient(stub)
    await chat.join(session)
    return session, chat
