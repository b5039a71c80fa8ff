"""What the WebSocket edge adds over talking to the agent's gRPC Chat stream directly.

Starts the agent service (demo model at full speed), the edge in front of it, and
a bare aiohttp WebSocket echo server, all as separate processes on 127.0.0.1,
and measures in the same run:

1. Round trip of a user message until its `chat:accepted` event comes back:
   through the edge (WebSocket, `websockets` client) and directly on a gRPC Chat
   stream, interleaved one for one; plus a raw WebSocket echo round trip. The
   target (PERFORMANCE.md) is edge p50 <= 1.1 x (raw WebSocket p50 + direct p50).
2. One long reply streamed as fast as the demo model goes: frames per second and
   deltas per second one socket receives through the edge, beside the events per
   second a direct gRPC Chat stream receives for the same reply length.

Bounded: a few seconds per phase.

    .venv/bin/python bench/edge_bench.py [--round-trips 300] [--words 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from bench.common import percentile, summary_ms, table

REPO = Path(__file__).resolve().parents[1]
SECRET = "edge-bench-secret-0123456789abcdef-0123456789abcdef"
UNLIMITED = (
    "--conn-frames-per-s",
    "1e9",
    "--conn-frames-burst",
    "1e9",
    "--conn-bytes-per-s",
    "1e12",
    "--conn-bytes-burst",
    "1e12",
    "--user-frames-per-s",
    "1e9",
    "--user-frames-burst",
    "1e9",
    "--user-bytes-per-s",
    "1e12",
    "--user-bytes-burst",
    "1e12",
    "--max-runs-per-user",
    "1000000",
    "--abuse-strikes",
    "1000000",
    "--send-queue-max-bytes",
    "1000000000",
    "--max-connections-per-user",
    "1000000",
    "--anon-sessions-per-s",
    "1e9",
    "--anon-sessions-burst",
    "1e9",
)

ECHO_SERVER = """
import sys
from aiohttp import web, WSMsgType

async def ws(request):
    sock = web.WebSocketResponse(compress=False)
    await sock.prepare(request)
    async for msg in sock:
        if msg.type is WSMsgType.TEXT:
            if msg.data.startswith("push "):
                frame = ('{"type":"chat:response","session_id":"s","seq":1,"run_id":"r",'
                         '"text":"word ","step":0}')
                for _ in range(int(msg.data[5:])):
                    await sock.send_str(frame)
                await sock.send_str("done")
            else:
                await sock.send_str(msg.data)
    return sock

async def main():
    app = web.Application()
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("echo listening on", runner.addresses[0][1], flush=True)
    import asyncio
    await asyncio.Event().wait()

