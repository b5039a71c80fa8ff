"""agent-relay beside its peers, in one run: raw aiohttp WebSocket, raw grpc.aio, python-socketio.

Starts the real agent service (`python -m agent_service`, demo model, durable SQLite
store and log) and edge (`python -m ws_edge`) as subprocesses on 127.0.0.1, three
pairs set for the scenarios' demo speeds, and the peers as small servers in bench/
(peer_ws_server.py, peer_grpc_server.py, peer_sio_server.py). One client process (this
one) drives every system, over the JSON WebSocket protocol (docs/protocol.md) for the
edge. Each scenario runs `--rounds` times; within a round every system runs once, in
an order that rotates round by round (interleaved), and the table gives the median
with the spread (min-max) of the rounds. CPU per message / per delta is each server
process's utime+stime (/proc/PID/stat) over the scenario divided by what it delivered.

Scenarios (docs/performance.md says what each one compares):
  rtt       message -> first delta, fresh session and with --history messages of history
  paced-N   N sessions x --paced-rate words/s for --paced-s seconds, one socket each
  full      --full-sessions sessions at full demo speed: deltas/s delivered
  fanout    one session streamed to --fanout-sockets sockets
  burst     --burst-sessions messages sent at once: first delta p50/p99
  overload  --overload-sessions messages sent at once: acks, refusals, untrue answers
  idle      memory per idle socket, each on its own session (RSS growth / sockets)
  wire      full speed and fan-out again, JSON sockets beside agent-relay.v1+proto sockets
            of the same edge, interleaved: deltas/s and CPU per delta of each wire

Bounded: `--budget-s` (default 450) stops starting new rounds once spent.

    .venv/bin/python bench/peers_bench.py              # the default sizes (make bench)
    .venv/bin/python bench/peers_bench.py --full       # 10,000 idle sockets (the issue's size)
    .venv/bin/python bench/peers_bench.py --gc-gen0-threshold 0   # the GC levers off
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from bench.common import percentile
from bench.peers_report import Results, print_table, report, targets
from bench.procstat import CpuMeter, rss_kib
from bench.relay_client import (
    REPO,
    Proc,
    RelayPair,
    RelaySocket,
    RunWatch,
    create_sessions,
    decode,
    encode,
    fill_history,
    say_until_acked,
    scale_out_flags,
    start_process,
    start_relay,
)

Metrics = dict[str, float]


# ---------------------------------------------------------------- peer clients


class PeerSocket:
    """One aiohttp client WebSocket to peer_ws_server, always reading."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.on_text: Callable[[str], None] | None = None
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str) -> PeerSocket:
        return cls(await http.ws_connect(url, compress=0, max_msg_size=0))

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT and self.on_text is not None:
                self.on_text(msg.data)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


class SioClient:
    """One Socket.IO client speaking the wire protocol (Engine.IO 4, websocket transport)
    over aiohttp, so the load generator costs the same per frame for every WebSocket peer
    and python-socketio's server is what is measured."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.on_delta: Callable[[dict[str, Any]], None] | None = None
        self.on_done: Callable[[], None] | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._ids = 0
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base: str) -> SioClient:
        ws = await http.ws_connect(
            f"{base}/socket.io/?EIO=4&transport=websocket", compress=0, max_msg_size=0
        )
        opened = await ws.receive()
        assert str(opened.data).startswith("0"), opened
        await ws.send_str("40")
        connected = await ws.receive()
        assert str(connected.data).startswith("40"), connected
        return cls(ws)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data: str = msg.data
            if data.startswith("42"):
                name, *rest = decode(data[2:])
                if name == "delta" and self.on_delta is not None:
                    self.on_delta(rest[0])
                elif name == "done" and self.on_done is not None:
                    self.on_done()
            elif data.startswith("43"):
                body = data.index("[")
                waiter = self._acks.pop(int(data[2:body]), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(decode(data[body:]))
            elif data == "2":  # Engine.IO ping from the server
                await self.ws.send_str("3")

    async def emit(self, name: str, data: Any) -> None:
        await self.ws.send_str("42" + encode([name, data]).decode())

    async def call(self, name: str, data: Any) -> Any:
        self._ids += 1
        waiter = asyncio.get_running_loop().create_future()
        self._acks[self._ids] = waiter
        await self.ws.send_str(f"42{self._ids}" + encode([name, data]).decode())
        return await waiter

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def gather_limited(
    count: int, make: Callable[[int], Awaitable[Any]], limit: int = 32
) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(index: int) -> Any:
        async with gate:
            return await make(index)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


# ---------------------------------------------------------------- context


@dataclass
class Relay:
    """agent-relay on one backend: its pairs, set for the scenarios' demo speeds, and the
    sockets each scenario keeps open on them. `name` is its system in the results."""

    name: str
    fast: RelayPair  # full demo speed, 1-word replies: round trips and bursts
    stream: RelayPair  # full demo speed, --full-words replies: full speed and fan-out
    paced: RelayPair  # --paced-rate words/s, paced_words replies
    history_sock: RelaySocket | None = None
    history_messages: int = 0
    paced_socks: list[RelaySocket] = field(default_factory=list)
    full_socks: list[RelaySocket] = field(default_factory=list)
    burst_socks: list[RelaySocket] = field(default_factory=list)

    @property
    def pairs(self) -> tuple[RelayPair, ...]:
        return (self.fast, self.stream, self.paced)

    async def close_socks(self) -> None:
        extra = [self.history_sock] if self.history_sock is not None else []
        for sock in [*self.paced_socks, *self.full_socks, *self.burst_socks, *extra]:
            await sock.close()


@dataclass
class Bench:
    args: argparse.Namespace
    http: aiohttp.ClientSession
    relays: list[Relay]  # the durable default (SQLite) first, then the scale-out backends
    ws: Proc
    sio: Proc
    grpc: Proc
    channel: grpc.aio.Channel
    fresh_index: int = 0
    fan_socks: list[RelaySocket] = field(default_factory=list)
    peer_socks: list[PeerSocket] = field(default_factory=list)
    sio_clients: list[SioClient] = field(default_factory=list)

    @property
    def sqlite(self) -> Relay:
        return self.relays[0]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws.address}/ws"

    @property
    def sio_url(self) -> str:
        return f"http://127.0.0.1:{self.sio.address}"

    def stub(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel)

    async def relay_socks(self, pair: RelayPair, count: int) -> list[RelaySocket]:
        """`count` sockets, each joined to its own new session."""
        sessions = await create_sessions(self.http, pair.http, count)
        return await gather_limited(
            count, lambda i: RelaySocket.open(self.http, pair.ws_url, *sessions[i])
        )

    async def peer_pool(self, count: int) -> list[PeerSocket]:
        while len(self.peer_socks) < count:
            self.peer_socks.append(await PeerSocket.open(self.http, self.ws_url))
        return self.peer_socks[:count]

    async def sio_pool(self, count: int) -> list[SioClient]:
        if len(self.sio_clients) < count:
            more = await gather_limited(
                count - len(self.sio_clients), lambda _: SioClient.open(self.http, self.sio_url), 16
            )
            self.sio_clients.extend(more)
        return self.sio_clients[:count]


def per(cpu: dict[str, float], count: int, unit: float, prefix: str) -> Metrics:
    """CPU per item of each process, in `unit` (1e3: ms, 1e6: us)."""
    return {f"{prefix}_{name}": seconds / max(1, count) * unit for name, seconds in cpu.items()}


def latency_metrics(values_ms: list[float], prefix: str = "") -> Metrics:
    return {
        f"{prefix}p50_ms": percentile(values_ms, 0.5),
        f"{prefix}p99_ms": percentile(values_ms, 0.99),
        f"{prefix}max_ms": max(values_ms) if values_ms else float("nan"),
    }


# ---------------------------------------------------------------- round trips


async def relay_round_trips(
    pair: RelayPair, sock: RelaySocket, count: int
) -> tuple[list[float], dict[str, float]]:
    """`count` messages one after another: seconds to each one's first delta (each run
    ends before the next message goes), and the processes' CPU over them."""
    meter = CpuMeter({"service": pair.service.pid, "edge": pair.edge.pid})
    meter.start()
    out: list[float] = []
    for _ in range(count):
        watch = RunWatch()
        sock.on_frame = watch
        start = time.perf_counter()
        watch.message_id = await sock.say("hi")
        await asyncio.wait_for(watch.done.wait(), 30)
        assert watch.first_delta_at is not None, "a run ended without a delta"
        out.append(watch.first_delta_at - start)
    sock.on_frame = None
    return out, meter.stop()


