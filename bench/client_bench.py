"""The Python client's cost, beside bare clients measured in the same run.

For one reply of `--words` words from the demo model at full speed, through the
edge and straight over gRPC: time to the first delta and to the completion,
p50 / p99 over `--runs` replies, for the bare client (parses frames or protobuf,
nothing else) and for this package's client (validates, dedups, assembles,
publishes updates). Also the pure core alone: microseconds per event through
SessionCore + Conversation. Bounded: well under a minute.

    .venv/bin/python bench/client_bench.py [--words 1000] [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_relay_client.events import ResponseDelta, RunCompleted
from agent_relay_client.grpc import AgentClient
from agent_relay_client.resilient import EventApplied
from agent_relay_client.session_core import SessionCore
from agent_relay_client.ws import EdgeClient
from bench.common import summary_ms, table
from tests.clients_python.tcp_proxy import CuttableProxy
from tests.support.edge import start_edge
from tests.support.service import start_agent_service

Timing = tuple[float, float]  # (first delta, completion) in seconds after the send


async def bare_ws(edge_url: str) -> Timing:
    async with EdgeClient(edge_url) as maker:  # only for the HTTP call that makes a session
        session = await maker.create_session()
        token = maker.token
    url = edge_url.replace("http", "ws", 1) + "/ws"
    async with websockets.connect(url, subprotocols=["agent-relay.v1"]) as ws:  # type: ignore[list-item]
        await ws.recv()
        await ws.send(json.dumps({"type": "auth", "id": "a", "token": token}))
        await ws.send(json.dumps({"type": "join", "id": "j", "session_id": session}))
        while json.loads(await ws.recv()).get("ref") != "j":
            pass
        started = time.perf_counter()
        frame = {
            "type": "chat:message",
            "id": "m",
            "session_id": session,
            "message_id": uuid.uuid4().hex,
            "text": "go",
        }
        await ws.send(json.dumps(frame))
        first = 0.0
        while True:
            kind = json.loads(await ws.recv()).get("type")
            if kind == "chat:response" and not first:
                first = time.perf_counter() - started
            if kind == "chat:complete":
                return first, time.perf_counter() - started


async def client_ws(edge_url: str) -> Timing:
    async with EdgeClient(edge_url) as client:
        updates = client.updates()
        session = await client.create_session()
        await client.follow(session, with_history=False)
        while not client.core.is_joined(session):  # noqa: ASYNC110 - no event for it
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        await client.send(session, "go")
        first = 0.0
        async for update in updates:
            if isinstance(update, EventApplied):
                if isinstance(update.event, ResponseDelta) and not first:
                    first = time.perf_counter() - started
                if isinstance(update.event, RunCompleted):
                    return first, time.perf_counter() - started
    raise RuntimeError("the client stopped")


async def bare_grpc(address: str) -> Timing:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
        call = stub.Chat()
        await call.write(pb.ChatRequest(request_id="j", join=pb.JoinSession(session_id=session)))
        started = time.perf_counter()
        send = pb.SendMessage(session_id=session, message_id=uuid.uuid4().hex, text="go")
        await call.write(pb.ChatRequest(request_id="m", send=send))
        first = 0.0
        async for response in call:
            for event in response.events:
                if event.HasField("response_delta") and not first:
                    first = time.perf_counter() - started
                if event.HasField("run_completed"):
                    call.cancel()
                    return first, time.perf_counter() - started
    raise RuntimeError("the stream ended")


async def client_grpc(address: str) -> Timing:
    async with AgentClient(address) as agent:
        session = (await agent.create_session()).session_id
        started = time.perf_counter()
        first = 0.0
        async for event in agent.chat(session, "go"):
            if isinstance(event, ResponseDelta) and not first:
                first = time.perf_counter() - started
        return first, time.perf_counter() - started


async def resume_after_cut(edge_url: str, runs: int) -> list[float]:
    """Seconds from a cut TCP connection mid-reply to the next delta applied (EdgeClient)."""
    proxy = CuttableProxy(edge_url.removeprefix("http://"))
    url = f"http://{await proxy.start()}"
    gaps: list[float] = []
    try:
        async with EdgeClient(url) as client:
            updates = client.updates()
            session = await client.create_session()
            await client.follow(session, with_history=False)
            for _ in range(runs):
                await client.send(session, "go")
                deltas, cut_at = 0, None
                async for update in updates:
                    if not isinstance(update, EventApplied):
                        continue
                    if isinstance(update.event, ResponseDelta):
                        deltas += 1
                        if cut_at is not None:  # the first delta after the cut
                            gaps.append(time.perf_counter() - cut_at)
                            cut_at = None
                        if deltas == 20:
                            proxy.cut()
                            cut_at = time.perf_counter()
                    if isinstance(update.event, RunCompleted):
                        break
    finally:
        await proxy.close()
    return gaps


def core_us_per_event(events: int = 200_000, per_run: int = 1000) -> float:
    """Deltas of runs of `per_run` words each, through the core that every client uses."""
    core = SessionCore()
    core.follow("s")
    deltas = [
        ResponseDelta(session_id="s", seq=seq, run_id=f"r{seq // per_run}", text="word ")
        for seq in range(1, events + 1)
    ]
    started = time.perf_counter()
    for delta in deltas:
        core.receive_event(delta)
    return (time.perf_counter() - started) / events * 1e6


async def measure(args: argparse.Namespace, edge_url: str, address: str) -> None:
    pairs = {
        "edge: bare websockets": (bare_ws, edge_url),
        "edge: EdgeClient": (client_ws, edge_url),
        "gRPC: bare grpc.aio": (bare_grpc, address),
        "gRPC: AgentClient.chat": (client_grpc, address),
    }
    results: dict[str, list[Timing]] = {name: [] for name in pairs}
    for _ in range(args.runs):  # interleaved, so drift hits every row alike
        for name, (fn, target) in pairs.items():
            results[name].append(await fn(target))  # type: ignore[operator]
    rows = []
    for name, timings in results.items():
        firsts = [t[0] for t in timings]
        totals = [t[1] for t in timings]
        rate = args.words / sorted(totals)[len(totals) // 2]
        rows.append([name, summary_ms(firsts), summary_ms(totals), f"{rate:,.0f}"])
    table(
        f"one {args.words}-word reply at full speed, {args.runs} runs each",
        ["client", "first delta ms p50 / p99", "whole reply ms p50 / p99", "words/s (p50)"],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print(f"pure core: {core_us_per_event():.2f} us per delta event (SessionCore + Conversation)")
    with tempfile.TemporaryDirectory() as tmp:
        paced = start_agent_service(
            Path(tmp) / "paced", "--demo-tokens-per-s", "200", "--demo-reply-words", "300"
        )
        try:
            edge = start_edge(paced.address)
            try:
                gaps = asyncio.run(resume_after_cut(edge.url, max(3, args.runs // 2)))
                print(
                    f"resume after a cut TCP connection (EdgeClient, backoff base 0.5 s, full "
                    f"jitter): {summary_ms(gaps)} ms p50 / p99 from the cut to the next delta "
                    f"({len(gaps)} cuts)"
                )
            finally:
                edge.stop()
        finally:
            paced.stop()
    with tempfile.TemporaryDirectory() as tmp:
        service = start_agent_service(
            Path(tmp), "--demo-tokens-per-s", "0", "--demo-reply-words", str(args.words)
        )
        try:
            edge = start_edge(service.address)
            try:
                asyncio.run(measure(args, edge.url, service.address))
            finally:
                edge.stop()
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