import asyncio
asyncio.run(main())
"""


def start(argv: list[str], marker: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    for line in process.stdout:
        if marker in line:
            return process, line.rsplit(" ", 1)[1].strip()
    raise RuntimeError(f"{argv} did not start")


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        result: dict[str, object] = json.loads(reply.read())
        return result


class Direct:
    """One gRPC Chat stream straight to the agent service."""

    def __init__(self, stub: agent_pb2_grpc.AgentServiceStub) -> None:
        self.call = stub.Chat()

    async def join(self, session_id: str) -> None:
        await self.call.write(
            pb.ChatRequest(request_id="j", join=pb.JoinSession(session_id=session_id))
        )
        while not any(r.request_id == "j" for r in (await self.call.read()).replies):
            pass

    async def round_trip(self, session_id: str) -> float:
        message_id = uuid.uuid4().hex
        start = time.perf_counter()
        await self.call.write(
            pb.ChatRequest(
                send=pb.SendMessage(session_id=session_id, message_id=message_id, text="/fail")
            )
        )
        while True:
            response = await self.call.read()
            for event in response.events:
                if event.HasField("message_accepted") and (
                    event.message_accepted.message_id == message_id
                ):
                    return time.perf_counter() - start

    async def stream(self, session_id: str) -> tuple[float, int, int]:
        """Seconds, gRPC messages and delta events for one long reply."""
        message_id = uuid.uuid4().hex
        messages = deltas = 0
        run_id = None
        start = time.perf_counter()
        await self.call.write(
            pb.ChatRequest(
                send=pb.SendMessage(
                    session_id=session_id, message_id=message_id, text="a long answer"
                )
            )
        )
        while True:
            response = await self.call.read()
            messages += 1
            for event in response.events:
                if event.HasField("message_accepted") and (
                    event.message_accepted.message_id == message_id
                ):
                    run_id = event.run_id
                elif event.run_id != run_id:
                    continue
                elif event.HasField("response_delta"):
                    deltas += 1
                elif event.HasField("run_completed"):
                    return time.perf_counter() - start, messages, deltas


class ViaEdge:
    """One WebSocket to the edge."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, token: str, session_id: str) -> ViaEdge:
        ws = await websockets.connect(
            url, subprotocols=["agent-relay.v1"], compression=None, max_size=None
        )
        await ws.recv()
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(json.dumps({"type": "join", "id": "j", "session_id": session_id}))
        while json.loads(await ws.recv()).get("ref") != "j":
            pass
        return cls(ws)

    async def round_trip(self, session_id: str) -> float:
        message_id = uuid.uuid4().hex
        start = time.perf_counter()
        await self.ws.send(
            json.dumps(
                {
                    "type": "chat:message",
                    "session_id": session_id,
                    "message_id": message_id,
                    "text": "/fail",
                }
            )
        )
        while True:
            frame = json.loads(await self.ws.recv())
            if frame.get("type") == "chat:accepted" and frame.get("message_id") == message_id:
                return time.perf_counter() - start

    async def stream(self, session_id: str) -> tuple[float, int, int]:
        """Seconds, frames and deltas (seq values covered) for one long reply."""
        frames = deltas = 0
        message_id = uuid.uuid4().hex
        run_id = None
        start = time.perf_counter()
        await self.ws.send(
            json.dumps(
                {
                    "type": "chat:message",
                    "session_id": session_id,
                    "message_id": message_id,
                    "text": "a long answer",
                }
            )
        )
        while True:
            frame = json.loads(await self.ws.recv())
            frames += 1
            kind = frame.get("type")
            if kind == "chat:accepted" and frame.get("message_id") == message_id:
                run_id = frame["run_id"]
            elif frame.get("run_id") != run_id:
                continue
            elif kind == "chat:response":
                deltas += frame["seq"] - frame["from_seq"] + 1
            elif kind == "chat:complete":
                return time.perf_counter() - start, frames, deltas