async def rtt_relay_fresh(b: Bench, relay: Relay) -> Metrics:
    sock = (await b.relay_socks(relay.fast, 1))[0]
    values, cpu = await relay_round_trips(relay.fast, sock, b.args.rtt_count)
    await sock.close()
    return {**latency_metrics([v * 1e3 for v in values]), **per(cpu, len(values), 1e3, "cpu_ms")}


async def rtt_relay_history(b: Bench, relay: Relay) -> Metrics:
    assert relay.history_sock is not None
    values, cpu = await relay_round_trips(relay.fast, relay.history_sock, b.args.rtt_count)
    relay.history_messages += len(values)
    return {
        **latency_metrics([v * 1e3 for v in values]),
        **per(cpu, len(values), 1e3, "cpu_ms"),
        "history_messages": relay.history_messages - len(values),
    }


async def build_history(b: Bench, relay: Relay, count: int, budget_s: float) -> None:
    """One session with `count` messages (and their runs) behind it, a few in flight at once."""
    sock = (await b.relay_socks(relay.fast, 1))[0]
    relay.history_messages = await fill_history(sock, count, budget_s)
    relay.history_sock = sock


async def rtt_ws(b: Bench) -> Metrics:
    sock = (await b.peer_pool(1))[0]
    got: asyncio.Future[str] | None = None

    def on_text(text: str) -> None:
        if got is not None and not got.done():
            got.set_result(text)

    sock.on_text = on_text
    meter = CpuMeter({"server": b.ws.pid})
    meter.start()
    payload = '{"type":"chat:message","session_id":"s","message_id":"m","text":"hi"}'
    values = []
    for _ in range(b.args.rtt_count):
        got = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        await sock.ws.send_str(payload)
        decode(await got)
        values.append((time.perf_counter() - start) * 1e3)
    sock.on_text = None
    return {**latency_metrics(values), **per(meter.stop(), len(values), 1e3, "cpu_ms")}


async def rtt_grpc_unary(b: Bench) -> Metrics:
    call = b.channel.unary_unary("/bench.Echo/Unary")
    meter = CpuMeter({"server": b.grpc.pid})
    meter.start()
    values = []
    for _ in range(b.args.rtt_count):
        start = time.perf_counter()
        await call(b"hi")
        values.append((time.perf_counter() - start) * 1e3)
    return {**latency_metrics(values), **per(meter.stop(), len(values), 1e3, "cpu_ms")}


async def rtt_grpc_bidi(b: Bench) -> Metrics:
    call = b.stub().Chat()
    meter = CpuMeter({"server": b.grpc.pid})
    meter.start()
    values = []
    for index in range(b.args.rtt_count):
        start = time.perf_counter()
        await call.write(
            pb.ChatRequest(send=pb.SendMessage(session_id="s", message_id=str(index), text="rtt"))
        )
        await call.read()
        values.append((time.perf_counter() - start) * 1e3)
    await call.done_writing()
    call.cancel()
    return {**latency_metrics(values), **per(meter.stop(), len(values), 1e3, "cpu_ms")}


async def rtt_sio(b: Bench) -> Metrics:
    client = (await b.sio_pool(1))[0]
    meter = CpuMeter({"server": b.sio.pid})
    meter.start()
    values = []
    for _ in range(b.args.rtt_count):
        start = time.perf_counter()
        await client.call("echo", {"type": "chat:message", "text": "hi"})
        values.append((time.perf_counter() - start) * 1e3)
    return {**latency_metrics(values), **per(meter.stop(), len(values), 1e3, "cpu_ms")}


# ---------------------------------------------------------------- paced


