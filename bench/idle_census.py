"""What one idle socket costs inside the edge (or raw aiohttp), object by object.

The server runs in this process (the edge in front of a real agent service, or the raw
aiohttp peer's handler); a child process opens N sockets to it, each on its own session
and authenticated and joined as the bench's `RelaySocket` does. Between a snapshot taken
once the sessions exist and one once the sockets are open and settled, it prints what the
sockets added per socket: gc-tracked objects by type (count, bytes by sys.getsizeof) and
tracemalloc's allocations by source line.

    .venv/bin/python bench/idle_census.py --sockets 1000            # the edge
    .venv/bin/python bench/idle_census.py --sockets 1000 --peer     # raw aiohttp

Not a timing bench: it measures what is allocated, so the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.relay_client import SECRET, UNLIMITED, start_process  # noqa: E402


def census() -> tuple[Counter[str], Counter[str]]:
    gc.collect()
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return counts, sizes


def report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int) -> None:
    print(f"\n== tracemalloc, per socket (N = {n}), by line ==")
    mine = tracemalloc.Filter(False, __file__)
    before, after = before.filter_traces([mine]), after.filter_traces([mine])
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"total {total / n:.0f} B per socket")
    for stat in stats[:top]:
        if abs(stat.size_diff) / n < 8:
            continue
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} blocks  {where}")
    if after.traceback_limit > 1:
        print("\n== tracemalloc, per socket, by traceback ==")
        for stat in after.compare_to(before, "traceback")[:top]:
            if abs(stat.size_diff) / n < 8:
                continue
            print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} blocks")
            for line in stat.traceback.format(most_recent_first=True)[::2][:6]:
                print("        ", line.strip())
    print("\n== tracemalloc, per socket, by file ==")
    for stat in after.compare_to(before, "filename")[:25]:
        if abs(stat.size_diff) / n < 8:
            continue
        print(f"{stat.size_diff / n:8.0f} B  {stat.traceback[0].filename}")


def diff_census(
    before: tuple[Counter[str], Counter[str]],
    after: tuple[Counter[str], Counter[str]],
    n: int,
    top: int,
) -> None:
    counts = after[0] - before[0]
    sizes = after[1] - before[1]
    print(f"\n== gc objects, per socket (N = {n}), by type (shallow sizes) ==")
    print(f"total {sum(sizes.values()) / n:.0f} B, {sum(counts.values()) / n:.1f} objects")
    for name, size in sizes.most_common(top):
        if size / n < 4:
            break
        print(f"{size / n:8.0f} B {counts[name] / n:6.2f} x  {name}")


async def start_edge(service_address: str) -> tuple[object, str]:
    from aiohttp import web

    from ws_edge.app import create_app
    from ws_edge.config import load

    settings = load(
        [
            "--listen", "127.0.0.1:0", "--upstream", service_address,
            "--jwt-secret", SECRET, "--static-dir", "/nonexistent", "--log-level", "WARNING",
            *UNLIMITED,
        ],
        {},
    )  # fmt: skip
    runner = web.AppRunner(create_app(settings=settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def start_peer() -> tuple[object, str]:
    from aiohttp import web

    from bench.peer_ws_server import handle

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--peer", action="store_true", help="raw aiohttp instead of the edge")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames kept")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the child: base URL
    args = parser.parse_args()
    if args.client:
        await client(args.client, args.sockets, args.peer)
        return
    service = None
    if not args.peer:
        tmp = tempfile.mkdtemp()
        service = start_process(
            "census-service",
            [
                sys.executable, "-m", "agent_service", "--listen", "127.0.0.1:0",
                "--store-url", f"sqlite:///{tmp}/census.sqlite3", "--log-level", "WARNING",
            ],
            "agent_service listening on",
        )  # fmt: skip
    tracemalloc.start(args.frames)
    try:
        runner, base = await (start_peer() if args.peer else start_edge(service.address))  # type: ignore[union-attr]
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", base, "--sockets", str(args.sockets),
            *(["--peer"] if args.peer else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None and child.stdin is not None
        assert (await child.stdout.readline()).strip() == b"sessions"
        await asyncio.sleep(1.0)
        counts_before = census()
        snap_before = tracemalloc.take_snapshot()
        child.stdin.write(b"open\n")
        await child.stdin.drain()
        assert (await child.stdout.readline()).strip() == b"open"
        await asyncio.sleep(2.0)
        snap_after = tracemalloc.take_snapshot()
        counts_after = census()
        diff_census(counts_before, counts_after, args.sockets, args.top)
        report(snap_before, snap_after, args.sockets, args.top)
        child.stdin.close()
        await child.wait()
        await runner.cleanup()  # type: ignore[attr-defined]
    finally:
        if service is not None:
            service.stop()


async def client(base: str, count: int, peer: bool) -> None:
    import aiohttp

    from bench.peers_bench import PeerSocket, gather_limited
    from bench.relay_client import RelaySocket, create_sessions

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sessions = [] if peer else await create_sessions(http, base, count)
        print("sessions", flush=True)
        await reader.readline()
        url = base.replace("http", "ws", 1) + "/ws"
        if peer:
            socks = await gather_limited(count, lambda _: PeerSocket.open(http, url))
        else:
            socks = await gather_limited(count, lambda i: RelaySocket.open(http, url, *sessions[i]))
        print("open", flush=True)
        await reader.read()  # until the parent closes stdin
        await asyncio.gather(*(s.close() for s in socks), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
