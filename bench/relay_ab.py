"""The per-message costs of two agent services side by side: this tree's and another's.

Starts an agent service (demo model, 1-word replies, full speed, durable SQLite store and
log) from this tree (or `--new DIR`) and one from `--base DIR` (another checkout, e.g.
`git archive HEAD~3 | tar -x -C var/base`), each behind an edge of this tree, and
measures both in interleaved rounds, the order alternating, in one run on one machine:

- rtt fresh: `--rtt-count` messages one after another on a new session: first delta
  p50 / p99 and each process's CPU per message;
- rtt history: the same on one session with `--history` messages behind it;
- burst: `--burst-sessions` sessions, each on its own socket, send one message at once:
  first delta p50 / p99, and the service's CPU per message;
- full: `--full-sessions` sessions at once, each a `--full-words`-word reply at full demo
  speed (a pair of its own): words delivered per second, each process's CPU per word;
- paced: `--paced-n` sessions at once, each a 200-word reply at 50 words/s (a pair of
  its own): delta latency p50 / p99 (the client's clock minus the frame's
  `time_unix_ms`), words dropped, each process's CPU per word.

    .venv/bin/python bench/relay_ab.py --base var/base [--rounds 5]

`--backend redis` runs both on the scale-out backends (a PostgreSQL database and a Redis
key prefix of their own each) instead of SQLite.

`--pids` prints the services' pids and waits for Enter, to attach a profiler first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile
from bench.procstat import CpuMeter
from bench.relay_client import (
    SECRET,
    UNLIMITED,
    RelayPair,
    RelaySocket,
    RunWatch,
    create_sessions,
    fill_history,
    scale_out_flags,
    start_process,
)

Metrics = dict[str, float]


def start_pair(
    tmp: Path,
    name: str,
    source: Path,
    tokens_per_s: float = 0,
    words: int = 1,
    backend: tuple[str, ...] = (),
) -> RelayPair:
    """A service run from `source` (its packages first on the path) and this tree's edge;
    its demo model streams `words`-word replies at `tokens_per_s` (0: full speed). Its
    store and log: `backend` (their flags), else one SQLite file in `tmp`."""
    py = sys.executable
    # -c, not -m: -m puts the working directory (this tree) first on the path
    env = {"PYTHONPATH": f"{source}{os.pathsep}{source / 'gen' / 'python'}"}
    service = start_process(
        f"{name}-service",
        [
            py, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); "
            "from agent_service.server import main; sys.exit(main())",
            "--listen", "127.0.0.1:0",
            *(backend or ("--store-url", f"sqlite:///{tmp}/{name}.sqlite3")),
            "--demo-tokens-per-s", str(tokens_per_s), "--demo-reply-words", str(words),
            "--retention-events", "10000000", "--log-level", "WARNING",
        ],
        "agent_service listening on",
        env=env,
    )  # fmt: skip
    edge = start_process(
        f"{name}-edge",
        [
            py, "-m", "ws_edge", "--listen", "127.0.0.1:0", "--upstream", service.address,
            "--jwt-secret", SECRET, "--static-dir", "/nonexistent", "--log-level", "WARNING",
            *UNLIMITED,
        ],
        "ws_edge listening on",
    )  # fmt: skip
    return RelayPair(service, edge)


async def socks(http: aiohttp.ClientSession, pair: RelayPair, count: int) -> list[RelaySocket]:
    sessions = await create_sessions(http, pair.http, count)
    return list(await asyncio.gather(*(RelaySocket.open(http, pair.ws_url, *s) for s in sessions)))


def meter(pair: RelayPair) -> CpuMeter:
    m = CpuMeter({"service": pair.service.pid, "edge": pair.edge.pid})
    m.start()
    return m


async def round_trips(pair: RelayPair, sock: RelaySocket, count: int) -> Metrics:
    cpu = meter(pair)
    times: list[float] = []
    for _ in range(count):
        watch = RunWatch()
        sock.on_frame = watch
        start = time.perf_counter()
        watch.message_id = await sock.say("hi")
        await asyncio.wait_for(watch.done.wait(), 30)
        assert watch.first_delta_at is not None
        times.append((watch.first_delta_at - start) * 1e3)
    used = cpu.stop()
    sock.on_frame = None
    return {
        "p50_ms": percentile(times, 0.5),
        "p99_ms": percentile(times, 0.99),
        "service_cpu_ms": used["service"] / count * 1e3,
        "edge_cpu_ms": used["edge"] / count * 1e3,
    }


def watch_all(all_socks: list[RelaySocket]) -> list[RunWatch]:
    """A RunWatch on each socket's frames, in the sockets' order."""
    watches = []
    for sock in all_socks:
        watch = RunWatch()
        sock.on_frame = watch
        watches.append(watch)
    return watches


async def burst(pair: RelayPair, all_socks: list[RelaySocket]) -> Metrics:
    watches = watch_all(all_socks)
    cpu = meter(pair)
    start = time.perf_counter()
    ids = await asyncio.gather(*(sock.say("burst") for sock in all_socks))
    for watch, message_id in zip(watches, ids, strict=True):
        watch.message_id = message_id
    await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), 60)
    used = cpu.stop()
    for sock in all_socks:
        sock.on_frame = None
    firsts = [((w.first_delta_at or float("nan")) - start) * 1e3 for w in watches]
    return {
        "p50_ms": percentile(firsts, 0.5),
        "p99_ms": percentile(firsts, 0.99),
        "service_cpu_ms": used["service"] / len(all_socks) * 1e3,
        "edge_cpu_ms": used["edge"] / len(all_socks) * 1e3,
    }


async def streams(pair: RelayPair, all_socks: list[RelaySocket], timeout_s: float) -> Metrics:
    """Every socket's session streams one reply at once: words per second delivered,
    delta latencies, words per frame, each process's CPU per word."""
    watches = watch_all(all_socks)
    cpu = meter(pair)
    start = time.perf_counter()
    for sock, watch in zip(all_socks, watches, strict=True):
        watch.message_id = await sock.say("stream")
    try:
        await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), timeout_s)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - start
    used = cpu.stop()
    for sock in all_socks:
        sock.on_frame = None
    words = sum(w.deltas for w in watches)
    frames = sum(w.frames for w in watches)
    latencies = [x for w in watches for x in w.latencies_ms]
    return {
        "words_per_s": words / elapsed,
        "words": words,
        "words_per_frame": words / max(1, frames),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "service_us_per_word": used["service"] / max(1, words) * 1e6,
        "edge_us_per_word": used["edge"] / max(1, words) * 1e6,
    }