@dataclass
class Paced:
    """What N paced streams delivered: latencies, deltas, when each got its first one."""

    n: int
    expected: int
    latencies_ms: list[float] = field(default_factory=list)
    deltas: int = 0
    firsts: list[float] = field(default_factory=list)
    finished: int = 0
    all_done: asyncio.Event = field(default_factory=asyncio.Event)

    def finish(self) -> None:
        self.finished += 1
        if self.finished >= self.n:
            self.all_done.set()

    def metrics(self, start: float, end: float, cpu: dict[str, float], late_ms: float) -> Metrics:
        return {
            **latency_metrics(self.latencies_ms),
            "delivered": self.deltas,
            "expected": self.expected,
            "dropped": self.expected - self.deltas,
            "late_frames": sum(1 for x in self.latencies_ms if x > late_ms),
            "frames": len(self.latencies_ms),
            "ramp_s": (max(self.firsts) - start) if len(self.firsts) == self.n else float("nan"),
            "deltas_per_s": self.deltas / max(1e-9, end - start),
            **per(cpu, self.deltas, 1e6, "cpu_us_per_delta"),
        }


def paced_words(args: argparse.Namespace) -> int:
    return max(1, round(args.paced_rate * args.paced_s))


async def paced_relay(b: Bench, relay: Relay, n: int) -> Metrics:
    words = paced_words(b.args)
    socks = relay.paced_socks[:n]
    state = Paced(n, n * words)
    watches = []
    for sock in socks:
        watch = RunWatch()
        sock.on_frame = watch
        watches.append(watch)
    meter = CpuMeter({"service": relay.paced.service.pid, "edge": relay.paced.edge.pid})
    meter.start()
    refusals: list[str] = []
    start = time.perf_counter()
    sends = []
    for sock, watch in zip(socks, watches, strict=True):
        watch.message_id = uuid.uuid4().hex
        sends.append(
            asyncio.create_task(say_until_acked(sock, "paced", watch.message_id, refusals))
        )
    timeout = b.args.paced_s * 4 + 30
    try:
        await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), timeout)
    except TimeoutError:
        pass
    end = time.perf_counter()
    cpu = meter.stop()
    for task in sends:
        task.cancel()
    await asyncio.gather(*sends, return_exceptions=True)
    if refusals:
        codes = ", ".join(f"{c} {refusals.count(c)}" for c in sorted(set(refusals)))
        print(f"  paced {n}: messages refused before their acceptance: {codes}", flush=True)
    for sock, watch in zip(socks, watches, strict=True):
        sock.on_frame = None
        state.latencies_ms.extend(watch.latencies_ms)
        state.deltas += watch.deltas
        if watch.first_delta_at is not None:
            state.firsts.append(watch.first_delta_at)
    # the demo's reply has `words` deltas, the first of which quotes the message
    return {**state.metrics(start, end, cpu, b.args.late_ms), "resent": len(refusals)}


async def paced_ws(b: Bench, n: int) -> Metrics:
    words = paced_words(b.args)
    socks = await b.peer_pool(n)
    state = Paced(n, n * words)

    def handler() -> Callable[[str], None]:
        first = True

        def on_text(text: str) -> None:
            nonlocal first
            if text == "done":
                state.finish()
                return
            frame = decode(text)
            state.latencies_ms.append(time.time() * 1000 - frame["time_unix_ms"])
            state.deltas += 1
            if first:
                first = False
                state.firsts.append(time.perf_counter())

        return on_text

    for sock in socks:
        sock.on_text = handler()
    meter = CpuMeter({"server": b.ws.pid})
    meter.start()
    start = time.perf_counter()
    for sock in socks:
        await sock.ws.send_str(f"pace {words} {b.args.paced_rate}")
    try:
        await asyncio.wait_for(state.all_done.wait(), b.args.paced_s * 4 + 30)
    except TimeoutError:
        pass
    end = time.perf_counter()
    for sock in socks:
        sock.on_text = None
    return state.metrics(start, end, meter.stop(), b.args.late_ms)


async def paced_sio(b: Bench, n: int) -> Metrics:
    words = paced_words(b.args)
    clients = await b.sio_pool(n)
    state = Paced(n, n * words)

    def handler() -> Callable[[dict[str, Any]], None]:
        first = True

        def on_delta(data: dict[str, Any]) -> None:
            nonlocal first
            state.latencies_ms.append(time.time() * 1000 - data["time_unix_ms"])
            state.deltas += 1
            if first:
                first = False
                state.firsts.append(time.perf_counter())

        return on_delta

    for client in clients:
        client.on_delta = handler()
        client.on_done = state.finish
    meter = CpuMeter({"server": b.sio.pid})
    meter.start()
    start = time.perf_counter()
    for client in clients:
        await client.emit("pace", {"n": words, "rate": b.args.paced_rate})
    try:
        await asyncio.wait_for(state.all_done.wait(), b.args.paced_s * 4 + 30)
    except TimeoutError:
        pass
    end = time.perf_counter()
    for client in clients:
        client.on_delta = None
        client.on_done = None
    return state.metrics(start, end, meter.stop(), b.args.late_ms)


async def grpc_streams(b: Bench, n: int, text: str, state: Paced) -> None:
    """n Chat streams, each sending one command and reading until RunCompleted."""

    async def one(index: int) -> None:
        call = b.stub().Chat()
        await call.write(
            pb.ChatRequest(send=pb.SendMessage(session_id=f"s{index}", message_id="m", text=text))
        )
        first = True
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                break
            now_ms = time.time() * 1000
            event = response.events[0]
            if event.HasField("run_completed"):
                break
            state.latencies_ms.append(now_ms - event.time_unix_ms)
            state.deltas += 1
            if first:
                first = False
                state.firsts.append(time.perf_counter())
        await call.done_writing()
        call.cancel()

    await asyncio.gather(*(one(i) for i in range(n)))


async def paced_grpc(b: Bench, n: int) -> Metrics:
    words = paced_words(b.args)
    state = Paced(n, n * words)
    meter = CpuMeter({"server": b.grpc.pid})
    meter.start()
    start = time.perf_counter()
    try:
        await asyncio.wait_for(
            grpc_streams(b, n, f"pace {words} {b.args.paced_rate}", state), b.args.paced_s * 4 + 30
        )
    except TimeoutError:
        pass
    end = time.perf_counter()
    return state.metrics(start, end, meter.stop(), b.args.late_ms)


# ---------------------------------------------------------------- full speed


