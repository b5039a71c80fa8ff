"""Total deltas/s and time to first delta: 1 replica + 1 edge beside 2 replicas + 2 edges.

Both shapes run on the same backends (a fresh PostgreSQL database and Redis key prefix
each, as the tests use: Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432), in one
run, beside the one-machine baseline (1 replica + 1 edge on SQLite). N sessions, one
socket each, split over the edges round-robin; every socket sends one message at once
and the demo model streams W words at full speed (--demo-tokens-per-s 0). Deltas/s is
every word delivered to a socket over the wall time from the first send to the last
completion; time to first delta is per socket, from its send to its first
chat:response.

What this can show on a 2-core machine: the cost of the shared backends (the Redis log
beside SQLite) and of the second hop (the edges carry the sessions on the replica their
hashing picks, whichever replica owns them; a run whose owner is the other replica is
streamed from the Redis log), and that a cluster under full load delivers every word.
What it cannot show: scale-out. Four busy processes on two cores share the same CPU
time as two do; real gains need a core (or a machine) per process.

    .venv/bin/python bench/cluster_bench.py [--sessions 40] [--words 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile, table
from bench.relay_client import (
    SECRET,
    UNLIMITED,
    Proc,
    RelaySocket,
    RunWatch,
    create_sessions,
    start_process,
)
from tests.support.backends import postgres_database, redis_prefix


def start_shape(
    replicas: int, edges: int, store_url: str, log_url: str, words: int
) -> tuple[list[Proc], list[Proc]]:
    """`replicas` agent services on the shared store and log, `edges` edges in front of
    every one of them; all at log level WARNING."""
    py = sys.executable
    started: list[Proc] = []
    try:
        for i in range(replicas):
            argv = [
                py, "-m", "agent_service", "--listen", "127.0.0.1:0",
                "--store-url", store_url, *(("--log-url", log_url) if log_url else ()),
                "--replica-id", f"bench-{i + 1}", "--metrics-listen", "",
                "--demo-tokens-per-s", "0", "--demo-reply-words", str(words),
                "--log-level", "WARNING",
            ]  # fmt: skip
            started.append(start_process(f"replica-{i + 1}", argv, "agent_service listening on"))
        upstream = ",".join(p.address for p in started)
        front = []
        for i in range(edges):
            argv = [
                py, "-m", "ws_edge", "--listen", "127.0.0.1:0", "--upstream", upstream,
                "--jwt-secret", SECRET, "--static-dir", "/nonexistent",
                "--log-level", "WARNING", *UNLIMITED,
                "--anon-sessions-per-s", "1e9", "--anon-sessions-burst", "1e9",
            ]  # fmt: skip
            front.append(start_process(f"edge-{i + 1}", argv, "ws_edge listening on"))
            started.append(front[-1])
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise
    return started[:replicas], front


async def one_round(edges: list[Proc], sessions: int) -> tuple[float, list[float], int]:
    """(deltas/s, time to first delta per socket in s, words delivered)."""
    async with aiohttp.ClientSession() as http:
        made = await create_sessions(http, edges[0].address, sessions)
        sockets = []
        for index, (session_id, token) in enumerate(made):
            edge = edges[index % len(edges)]
            url = edge.address.replace("http", "ws", 1) + "/ws"
            sockets.append(await RelaySocket.open(http, url, session_id, token))
        watches = [RunWatch() for _ in sockets]
        for sock, watch in zip(sockets, watches, strict=True):
            sock.on_frame = watch
        started = time.perf_counter()
        for sock, watch in zip(sockets, watches, strict=True):
            watch.sent_at = time.perf_counter()
            watch.message_id = await sock.say("bench")
        await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), 300)
        wall = time.perf_counter() - started
        for sock in sockets:
            await sock.close()
    words = sum(w.deltas for w in watches)
    ttfd = [w.first_delta_at - w.sent_at for w in watches if w.first_delta_at is not None]
    return words / wall, ttfd, words


async def measure(
    replicas: int, edges: int, args: argparse.Namespace, *, sqlite: bool = False
) -> tuple[list[float], list[float], int]:
    async with (
        redis_prefix() as (redis_url, prefix),
        postgres_database() as store_url,
    ):
        folder = tempfile.TemporaryDirectory(prefix="cluster-bench-")
        log_url = f"{redis_url}?prefix={prefix}"
        if sqlite:  # the one-machine baseline: store and log in one SQLite file
            store_url, log_url = f"sqlite:///{folder.name}/bench.sqlite3", ""
        services, front = await asyncio.to_thread(
            start_shape, replicas, edges, store_url, log_url, args.words
        )
        try:
            rates, ttfd, words = [], [], 0
            for _ in range(args.rounds):
                rate, firsts, delivered = await one_round(front, args.sessions)
                rates.append(rate)
                ttfd.extend(firsts)
                words += delivered
            return rates, ttfd, words
        finally:
            for proc in (*front, *services):
                await asyncio.to_thread(proc.stop)
            folder.cleanup()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--sessions", type=int, default=40, help="sessions (one socket each)")
    parser.add_argument("--words", type=int, default=200, help="words per reply")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per shape")
    args = parser.parse_args()
    rows = []
    expected = args.sessions * args.words * args.rounds
    shapes = (("1 replica + 1 edge, SQLite", 1, 1, True),
              ("1 replica + 1 edge", 1, 1, False),
              ("2 replicas + 2 edges", 2, 2, False))  # fmt: skip
    for name, replicas, edges, sqlite in shapes:
        started = time.perf_counter()
        rates, ttfd, words = await measure(replicas, edges, args, sqlite=sqlite)
        rows.append(
            [
                name,
                f"{max(rates):,.0f}",
                f"{min(rates):,.0f}",
                f"{percentile(ttfd, 0.5) * 1e3:.0f}",
                f"{percentile(ttfd, 0.95) * 1e3:.0f}",
                f"{words:,} of {expected:,}",
                f"{time.perf_counter() - started:.0f}",
            ]
        )
    table(
        f"{args.sessions} sessions at full speed, {args.words} words each, {args.rounds} rounds "
        "(Redis log and PostgreSQL store unless SQLite)",
        [
            "shape",
            "deltas/s best",
            "deltas/s worst",
            "first delta p50 ms",
            "p95 ms",
            "words delivered",
            "s",
        ],
        rows,
    )
    print(
        "\nOn 2 cores this shows the overhead of the second hop and that nothing is lost"
        "\nunder load; it cannot show scale-out (4 busy processes share the same 2 cores)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