def show(results: dict[str, dict[str, list[Metrics]]]) -> None:
    for scenario, systems in results.items():
        print(f"\n{scenario}")
        keys = list(next(iter(systems.values()))[0])
        for name, rounds in systems.items():
            cells = []
            for key in keys:
                values = [r[key] for r in rounds]
                cells.append(
                    f"{key} {statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
                )
            print(f"  {name:5}  " + "; ".join(cells))
        if "base" in systems and "new" in systems:
            # Each round runs both at about the same time: the median of the rounds' ratios
            # is steadier on a shared machine than the ratio of the two medians.
            rounds = list(zip(systems["base"], systems["new"], strict=True))
            ratios = []
            for key in keys:
                each = [new[key] / base[key] for base, new in rounds if base[key]]
                if each:
                    ratios.append(f"{key} {statistics.median(each):.3f}")
            print("  new/base per round, median: " + "; ".join(ratios))


async def backend_flags(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack
) -> tuple[str, ...]:
    """A pair's store and log flags: none for SQLite (start_pair's default); for `--backend
    redis` a fresh PostgreSQL database and Redis key prefix, which `stack` drops."""
    return () if args.backend == "sqlite" else await scale_out_flags(stack)


async def main_async(args: argparse.Namespace, sources: dict[str, Path]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        await measure_all(args, sources, stack)


async def measure_all(
    args: argparse.Namespace, sources: dict[str, Path], stack: contextlib.AsyncExitStack
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        pairs: dict[str, RelayPair] = {}
        full_pairs: dict[str, RelayPair] = {}
        paced_pairs: dict[str, RelayPair] = {}
        try:
            for name, src in sources.items():
                pairs[name] = start_pair(tmp, name, src, backend=await backend_flags(args, stack))
                if "full" in args.scenarios:
                    full_pairs[name] = start_pair(
                        tmp, f"{name}-full", src, 0, args.full_words,
                        await backend_flags(args, stack),
                    )  # fmt: skip
                if "paced" in args.scenarios:
                    paced_pairs[name] = start_pair(
                        tmp, f"{name}-paced", src, 50, 200, await backend_flags(args, stack)
                    )
            if args.pids:
                for group in (pairs, full_pairs, paced_pairs):
                    for name, pair in group.items():
                        print(f"{name}: service pid {pair.service.pid}, edge pid {pair.edge.pid}")
                await asyncio.get_running_loop().run_in_executor(None, input, "Enter to start: ")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                history: dict[str, RelaySocket] = {}
                bursts: dict[str, list[RelaySocket]] = {}
                full_socks = {
                    n: await socks(http, p, args.full_sessions) for n, p in full_pairs.items()
                }
                paced_socks = {
                    n: await socks(http, p, args.paced_n) for n, p in paced_pairs.items()
                }
                for name, pair in pairs.items():
                    if "history" in args.scenarios:
                        history[name] = (await socks(http, pair, 1))[0]
                        await fill_history(history[name], args.history, budget_s=600)
                    if "burst" in args.scenarios:
                        bursts[name] = await socks(http, pair, args.burst_sessions)
                results: dict[str, dict[str, list[Metrics]]] = {}
                for index in range(args.rounds):
                    order = list(pairs) if index % 2 == 0 else list(reversed(pairs))
                    for name in order:
                        pair = pairs[name]
                        if "rtt" in args.scenarios:
                            sock = (await socks(http, pair, 1))[0]
                            metrics = await round_trips(pair, sock, args.rtt_count)
                            await sock.close()
                            results.setdefault("rtt fresh", {}).setdefault(name, []).append(metrics)
                        if "history" in args.scenarios:
                            metrics = await round_trips(pair, history[name], args.rtt_count)
                            results.setdefault("rtt history", {}).setdefault(name, []).append(
                                metrics
                            )
                        if "burst" in args.scenarios:
                            metrics = await burst(pair, bursts[name])
                            results.setdefault("burst", {}).setdefault(name, []).append(metrics)
                        if name in full_socks:
                            metrics = await streams(full_pairs[name], full_socks[name], 180)
                            results.setdefault("full", {}).setdefault(name, []).append(metrics)
                        if name in paced_socks:
                            metrics = await streams(paced_pairs[name], paced_socks[name], 60)
                            results.setdefault("paced", {}).setdefault(name, []).append(metrics)
                    print(f"  round {index + 1} done", flush=True)
                show(results)
        finally:
            for group in (pairs, full_pairs, paced_pairs):
                for pair in group.values():
                    pair.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", required=True, help="the other source tree")
    parser.add_argument("--new", default="", help="the tree to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rtt-count", type=int, default=100)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--burst-sessions", type=int, default=100)
    parser.add_argument("--full-sessions", type=int, default=100)
    parser.add_argument("--full-words", type=int, default=1000)
    parser.add_argument("--paced-n", type=int, default=300)
    parser.add_argument("--scenarios", default="rtt,history,burst", help="and full, paced")
    parser.add_argument("--pids", action="store_true", help="wait for Enter after the start")
    parser.add_argument(
        "--backend", choices=("sqlite", "redis"), default="sqlite",
        help="the services' store and log: one SQLite file (the durable default), or the "
        "scale-out backends (PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379)",
    )  # fmt: skip
    args = parser.parse_args()
    args.scenarios = set(args.scenarios.split(","))
    here = Path(args.new).resolve() if args.new else Path(__file__).resolve().parents[1]
    asyncio.run(main_async(args, {"base": Path(args.base).resolve(), "new": here}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