async def full_relay(b: Bench, relay: Relay, socks: list[RelaySocket] | None = None) -> Metrics:
    socks = relay.full_socks if socks is None else socks
    watches = []
    for sock in socks:
        watch = RunWatch()
        sock.on_frame = watch
        watches.append(watch)
    meter = CpuMeter({"service": relay.stream.service.pid, "edge": relay.stream.edge.pid})
    meter.start()
    start = time.perf_counter()
    for sock, watch in zip(socks, watches, strict=True):
        watch.message_id = await sock.say("fullspeed")
    await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), 180)
    elapsed = time.perf_counter() - start
    cpu = meter.stop()
    deltas = sum(w.deltas for w in watches)
    frames = sum(w.frames for w in watches)
    events = sum(w.events for w in watches)
    for sock in socks:
        sock.on_frame = None
    return {
        "events_per_s": events / elapsed,
        "deltas_per_s": deltas / elapsed,
        "frames_per_s": frames / elapsed,
        "deltas": deltas,
        "seconds": elapsed,
        **per(cpu, deltas, 1e6, "cpu_us_per_delta"),
    }


async def full_ws(b: Bench) -> Metrics:
    socks = await b.peer_pool(b.args.full_sessions)
    count = b.args.peer_frames
    frames = 0
    done = asyncio.Event()
    finished = 0

    def on_text(text: str) -> None:
        nonlocal frames, finished
        if text == "done":
            finished += 1
            if finished == len(socks):
                done.set()
        else:
            decode(text)
            frames += 1

    for sock in socks:
        sock.on_text = on_text
    meter = CpuMeter({"server": b.ws.pid})
    meter.start()
    start = time.perf_counter()
    for sock in socks:
        await sock.ws.send_str(f"push {count}")
    await asyncio.wait_for(done.wait(), 180)
    elapsed = time.perf_counter() - start
    for sock in socks:
        sock.on_text = None
    return {
        "deltas_per_s": frames / elapsed,
        "frames_per_s": frames / elapsed,
        "deltas": frames,
        "seconds": elapsed,
        **per(meter.stop(), frames, 1e6, "cpu_us_per_delta"),
    }


async def full_sio(b: Bench) -> Metrics:
    clients = await b.sio_pool(b.args.full_sessions)
    count = max(1, b.args.peer_frames // 4)
    frames = 0
    done = asyncio.Event()
    finished = 0

    def on_delta(data: dict[str, Any]) -> None:
        nonlocal frames
        frames += 1

    def on_done() -> None:
        nonlocal finished
        finished += 1
        if finished == len(clients):
            done.set()

    for client in clients:
        client.on_delta = on_delta
        client.on_done = on_done
    meter = CpuMeter({"server": b.sio.pid})
    meter.start()
    start = time.perf_counter()
    for client in clients:
        await client.emit("push", {"n": count})
    await asyncio.wait_for(done.wait(), 180)
    elapsed = time.perf_counter() - start
    for client in clients:
        client.on_delta = None
        client.on_done = None
    return {
        "deltas_per_s": frames / elapsed,
        "frames_per_s": frames / elapsed,
        "deltas": frames,
        "seconds": elapsed,
        **per(meter.stop(), frames, 1e6, "cpu_us_per_delta"),
    }


async def full_grpc(b: Bench) -> Metrics:
    n = b.args.full_sessions
    state = Paced(n, n * b.args.peer_frames)
    meter = CpuMeter({"server": b.grpc.pid})
    meter.start()
    start = time.perf_counter()
    await asyncio.wait_for(grpc_streams(b, n, f"push {b.args.peer_frames // 2}", state), 180)
    elapsed = time.perf_counter() - start
    return {
        "deltas_per_s": state.deltas / elapsed,
        "frames_per_s": state.deltas / elapsed,
        "deltas": state.deltas,
        "seconds": elapsed,
        **per(meter.stop(), state.deltas, 1e6, "cpu_us_per_delta"),
    }


# ---------------------------------------------------------------- fan-out


async def fan_relay(b: Bench, socks: list[RelaySocket] | None = None) -> Metrics:
    socks = b.fan_socks if socks is None else socks
    message_id = uuid.uuid4().hex
    watches = []
    for sock in socks:
        watch = RunWatch(message_id)
        sock.on_frame = watch
        watches.append(watch)
    stream = b.sqlite.stream
    meter = CpuMeter({"service": stream.service.pid, "edge": stream.edge.pid})
    meter.start()
    start = time.perf_counter()
    await socks[0].say("fanout", message_id)
    await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), 180)
    elapsed = time.perf_counter() - start
    cpu = meter.stop()
    deltas = sum(w.deltas for w in watches)
    frames = sum(w.frames for w in watches)
    events = sum(w.events for w in watches)
    for sock in socks:
        sock.on_frame = None
    return {
        "events_per_s": events / elapsed,
        "frames_per_s": frames / elapsed,
        "deltas_per_s": deltas / elapsed,
        "seconds": elapsed,
        **per(cpu, deltas, 1e6, "cpu_us_per_delta"),
    }


