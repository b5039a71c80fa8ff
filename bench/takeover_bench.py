"""Takeover time after kill -9 of a session's owner, with two replicas on Redis and PostgreSQL.

Each round starts replica A, makes it the owner of a new session with a long
reply streaming, joins the session through replica B, kills A with SIGKILL and
times how long B's Chat client waits for the run's RunCompleted (`interrupted`),
and then for the first delta of the next message sent through B. Printed beside
the lease TTL it is bounded by (takeover = TTL + up to half a TTL for the
takeover loop's period + recovery). Needs Redis on 127.0.0.1:6379 and PostgreSQL
on 127.0.0.1:5432 (as the tests do); a few seconds per round.

    .venv/bin/python bench/takeover_bench.py [--rounds 5] [--lease-ttl-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from bench.common import table
from tests.support.chat import ChatClient
from tests.support.replicas import cluster

SLOW = ("--demo-tokens-per-s", "40", "--demo-reply-words", "2000")


async def one_round(shared, b_stub, index: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    a = shared.start(f"replica-a{index}")
    try:
        async with grpc.aio.insecure_channel(a.address) as channel:
            a_stub = agent_pb2_grpc.AgentServiceStub(channel)
            session = (await a_stub.CreateSession(pb.CreateSessionRequest())).session_id
            on_a = ChatClient(a_stub)
            run_id = (await on_a.send(session, "m1", "a long story")).accepted.run_id
            on_b = ChatClient(b_stub)
            await on_b.join(session)
            await on_b.wait_for(session, lambda e: e.HasField("response_delta"))
            killed = time.perf_counter()
            a.kill()
            await on_a.close()
            done = await on_b.wait_completed(session, run_id, timeout_s=120)
            ended = time.perf_counter() - killed
            assert done.run_completed.finish_reason == pb.FINISH_REASON_INTERRUPTED
            sent = await on_b.send(session, "m2", "and now?")
            next_id = sent.accepted.run_id
            await on_b.wait_for(
                session, lambda e: e.run_id == next_id and e.HasField("response_delta")
            )
            first_delta = time.perf_counter() - killed
            await on_b.close()
            return ended, first_delta
    finally:
        a.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease-ttl-s", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with cluster(Path(tmp), *SLOW, ttl_s=args.lease_ttl_s) as shared:
            b = shared.start("replica-b")
            try:
                async with grpc.aio.insecure_channel(b.address) as channel:
                    b_stub = agent_pb2_grpc.AgentServiceStub(channel)
                    results = [await one_round(shared, b_stub, i) for i in range(args.rounds)]
            finally:
                b.stop()
    ended = [r[0] for r in results]
    resumed = [r[1] for r in results]
    table(
        f"takeover after kill -9 of the owner ({args.rounds} rounds, 2 replicas, "
        f"Redis log + PostgreSQL store)",
        ["", "median s", "min s", "max s"],
        [
            ["lease TTL (the bound)", f"{args.lease_ttl_s:.2f}", "", ""],
            [
                "run ends interrupted, seen on B",
                f"{statistics.median(ended):.2f}",
                f"{min(ended):.2f}",
                f"{max(ended):.2f}",
            ],
            [
                "next message's first delta on B",
                f"{statistics.median(resumed):.2f}",
                f"{min(resumed):.2f}",
                f"{max(resumed):.2f}",
            ],
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