async def echo_round_trips(url: str, count: int) -> list[float]:
    async with websockets.connect(url, compression=None) as ws:
        out = []
        payload = json.dumps({"type": "chat:message", "session_id": "s", "text": "x" * 40})
        for _ in range(count):
            start = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            out.append(time.perf_counter() - start)
        return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def fan_out(args: argparse.Namespace, edge_url: str, echo_url: str) -> list[list[object]]:
    """One reply streamed to N sockets in one room, beside a bare aiohttp server pushing
    one frame per message to N sockets."""
    n = args.sockets
    session = post(edge_url + "/api/sessions", {"title": "bench fan-out"})
    sid, token = str(session["session_id"]), str(session["token"])
    ws_url = edge_url.replace("http", "ws", 1) + "/ws"
    sockets = [await ViaEdge.connect(ws_url, token, sid) for _ in range(n)]

    async def drain(via: ViaEdge) -> tuple[int, int]:
        frames = deltas = 0
        while True:
            frame = json.loads(await via.ws.recv())
            frames += 1
            if frame.get("type") == "chat:response":
                deltas += frame["seq"] - frame["from_seq"] + 1
            elif frame.get("type") == "chat:complete" and frame.get("text", "").startswith(
                "You said"
            ):
                return frames, deltas

    readers = [asyncio.create_task(drain(v)) for v in sockets]
    start = time.perf_counter()
    await sockets[0].ws.send(
        json.dumps(
            {
                "type": "chat:message",
                "session_id": sid,
                "message_id": uuid.uuid4().hex,
                "text": "fan out",
            }
        )
    )
    results = await asyncio.gather(*readers)
    edge_s = time.perf_counter() - start
    for via in sockets:
        await via.ws.close()
    edge_frames = sum(r[0] for r in results)
    edge_deltas = sum(r[1] for r in results)

    raw = [await websockets.connect(echo_url, compression=None, max_size=None) for _ in range(n)]
    per_socket = max(1, args.words // 4)

    async def pushed(ws: websockets.ClientConnection) -> int:
        await ws.send(f"push {per_socket}")
        count = 0
        while await ws.recv() != "done":
            count += 1
        return count

    start = time.perf_counter()
    raw_frames = sum(await asyncio.gather(*(pushed(ws) for ws in raw)))
    raw_s = time.perf_counter() - start
    for ws in raw:
        await ws.close()
    return [
        [
            f"bare aiohttp push, one frame per message, {n} sockets (baseline)",
            f"{raw_s:.2f}",
            raw_frames,
            f"{raw_frames / raw_s:,.0f}",
            f"{raw_frames / raw_s:,.0f}",
        ],
        [
            f"one reply through the edge to {n} sockets in one room",
            f"{edge_s:.2f}",
            edge_frames,
            f"{edge_frames / edge_s:,.0f}",
            f"{edge_deltas / edge_s:,.0f}",
        ],
    ]


async def idle_memory(
    args: argparse.Namespace, edge_url: str, edge_pid: int, echo_url: str, echo_pid: int
) -> list[list[object]]:
    """KiB of server memory per idle socket: the edge (authenticated, joined) and bare aiohttp."""
    n = args.idle
    session = post(edge_url + "/api/sessions", {"title": "bench idle"})
    sid, token = str(session["session_id"]), str(session["token"])
    ws_url = edge_url.replace("http", "ws", 1) + "/ws"
    await asyncio.sleep(0.2)
    before = rss_kib(edge_pid)
    edge_sockets = []
    for _ in range(n):
        edge_sockets.append(await ViaEdge.connect(ws_url, token, sid))
    await asyncio.sleep(0.5)
    edge_kib = (rss_kib(edge_pid) - before) / n
    for via in edge_sockets:
        await via.ws.close()
    before = rss_kib(echo_pid)
    raw = [await websockets.connect(echo_url, compression=None) for _ in range(n)]
    await asyncio.sleep(0.5)
    raw_kib = (rss_kib(echo_pid) - before) / n
    for ws in raw:
        await ws.close()
    return [
        [f"bare aiohttp (baseline), {n} sockets", f"{raw_kib:.1f}"],
        [f"the edge, {n} sockets authenticated and joined", f"{edge_kib:.1f}"],
    ]


async def measure(args: argparse.Namespace, agent: str, edge_url: str, echo_url: str) -> None:
    first = post(edge_url + "/api/sessions", {"title": "bench edge"})
    second = post(edge_url + "/api/sessions", {"title": "bench direct"})
    via = await ViaEdge.connect(
        edge_url.replace("http", "ws", 1) + "/ws", str(first["token"]), str(first["session_id"])
    )
    async with grpc.aio.insecure_channel(agent) as channel:
        direct = Direct(agent_pb2_grpc.AgentServiceStub(channel))
        await direct.join(str(second["session_id"]))
        for _ in range(20):  # warm up both paths
            await via.round_trip(str(first["session_id"]))
            await direct.round_trip(str(second["session_id"]))
        edge_rtt: list[float] = []
        direct_rtt: list[float] = []
        deadline = time.monotonic() + args.seconds
        while len(edge_rtt) < args.round_trips and time.monotonic() < deadline:
            edge_rtt.append(await via.round_trip(str(first["session_id"])))
            direct_rtt.append(await direct.round_trip(str(second["session_id"])))
        echo_rtt = await echo_round_trips(echo_url, len(edge_rtt))
        await asyncio.sleep(0.5)  # let the last runs end
        edge_stream = await via.stream(str(first["session_id"]))
        direct_stream = await direct.stream(str(second["session_id"]))
        direct.call.cancel()
    await via.ws.close()

    added = [e - d for e, d in zip(edge_rtt, direct_rtt, strict=True)]
    table(
        f"Message -> chat:accepted round trip, ms (p50 / p99), {len(edge_rtt)} each, interleaved",
        ["path", "p50 / p99"],
        [
            ["raw aiohttp WebSocket echo (baseline)", summary_ms(echo_rtt)],
            ["agent gRPC Chat stream, direct (baseline)", summary_ms(direct_rtt)],
            ["through the edge (WebSocket -> edge -> gRPC)", summary_ms(edge_rtt)],
            ["added by the edge (pairwise difference)", summary_ms(added)],
        ],
    )
    target = 1.1 * (percentile(echo_rtt, 0.5) + percentile(direct_rtt, 0.5))
    print(
        f"  target: edge p50 <= 1.1 x (echo p50 + direct p50) = {target * 1e3:.2f} ms -> "
        f"{'met' if percentile(edge_rtt, 0.5) <= target else 'NOT met'}"
    )
    e_s, e_frames, e_deltas = edge_stream
    d_s, d_messages, d_deltas = direct_stream
    table(
        f"One reply of {args.words} words at full demo speed, received by one client",
        ["path", "seconds", "messages", "messages/s", "deltas/s"],
        [
            [
                "agent gRPC Chat stream, direct (baseline)",
                f"{d_s:.2f}",
                d_messages,
                f"{d_messages / d_s:,.0f}",
                f"{d_deltas / d_s:,.0f}",
            ],
            [
                "one WebSocket through the edge",
                f"{e_s:.2f}",
                e_frames,
                f"{e_frames / e_s:,.0f}",
                f"{e_deltas / e_s:,.0f}",
            ],
        ],
    )


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def paced(
    args: argparse.Namespace, agent: str, edge_url: str, edge_pid: int
) -> list[list[object]]:
    """Many sessions streaming at a model's pace at once: delta latency (now minus the event's
    append time) through the edge, beside a direct Chat stream that joined every session."""
    n = args.paced_sessions
    ws_url = edge_url.replace("http", "ws", 1) + "/ws"
    sessions = [post(edge_url + "/api/sessions", {"title": f"paced {i}"}) for i in range(n)]
    sockets = [
        await ViaEdge.connect(ws_url, str(s["token"]), str(s["session_id"])) for s in sessions
    ]
    edge_lat: list[float] = []
    direct_lat: list[float] = []
    edge_deltas = 0
    async with grpc.aio.insecure_channel(agent) as channel:
        direct = Direct(agent_pb2_grpc.AgentServiceStub(channel))
        for index, s in enumerate(sessions):
            await direct.call.write(
                pb.ChatRequest(
                    request_id=f"j{index}", join=pb.JoinSession(session_id=str(s["session_id"]))
                )
            )

        async def read_direct() -> None:
            done = 0
            while done < n:
                response = await direct.call.read()
                now_ms = time.time() * 1000
                for event in response.events:
                    if event.HasField("response_delta"):
                        direct_lat.append(now_ms - event.time_unix_ms)
                    elif event.HasField("run_completed"):
                        done += 1

        async def read_edge(via: ViaEdge) -> None:
            nonlocal edge_deltas
            while True:
                frame = json.loads(await via.ws.recv())
                kind = frame.get("type")
                if kind == "chat:response":
                    edge_lat.append(time.time() * 1000 - frame["time_unix_ms"])
                    edge_deltas += frame["seq"] - frame["from_seq"] + 1
                elif kind == "chat:complete":
                    return

        direct_task = asyncio.create_task(read_direct())
        cpu_before = cpu_s(edge_pid)
        start = time.perf_counter()
        for via, s in zip(sockets, sessions, strict=True):
            await via.ws.send(
                json.dumps(
                    {
                        "type": "chat:message",
                        "session_id": s["session_id"],
                        "message_id": uuid.uuid4().hex,
                        "text": "paced",
                    }
                )
            )
        await asyncio.wait_for(
            asyncio.gather(*(read_edge(v) for v in sockets)), args.paced_seconds * 4 + 30
        )
        elapsed = time.perf_counter() - start
        edge_cpu = cpu_s(edge_pid) - cpu_before
        await asyncio.wait_for(direct_task, 30)
        direct.call.cancel()
    for via in sockets:
        await via.ws.close()
    late = sum(1 for x in edge_lat if x > 1000)
    print(
        f"\n  edge CPU while streaming: {edge_cpu / elapsed * 100:.0f}% of a core, "
        f"{edge_cpu / max(1, len(edge_lat)) * 1e6:.0f} us per frame delivered "
        f"({len(edge_lat)} frames)"
    )
    return [
        [
            "direct gRPC Chat stream joined to every session (baseline)",
            f"{percentile(direct_lat, 0.5):.1f} / {percentile(direct_lat, 0.99):.1f}",
            f"{len(direct_lat) / elapsed:,.0f}",
            "-",
        ],
        [
            f"{n} sockets through the edge, one session each",
            f"{percentile(edge_lat, 0.5):.1f} / {percentile(edge_lat, 0.99):.1f}",
            f"{edge_deltas / elapsed:,.0f}",
            str(late),
        ],
    ]


def start_pair(
    tmp: str, name: str, tokens_per_s: float, words: int
) -> tuple[subprocess.Popen[str], str, subprocess.Popen[str], str]:
    """An agent service and an edge in front of it, with the limits out of the way."""
    py = sys.executable
    agent, agent_addr = start(
        [
            py,
            "-m",
            "agent_service",
            "--listen",
            "127.0.0.1:0",
            "--store-url",
            f"sqlite:///{tmp}/{name}.sqlite3",
            "--demo-tokens-per-s",
            str(tokens_per_s),
            "--demo-reply-words",
            str(words),
            "--retention-events",
            "1000000",
        ],
        "listening on",
    )
    try:
        edge, edge_url = start(
            [
                py,
                "-m",
                "ws_edge",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                agent_addr,
                "--jwt-secret",
                SECRET,
                "--log-level",
                "WARNING",
                *UNLIMITED,
            ],
            "listening on",
        )
    except BaseException:
        agent.terminate()
        raise
    return agent, agent_addr, edge, edge_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0, help="bound on the RTT phase")
    parser.add_argument("--words", type=int, default=20000)
    parser.add_argument("--sockets", type=int, default=100, help="sockets in the fan-out room")
    parser.add_argument("--idle", type=int, default=1000, help="idle sockets for memory")
    parser.add_argument(
        "--paced-sessions",
        type=int,
        default=200,
        help="sessions streaming at once at --paced-tokens-per-s (0: skip)",
    )
    parser.add_argument("--paced-tokens-per-s", type=float, default=20.0)
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    args = parser.parse_args()
    processes: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            agent, agent_addr, edge, edge_url = start_pair(tmp, "fast", 0, args.words)
            processes += [agent, edge]
            echo, echo_port = start([sys.executable, "-c", ECHO_SERVER], "listening on")
            processes.append(echo)
            echo_url = f"ws://127.0.0.1:{echo_port}/ws"
            asyncio.run(measure(args, agent_addr, edge_url, echo_url))
            rows = asyncio.run(fan_out(args, edge_url, echo_url))
            table(
                f"Frames pushed to {args.sockets} sockets at once",
                ["path", "seconds", "frames", "frames/s", "deltas/s"],
                rows,
            )
            rows = asyncio.run(idle_memory(args, edge_url, edge.pid, echo_url, echo.pid))
            table(
                "Server memory per idle socket, KiB (RSS growth / sockets)",
                ["server", "KiB per socket"],
                rows,
            )
            if args.paced_sessions > 0:
                words = int(args.paced_tokens_per_s * args.paced_seconds)
                agent2, agent2_addr, edge2, edge2_url = start_pair(
                    tmp, "paced", args.paced_tokens_per_s, words
                )
                processes += [agent2, edge2]
                rows = asyncio.run(paced(args, agent2_addr, edge2_url, edge2.pid))
                table(
                    f"{args.paced_sessions} sessions at {args.paced_tokens_per_s:g} tokens/s "
                    f"each for {args.paced_seconds:g} s: delta latency, ms (p50 / p99; a batched "
                    "frame is timed by its newest delta)",
                    ["path", "p50 / p99", "deltas/s", "frames later than 1 s"],
                    rows,
                )
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