async def fan_ws(b: Bench) -> Metrics:
    socks = b.peer_socks[: b.args.fanout_sockets]
    count = max(1, b.args.peer_frames // 4)
    frames = 0
    finished = 0
    done = asyncio.Event()

    def on_text(text: str) -> None:
        nonlocal frames, finished
        if text == "done":
            finished += 1
            if finished == len(socks):
                done.set()
        else:
            decode(text)
            frames += 1

    for sock in socks:
        sock.on_text = on_text
    meter = CpuMeter({"server": b.ws.pid})
    meter.start()
    start = time.perf_counter()
    await socks[0].ws.send_str(f"fan g {count}")
    await asyncio.wait_for(done.wait(), 180)
    elapsed = time.perf_counter() - start
    for sock in socks:
        sock.on_text = None
    return {
        "frames_per_s": frames / elapsed,
        "deltas_per_s": frames / elapsed,
        "seconds": elapsed,
        **per(meter.stop(), frames, 1e6, "cpu_us_per_delta"),
    }


async def fan_sio(b: Bench) -> Metrics:
    clients = b.sio_clients[: b.args.fanout_sockets]
    count = max(1, b.args.peer_frames // 8)
    frames = 0
    finished = 0
    done = asyncio.Event()

    def on_delta(data: dict[str, Any]) -> None:
        nonlocal frames
        frames += 1

    def on_done() -> None:
        nonlocal finished
        finished += 1
        if finished == len(clients):
            done.set()

    for client in clients:
        client.on_delta = on_delta
        client.on_done = on_done
    meter = CpuMeter({"server": b.sio.pid})
    meter.start()
    start = time.perf_counter()
    await clients[0].emit("fan", {"group": "g", "n": count})
    await asyncio.wait_for(done.wait(), 180)
    elapsed = time.perf_counter() - start
    for client in clients:
        client.on_delta = None
        client.on_done = None
    return {
        "frames_per_s": frames / elapsed,
        "deltas_per_s": frames / elapsed,
        "seconds": elapsed,
        **per(meter.stop(), frames, 1e6, "cpu_us_per_delta"),
    }


# ---------------------------------------------------------------- overload


async def overload_relay(b: Bench, tmp: Path) -> Metrics:
    """N sessions, one socket each, all sending one message at once (issue 15's overload).

    Runs on a service and edge of its own (demo at --paced-rate words/s, --overload-words
    replies, the edge's command timeout --overload-timeout-s). Counts each message's first
    answer: acked, refused `overloaded` (before acceptance), `upstream_unavailable` (the
    edge heard nothing in time: outcome unknown) or other; then sends each refused message
    again with the same id once its retry_after_ms has passed, as both clients do, until
    it is acked. A refusal was untrue when the service accepted the message anyway: its
    resend is acked as a `duplicate`. Finally every message must be in its session's
    history exactly once."""
    from bench.relay_client import SECRET, UNLIMITED

    n, py, index = b.args.overload_sessions, sys.executable, uuid.uuid4().hex[:8]
    service = start_process(
        f"overload{index}-service",
        [
            py, "-m", "agent_service", "--listen", "127.0.0.1:0",
            "--store-url", f"sqlite:///{tmp}/overload{index}.sqlite3",
            "--demo-tokens-per-s", str(b.args.paced_rate),
            "--demo-reply-words", str(b.args.overload_words), "--log-level", "WARNING",
        ],
        "agent_service listening on",
    )  # fmt: skip
    edge = start_process(
        f"overload{index}-edge",
        [
            py, "-m", "ws_edge", "--listen", "127.0.0.1:0", "--upstream", service.address,
            "--jwt-secret", SECRET, "--static-dir", "/nonexistent", "--log-level", "WARNING",
            "--anon-sessions-per-s", "1e9", "--anon-sessions-burst", "1e9", *UNLIMITED,
            "--command-timeout-s", str(b.args.overload_timeout_s),
        ],
        "ws_edge listening on",
    )  # fmt: skip
    pair = RelayPair(service, edge)
    socks: list[RelaySocket] = []
    try:
        sessions = await create_sessions(b.http, pair.http, n)
        socks = await gather_limited(
            n, lambda i: RelaySocket.open(b.http, pair.ws_url, *sessions[i])
        )
        ids = [f"overload-{uuid.uuid4().hex}" for _ in range(n)]

        async def say(i: int) -> dict[str, Any]:
            frame = {"type": "chat:message", "session_id": sessions[i][0], "text": "hi"}
            return await socks[i].request({**frame, "message_id": ids[i]}, timeout_s=300)

        start = time.perf_counter()
        first = await asyncio.gather(*(say(i) for i in range(n)))
        answered_s = time.perf_counter() - start
        kinds = [a["type"] if a["type"] == "ack" else str(a.get("code")) for a in first]
        untrue = {"overloaded": 0, "upstream_unavailable": 0}
        resends = 0

        async def until_acked(i: int) -> None:
            nonlocal resends
            answer = first[i]
            while answer["type"] != "ack":
                refused_as = str(answer.get("code"))
                await asyncio.sleep(max(500, answer.get("retry_after_ms", 1000)) / 1000)
                resends += 1
                answer = await say(i)
                if answer["type"] == "ack" and answer.get("duplicate") and refused_as in untrue:
                    untrue[refused_as] += 1  # the attempt refused last had been accepted

        await asyncio.wait_for(asyncio.gather(*(until_acked(i) for i in range(n))), 600)
        acked_s = time.perf_counter() - start

        async def stored(i: int) -> int:
            url = f"{pair.http}/api/sessions/{sessions[i][0]}/messages"
            headers = {"Authorization": f"Bearer {sessions[i][1]}"}
            async with b.http.get(url, headers=headers) as reply:
                body = await reply.json()
            return sum(1 for m in body["messages"] if m["message_id"] == ids[i])

        counts = await gather_limited(n, stored)
        return {
            "sessions": n,
            "acked": kinds.count("ack"),
            "overloaded": kinds.count("overloaded"),
            # of those, refused at the moment of acceptance: the deadline had passed
            "overloaded_late": sum(1 for a in first if "waited past" in str(a.get("message"))),
            "upstream_unavailable": kinds.count("upstream_unavailable"),
            "other": n - kinds.count("ack") - kinds.count("overloaded")
            - kinds.count("upstream_unavailable"),
            "untrue": untrue["overloaded"] + untrue["upstream_unavailable"],
            "untrue_overloaded": untrue["overloaded"],
            "unavailable_then_run": untrue["upstream_unavailable"],
            "answered_s": answered_s,
            "all_acked_s": acked_s,
            "resends": resends,
            "not_once_in_history": sum(1 for c in counts if c != 1),
        }  # fmt: skip
    finally:
        for sock in socks:
            await sock.close()
        pair.stop()


# ---------------------------------------------------------------- burst


async def burst_relay(b: Bench, relay: Relay) -> Metrics:
    socks = relay.burst_socks
    watches = []
    for sock in socks:
        watch = RunWatch()
        sock.on_frame = watch
        watches.append(watch)
    start = time.perf_counter()
    ids = await asyncio.gather(*(sock.say("burst") for sock in socks))
    for watch, message_id in zip(watches, ids, strict=True):
        watch.message_id = message_id
    await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), 60)
    for sock in socks:
        sock.on_frame = None
    return latency_metrics([((w.first_delta_at or float("nan")) - start) * 1e3 for w in watches])


