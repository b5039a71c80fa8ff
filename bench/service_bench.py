"""The agent service with the demo model at full speed, beside a bare grpc.aio baseline.

Prints, for one session at a time and for 100 concurrent sessions in one process:
time to first delta (p50 / p99) and deltas per second. Both servers run as
separate processes on 127.0.0.1 and are measured in the same run by the same
client code. Bounded: a few seconds per row.

    .venv/bin/python bench/service_bench.py [--words 200] [--runs 30] [--sessions 100]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from bench.common import summary_ms, table

REPO = Path(__file__).resolve().parents[1]


def start(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on" in line:
            return process, line.rsplit(" ", 1)[1].strip()
    raise RuntimeError(f"{argv} did not start")


async def one_run(
    stub: agent_pb2_grpc.AgentServiceStub, session: str, index: int
) -> tuple[float, float, int]:
    """Send one message on its own stream; return (time to first delta, run time, deltas)."""
    queue: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue()

    async def requests():
        while (item := await queue.get()) is not None:
            yield item

    call = stub.Chat(requests())
    await queue.put(pb.ChatRequest(join=pb.JoinSession(session_id=session, live_only=True)))
    sent = time.perf_counter()
    await queue.put(
        pb.ChatRequest(
            send=pb.SendMessage(
                session_id=session, message_id=f"m{index}", text=f"benchmark message {index}"
            )
        )
    )
    first = 0.0
    deltas = 0
    async for response in call:
        for event in response.events:
            if event.HasField("response_delta"):
                deltas += 1
                if not first:
                    first = time.perf_counter()
            elif event.HasField("run_completed"):
                done = time.perf_counter()
                await queue.put(None)
                call.cancel()
                return first - sent, done - first, deltas
    raise RuntimeError("stream ended before the run completed")


async def measure(address: str, runs: int, sessions: int, is_raw: bool) -> list[object]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        async def new_session() -> str:
            if is_raw:
                return f"raw{time.perf_counter_ns()}"
            return (await stub.CreateSession(pb.CreateSessionRequest())).session_id

        # one session at a time
        ttft, rates = [], []
        for index in range(runs):
            first, rest, deltas = await one_run(stub, await new_session(), index)
            ttft.append(first)
            rates.append(deltas / (first + rest))
        single = (summary_ms(ttft), f"{sorted(rates)[len(rates) // 2]:,.0f}")
        # many sessions at once
        ids = [await new_session() for _ in range(sessions)]
        started = time.perf_counter()
        results = await asyncio.gather(*(one_run(stub, s, i) for i, s in enumerate(ids)))
        elapsed = time.perf_counter() - started
        total = sum(r[2] for r in results)
        many = (summary_ms([r[0] for r in results]), f"{total / elapsed:,.0f}")
        return [*single, *many]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        service, service_address = start(
            [
                sys.executable,
                "-m",
                "agent_service",
                "--listen",
                "127.0.0.1:0",
                "--store-url",
                f"sqlite:///{tmp}/bench.sqlite3",
                "--demo-tokens-per-s",
                "0",
                "--demo-reply-words",
                str(args.words),
                "--log-level",
                "WARNING",
            ]
        )
        raw, raw_address = start(
            [sys.executable, str(REPO / "bench" / "raw_grpc_server.py"), str(args.words)]
        )
        try:
            rows = [
                [
                    "raw grpc.aio (1 delta per message)",
                    *await measure(raw_address, args.runs, args.sessions, True),
                ],
                [
                    "agent_service, demo model at full speed",
                    *await measure(service_address, args.runs, args.sessions, False),
                ],
            ]
        finally:
            for process in (service, raw):
                process.terminate()
                process.wait()
    table(
        f"Chat over gRPC on 127.0.0.1, {args.words}-word replies "
        f"({args.runs} runs one at a time; then {args.sessions} sessions at once)",
        [
            "server",
            "1 session: first delta p50 / p99 ms",
            "deltas/s",
            f"{args.sessions} sessions: first delta p50 / p99 ms",
            "deltas/s (all)",
        ],
        rows,
    )


if __name__ == "__main__":
    asyncio.run(main())
