"""The agent service with the demo model at full speed, beside a bare grpc.aio baseline.

Prints, for one session at a time and for --sessions concurrent sessions (100; `make
bench`: 200) in one process: time to first delta (p50 / p99) and words per second, for
the service with its durable SQLite event log (the default) beside the same service on the memory://
log (the cost of durability), on Redis Streams when Redis answers on 127.0.0.1,
and a bare grpc.aio server. All run as separate
processes on 127.0.0.1 and are measured in the same run by the same client code.
Bounded: a few seconds per row.

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
REDIS_URL = "redis://127.0.0.1:6379/15"  # a database of its own; the bench removes its keys


async def _drop_keys(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])
    await client.aclose()


def _redis_answers() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0):
            return True
    except OSError:
        return False


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
    """Send one message on its own stream; return (time to first delta, run time, words).

    Words, not delta events: the service merges a run's deltas while its log writer is
    busy, so a slower log carries the same words in fewer, larger events."""
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
    words = 0
    async for response in call:
        for event in response.events:
            if event.HasField("response_delta"):
                words += len(event.response_delta.text.split())
                if not first:
                    first = time.perf_counter()
            elif event.HasField("run_completed"):
                done = time.perf_counter()
                await queue.put(None)
                call.cancel()
                return first - sent, done - first, words
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
            first, rest, words = await one_run(stub, await new_session(), index)
            ttft.append(first)
            rates.append(words / (first + rest))
        single = (summary_ms(ttft), f"{sorted(rates)[len(rates) // 2]:,.0f}")
        # many sessions at once
        ids = [await new_session() for _ in range(sessions)]
        started = time.perf_counter()
        results = await asyncio.gather(*(one_run(stub, s, i) for i, s in enumerate(ids)))
        elapsed = time.perf_counter() - started
        total = sum(r[2] for r in results)
        many = (summary_ms([r[0] for r in results]), f"{total / elapsed:,.0f}")
        return [*single, *many]


async def paced(address: str, sessions: int, rate: float, seconds: float) -> list[object]:
    """Many slow streams at once, the shape of real chat: every session's run streams
    `rate` words/s; one Chat stream follows them all (as the edge does). Once every
    run has started, count the words and deltas delivered in `seconds` and their
    latency from append (event time) to arrival. A demo stream that falls behind its
    schedule sends the words already due in one delta, so words/s shows whether the
    sessions kept their pace and deltas/s what the service carried."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        ids = [
            (await stub.CreateSession(pb.CreateSessionRequest())).session_id
            for _ in range(sessions)
        ]
        queue: asyncio.Queue[pb.ChatRequest] = asyncio.Queue()

        async def requests():
            while True:
                yield await queue.get()

        call = stub.Chat(requests())
        for session in ids:
            queue.put_nowait(pb.ChatRequest(join=pb.JoinSession(session_id=session)))
            queue.put_nowait(
                pb.ChatRequest(
                    send=pb.SendMessage(
                        session_id=session, message_id="m", text="a long answer please"
                    )
                )
            )
        streaming: set[str] = set()
        latencies: list[float] = []
        deltas = words = messages = 0
        started = 0.0
        async for response in call:
            now_ms = time.time() * 1000
            if started:
                messages += 1
            for event in response.events:
                if not event.HasField("response_delta"):
                    continue
                if not started:
                    streaming.add(event.session_id)
                    if len(streaming) == sessions:
                        started = time.perf_counter()
                    continue
                deltas += 1
                words += len(event.response_delta.text.split())
                latencies.append((now_ms - event.time_unix_ms) / 1000)
            if started and time.perf_counter() - started >= seconds:
                break
        call.cancel()
    elapsed = time.perf_counter() - started
    behind = sum(1 for x in latencies if x > 1.0)
    return [
        f"{sessions} x {rate:g}/s",
        f"{sessions * rate:,.0f}",
        f"{words / elapsed:,.0f}",
        f"{deltas / elapsed:,.0f}",
        f"{deltas / max(messages, 1):.1f}",
        summary_ms(latencies),
        behind,
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument(
        "--paced",
        default="200x20,1000x50",
        help="paced loads as SESSIONSxWORDS_PER_S, comma-separated",
    )
    parser.add_argument("--paced-seconds", type=float, default=8.0)
    args = parser.parse_args()
    rows = []
    raw, raw_address = start(
        [sys.executable, str(REPO / "bench" / "raw_grpc_server.py"), str(args.words)]
    )
    try:
        rows.append(
            [
                "raw grpc.aio (1 delta per message)",
                *await measure(raw_address, args.runs, args.sessions, True),
            ]
        )
    finally:
        raw.terminate()
        raw.wait()
    logs = [
        ("agent_service, durable SQLite log (default)", ""),
        ("agent_service, memory:// log (not durable)", "memory://"),
    ]
    if _redis_answers():
        prefix = f"bench-{time.time_ns()}:"
        logs.append(("agent_service, Redis Streams log", f"{REDIS_URL}?prefix={prefix}"))
    else:
        print(f"(no Redis on {REDIS_URL}: the Redis row is left out)")
    for label, log_url in logs:
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
                    "--log-url",
                    log_url,
                    "--demo-tokens-per-s",
                    "0",
                    "--demo-reply-words",
                    str(args.words),
                    "--log-level",
                    "WARNING",
                    "--metrics-listen",
                    "",
                ]
            )
            try:
                rows.append(
                    [label, *await measure(service_address, args.runs, args.sessions, False)]
                )
            finally:
                service.terminate()
                service.wait()
                if "prefix=" in log_url:
                    await _drop_keys(log_url.split("prefix=", 1)[1])
    paced_rows = []
    for load in filter(None, args.paced.split(",")):
        sessions, rate = load.split("x")
        with tempfile.TemporaryDirectory() as tmp:
            service, address = start(
                [
                    sys.executable,
                    "-m",
                    "agent_service",
                    "--listen",
                    "127.0.0.1:0",
                    "--store-url",
                    f"sqlite:///{tmp}/bench.sqlite3",
                    "--demo-tokens-per-s",
                    rate,
                    "--demo-reply-words",
                    "3000",
                    "--log-level",
                    "WARNING",
                    "--metrics-listen",
                    "",
                ]
            )
            try:
                paced_rows.append(
                    await paced(address, int(sessions), float(rate), args.paced_seconds)
                )
            finally:
                service.terminate()
                service.wait()
    table(
        f"Paced streams, one Chat stream following every session ({args.paced_seconds:g} s "
        "after all runs started)",
        [
            "load",
            "asked words/s",
            "delivered words/s",
            "deltas/s",
            "events per message",
            "latency p50 / p99 ms",
            "deltas later than 1 s",
        ],
        paced_rows,
    )
    table(
        f"Chat over gRPC on 127.0.0.1, {args.words}-word replies "
        f"({args.runs} runs one at a time; then {args.sessions} sessions at once)",
        [
            "server",
            "1 session: first delta p50 / p99 ms",
            "words/s",
            f"{args.sessions} sessions: first delta p50 / p99 ms",
            "words/s (all)",
        ],
        rows,
    )


if __name__ == "__main__":
    asyncio.run(main())