async def burst_ws(b: Bench) -> Metrics:
    socks = await b.peer_pool(b.args.burst_sessions)
    times: list[float] = []
    done = asyncio.Event()

    def on_text(text: str) -> None:
        decode(text)
        times.append(time.perf_counter())
        if len(times) == len(socks):
            done.set()

    for sock in socks:
        sock.on_text = on_text
    start = time.perf_counter()
    await asyncio.gather(
        *(sock.ws.send_str('{"type":"chat:message","text":"at once"}') for sock in socks)
    )
    await asyncio.wait_for(done.wait(), 60)
    for sock in socks:
        sock.on_text = None
    return latency_metrics([(t - start) * 1e3 for t in times])


async def burst_grpc(b: Bench) -> Metrics:
    n = b.args.burst_sessions

    async def one(index: int) -> float:
        call = b.stub().Chat()
        await call.write(
            pb.ChatRequest(send=pb.SendMessage(session_id=f"s{index}", message_id="m", text="rtt"))
        )
        await call.read()
        at = time.perf_counter()
        await call.done_writing()
        call.cancel()
        return at

    start = time.perf_counter()
    times = await asyncio.gather(*(one(i) for i in range(n)))
    return latency_metrics([(t - start) * 1e3 for t in times])


async def burst_sio(b: Bench) -> Metrics:
    clients = await b.sio_pool(b.args.burst_sessions)

    async def one(client: SioClient) -> float:
        await client.call("echo", {"type": "chat:message", "text": "at once"})
        return time.perf_counter()

    start = time.perf_counter()
    times = await asyncio.gather(*(one(c) for c in clients))
    return latency_metrics([(t - start) * 1e3 for t in times])


# ---------------------------------------------------------------- idle memory


@dataclass
class Idle:
    """Processes started fresh for the memory scenario, and the sockets opened so far."""

    relay: RelayPair
    ws: Proc
    sio: Proc
    relay_socks: list[RelaySocket] = field(default_factory=list)
    ws_socks: list[PeerSocket] = field(default_factory=list)
    sio_clients: list[SioClient] = field(default_factory=list)

    async def close(self) -> None:
        """Close the sockets opened so far (the counts in the results stay)."""
        socks = [*self.relay_socks, *self.ws_socks, *self.sio_clients]
        self.relay_socks, self.ws_socks, self.sio_clients = [], [], []
        await asyncio.gather(*(sock.close() for sock in socks), return_exceptions=True)


async def settle() -> None:
    await asyncio.sleep(1.0)


async def idle_relay(b: Bench, idle: Idle, step: int) -> Metrics:
    await settle()
    edge_before, service_before = rss_kib(idle.relay.edge.pid), rss_kib(idle.relay.service.pid)
    sessions = await create_sessions(b.http, idle.relay.http, step)
    socks = await gather_limited(
        step, lambda i: RelaySocket.open(b.http, idle.relay.ws_url, *sessions[i])
    )
    idle.relay_socks.extend(socks)
    await settle()
    return {
        "kib_per_socket": (rss_kib(idle.relay.edge.pid) - edge_before) / step,
        "service_kib_per_session": (rss_kib(idle.relay.service.pid) - service_before) / step,
        "sockets": len(idle.relay_socks),
    }


async def idle_ws(b: Bench, idle: Idle, step: int) -> Metrics:
    await settle()
    before = rss_kib(idle.ws.pid)
    url = f"ws://127.0.0.1:{idle.ws.address}/ws"
    idle.ws_socks.extend(await gather_limited(step, lambda _: PeerSocket.open(b.http, url)))
    await settle()
    return {"kib_per_socket": (rss_kib(idle.ws.pid) - before) / step, "sockets": len(idle.ws_socks)}


async def idle_sio(b: Bench, idle: Idle, step: int) -> Metrics:
    await settle()
    before = rss_kib(idle.sio.pid)
    url = f"http://127.0.0.1:{idle.sio.address}"
    idle.sio_clients.extend(await gather_limited(step, lambda _: SioClient.open(b.http, url), 16))
    await settle()
    return {
        "kib_per_socket": (rss_kib(idle.sio.pid) - before) / step,
        "sockets": len(idle.sio_clients),
    }


# ---------------------------------------------------------------- wire formats


async def wire_rounds(b: Bench, results: Results, deadline: float) -> None:
    """Full speed and fan-out on the `stream` edge, JSON sockets beside proto sockets."""
    stream, n, fan = b.sqlite.stream, b.args.full_sessions, b.args.fanout_sockets
    socks: dict[str, list[RelaySocket]] = {}
    fans: dict[str, list[RelaySocket]] = {}
    for wire in ("json", "proto"):
        sessions = await create_sessions(b.http, stream.http, n)
        socks[wire] = await gather_limited(
            n, lambda i, w=wire, s=sessions: RelaySocket.open(b.http, stream.ws_url, *s[i], w)
        )
        one = (await create_sessions(b.http, stream.http, 1))[0]
        fans[wire] = await gather_limited(
            fan, lambda _, w=wire, o=one: RelaySocket.open(b.http, stream.ws_url, *o, w)
        )
    await run_rounds(
        b,
        results,
        "wire-full",
        {w: lambda w=w: full_relay(b, b.sqlite, socks[w]) for w in socks},
        deadline,
    )
    await run_rounds(
        b,
        results,
        "wire-fanout",
        {w: lambda w=w: fan_relay(b, fans[w]) for w in fans},
        deadline,
    )
    for sock in [*socks["json"], *socks["proto"], *fans["json"], *fans["proto"]]:
        await sock.close()


# ---------------------------------------------------------------- orchestration


SYSTEMS = {"sqlite": "relay", "redis": "relay redis"}  # backend -> its system in the results


def scale_out_missing() -> list[tuple[str, str]]:
    """The scale-out backends (the tests' PostgreSQL and Redis) that do not answer."""
    from tests.support.backends import POSTGRES_URL, REDIS_URL, answers

    out = []
    for name, url in (("PostgreSQL", POSTGRES_URL), ("Redis", REDIS_URL)):
        where = urlsplit(url)
        if not answers(where.hostname or "127.0.0.1", where.port or 0):
            out.append((name, f"{where.hostname}:{where.port}"))
    return out


async def start_backend(
    args: argparse.Namespace,
    tmp: Path,
    backend: str,
    gc_args: tuple[str, ...],
    stack: contextlib.AsyncExitStack,
) -> Relay:
    """agent-relay's three pairs on `backend`: "sqlite", the durable default (a SQLite file
    each), or "redis", the scale-out backends (a fresh PostgreSQL database as the store
    and a fresh Redis key prefix as the log each, one replica; `stack` drops them)."""
    pairs = []
    try:
        for role, rate, words in (
            ("fast", 0.0, 1),
            ("stream", 0.0, args.full_words),
            ("paced", args.paced_rate, paced_words(args)),
        ):
            flags = await scale_out_flags(stack) if backend == "redis" else ()
            name = role if backend == "sqlite" else f"{role}-{backend}"
            pairs.append(start_relay(tmp, name, rate, words, gc_args, flags))
    except BaseException:
        for pair in pairs:
            pair.stop()
        raise
    fast, stream, paced = pairs
    return Relay(SYSTEMS[backend], fast, stream, paced)


async def run_rounds(
    b: Bench,
    results: Results,
    scenario: str,
    systems: dict[str, Callable[[], Awaitable[Metrics]]],
    deadline: float,
) -> None:
    names = list(systems)
    for index in range(b.args.rounds):
        if index > 0 and time.monotonic() > deadline:
            print(f"  {scenario}: budget spent, {index} round(s)", flush=True)
            break
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            t0 = time.monotonic()
            metrics = await systems[name]()
            results.setdefault(scenario, {}).setdefault(name, []).append(metrics)
            shown = ", ".join(f"{k}={v:.3g}" for k, v in list(metrics.items())[:4])
            print(
                f"  [{scenario} round {index + 1}] {name}: {shown} ({time.monotonic() - t0:.1f} s)",
                flush=True,
            )


async def measure(args: argparse.Namespace, tmp: Path) -> tuple[Results, dict[str, Any]]:
    started = time.monotonic()
    deadline = started + args.budget_s
    gc_args = (
        ("--gc-gen0-threshold", str(args.gc_gen0_threshold)) if args.gc_gen0_threshold >= 0 else ()
    )
    py = sys.executable
    procs: list[Any] = []
    results: Results = {}
    info: dict[str, Any] = {}
    backends = contextlib.AsyncExitStack()
    try:
        relays = [await start_backend(args, tmp, "sqlite", gc_args, backends)]
        procs += relays[0].pairs
        if "redis" in args.backends:
            missing = [f"{name} on {where}" for name, where in scale_out_missing()]
            if missing:
                print(f"  no PostgreSQL + Redis rows: {', '.join(missing)} does not answer")
                info["scale_out_missing"] = missing
            else:
                relays.append(await start_backend(args, tmp, "redis", gc_args, backends))
                procs += relays[-1].pairs
        ws = start_process(
            "peer_ws", [py, str(REPO / "bench/peer_ws_server.py")], "peer_ws listening on"
        )
        procs.append(ws)
        sio = start_process(
            "peer_sio", [py, str(REPO / "bench/peer_sio_server.py")], "peer_sio listening on"
        )
        procs.append(sio)
        grpc_peer = start_process(
            "peer_grpc", [py, str(REPO / "bench/peer_grpc_server.py")], "peer_grpc listening on"
        )
        procs.append(grpc_peer)
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            grpc.aio.insecure_channel(grpc_peer.address) as channel,
        ):
            b = Bench(args, http, relays, ws, sio, grpc_peer, channel)
            stream = b.sqlite.stream
            if "rtt" in args.scenarios:
                for relay in relays:
                    t0 = time.monotonic()
                    await build_history(b, relay, args.history, args.history_budget_s)
                    seconds = info[f"history_build_s {relay.name}"] = time.monotonic() - t0
                    print(
                        f"  history ({relay.name}): {relay.history_messages} messages in "
                        f"{seconds:.1f} s",
                        flush=True,
                    )
                await run_rounds(
                    b,
                    results,
                    "rtt",
                    {
                        **{
                            f"{r.name} {kind}": lambda r=r, f=f: f(b, r)
                            for r in relays
                            for kind, f in (
                                ("fresh", rtt_relay_fresh),
                                ("history", rtt_relay_history),
                            )
                        },
                        "aiohttp ws": lambda: rtt_ws(b),
                        "grpc unary": lambda: rtt_grpc_unary(b),
                        "grpc bidi": lambda: rtt_grpc_bidi(b),
                        "socketio": lambda: rtt_sio(b),
                    },
                    deadline,
                )
            if "burst" in args.scenarios:
                for relay in relays:
                    relay.burst_socks = await b.relay_socks(relay.fast, args.burst_sessions)
                await run_rounds(
                    b,
                    results,
                    "burst",
                    {
                        **{r.name: lambda r=r: burst_relay(b, r) for r in relays},
                        "aiohttp ws": lambda: burst_ws(b),
                        "grpc bidi": lambda: burst_grpc(b),
                        "socketio": lambda: burst_sio(b),
                    },
                    deadline,
                )
            if "full" in args.scenarios:
                for relay in relays:
                    relay.full_socks = await b.relay_socks(relay.stream, args.full_sessions)
                await run_rounds(
                    b,
                    results,
                    "full",
                    {
                        **{r.name: lambda r=r: full_relay(b, r) for r in relays},
                        "aiohttp ws": lambda: full_ws(b),
                        "socketio": lambda: full_sio(b),
                        "grpc bidi": lambda: full_grpc(b),
                    },
                    deadline,
                )
            if "fanout" in args.scenarios:
                session = await create_sessions(http, stream.http, 1)
                sid, token = session[0]
                b.fan_socks = await gather_limited(
                    args.fanout_sockets, lambda _: RelaySocket.open(http, stream.ws_url, sid, token)
                )
                peers = await b.peer_pool(args.fanout_sockets)
                for sock in peers:
                    await sock.ws.send_str("sub g")
                for client in await b.sio_pool(args.fanout_sockets):
                    await client.emit("sub", {"group": "g"})
                await asyncio.sleep(0.5)
                await run_rounds(
                    b,
                    results,
                    "fanout",
                    {
                        "relay": lambda: fan_relay(b),
                        "aiohttp ws": lambda: fan_ws(b),
                        "socketio": lambda: fan_sio(b),
                    },
                    deadline,
                )
                for sock in b.fan_socks:
                    await sock.close()
            if "wire" in args.scenarios:
                await wire_rounds(b, results, deadline)
            if "paced" in args.scenarios:
                for relay in relays:
                    relay.paced_socks = await b.relay_socks(relay.paced, max(args.paced_n))
                for n in args.paced_n:
                    await run_rounds(
                        b,
                        results,
                        f"paced-{n}",
                        {
                            **{r.name: lambda r=r, n=n: paced_relay(b, r, n) for r in relays},
                            "aiohttp ws": lambda n=n: paced_ws(b, n),
                            "grpc bidi": lambda n=n: paced_grpc(b, n),
                            "socketio": lambda n=n: paced_sio(b, n),
                        },
                        deadline,
                    )
            if "overload" in args.scenarios:
                # no peer to interleave with, and each round starts a pair of its own
                rounds, args.rounds = args.rounds, min(args.rounds, args.overload_rounds)
                try:
                    await run_rounds(
                        b,
                        results,
                        "overload",
                        {"relay": lambda: overload_relay(b, tmp)},
                        deadline,
                    )
                finally:
                    args.rounds = rounds
            for relay in relays:
                await relay.close_socks()
            for peer in b.peer_socks:
                await peer.close()
            for client in b.sio_clients:
                await client.close()
            if "idle" in args.scenarios:
                for relay in relays:
                    for pair in relay.pairs:
                        pair.stop()
                idle = Idle(
                    start_relay(tmp, "idle", 0, 1, gc_args),
                    start_process(
                        "idle_ws",
                        [py, str(REPO / "bench/peer_ws_server.py")],
                        "peer_ws listening on",
                    ),
                    start_process(
                        "idle_sio",
                        [py, str(REPO / "bench/peer_sio_server.py")],
                        "peer_sio listening on",
                    ),
                )
                procs += [idle.relay, idle.ws, idle.sio]
                step = max(1, args.idle // args.rounds)
                systems: dict[str, Callable[[], Awaitable[Metrics]]] = {
                    "relay": lambda: idle_relay(b, idle, step),
                    "aiohttp ws": lambda: idle_ws(b, idle, step),
                    "socketio": lambda: idle_sio(b, idle, step),
                }
                # every socket is a file descriptor here too: when the three systems' sockets
                # do not fit under the limit at once, one system after the other
                soft_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                info["idle_interleaved"] = 3 * args.idle + 1000 < soft_fds
                groups = (
                    [systems] if info["idle_interleaved"] else [{k: v} for k, v in systems.items()]
                )
                for group in groups:
                    await run_rounds(b, results, "idle", group, deadline + 120)
                    await idle.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
        await backends.aclose()  # the databases and key prefixes, once their services are gone
    info["seconds"] = time.monotonic() - started
    return results, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full",
        action="store_true",
        help="the issue's full size of the idle scenario: 10,000 sockets",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="no new round starts after this"
    )
    parser.add_argument("--scenarios", default="rtt,burst,full,fanout,wire,paced,overload,idle")
    parser.add_argument(
        "--backends", default="sqlite,redis",
        help="agent-relay's backends: sqlite, the durable default; redis, also the scale-out "
        "backends (PostgreSQL store, Redis Streams log) in the round trip, burst, full speed "
        "and paced scenarios, when both answer",
    )  # fmt: skip
    parser.add_argument("--rtt-count", type=int, default=100, help="messages per round trip round")
    parser.add_argument(
        "--history", type=int, default=1000, help="messages behind the history session"
    )
    parser.add_argument("--history-budget-s", type=float, default=90.0)
    parser.add_argument("--paced-n", default="100,300,1000", help="session counts")
    parser.add_argument("--paced-rate", type=float, default=50.0, help="words/s per session")
    parser.add_argument("--paced-s", type=float, default=4.0, help="seconds each paced reply lasts")
    parser.add_argument("--late-ms", type=float, default=50.0)
    parser.add_argument("--full-sessions", type=int, default=100)
    parser.add_argument("--full-words", type=int, default=1000, help="reply length at full speed")
    parser.add_argument(
        "--peer-frames", type=int, default=1000, help="frames per socket a peer pushes"
    )
    parser.add_argument("--fanout-sockets", type=int, default=100)
    parser.add_argument("--burst-sessions", type=int, default=100)
    parser.add_argument(
        "--overload-sessions", type=int, default=1000, help="sessions sending at once (overload)"
    )
    parser.add_argument("--overload-words", type=int, default=50, help="overload reply length")
    parser.add_argument("--overload-rounds", type=int, default=2, help="at most --rounds")
    parser.add_argument(
        "--overload-timeout-s", type=float, default=10.0,
        help="the overload edge's --command-timeout-s (its default: 10); lower it to overload "
        "relative to the timeout",
    )  # fmt: skip
    parser.add_argument(
        "--idle", type=int, default=2000, help="idle sockets in all (--full: 10,000)"
    )
    parser.add_argument(
        "--gc-gen0-threshold", type=int, default=-1,
        help="passed to both processes (0: the GC levers off); -1: their default",
    )  # fmt: skip
    parser.add_argument("--json-dir", default=str(REPO / "var/bench"))
    args = parser.parse_args()
    if args.full:
        if args.idle == 2000:
            args.idle = 10_000
        args.budget_s = max(args.budget_s, 1200.0)
    args.paced_n = [int(x) for x in str(args.paced_n).split(",") if x]
    args.scenarios = set(str(args.scenarios).split(","))
    args.backends = set(str(args.backends).split(","))
    with tempfile.TemporaryDirectory() as tmp:
        results, info = asyncio.run(measure(args, Path(tmp)))
    rows = report(results, args)
    judged = targets(results, args)
    print_table(rows, judged, args, info)
    out_dir = Path(args.json_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"peers-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "time": stamp,
                "args": {
                    k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()
                },
                "info": info,
                "rounds": results,
                "table": rows,
                "targets": judged,
            },
            indent=1,
        )
    )
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
