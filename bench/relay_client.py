"""The bench's side of the real system: start the processes, open sockets, create sessions.

Every process is a real subprocess on 127.0.0.1 (port 0). `RelaySocket` is one
WebSocket to the edge speaking agent-relay.v1 (docs/protocol.md) over aiohttp, or with
wire="proto" its binary twin agent-relay.v1+proto, with
a reader task that keeps answering the edge's pings and hands each decoded frame to
whatever `on_frame` callback the current scenario set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from agent_relay.v1 import edge_pb2 as epb
from agent_relay_client.wire import PROTOCOLS, ProtoCodec

REPO = Path(__file__).resolve().parents[1]
SECRET = "peers-bench-secret-0123456789abcdef-0123456789abcdef"
# The edge's per-user and per-socket budgets protect a real deployment; a load generator
# on loopback would only measure them refusing it.
UNLIMITED = (
    *("--conn-frames-per-s", "1e9", "--conn-frames-burst", "1e9"),
    *("--conn-bytes-per-s", "1e12", "--conn-bytes-burst", "1e12"),
    *("--user-frames-per-s", "1e9", "--user-frames-burst", "1e9"),
    *("--user-bytes-per-s", "1e12", "--user-bytes-burst", "1e12"),
    *("--max-runs-per-user", "1000000", "--abuse-strikes", "1000000"),
    *("--send-queue-max-bytes", "1000000000", "--max-connections-per-user", "1000000"),
    *("--anon-sessions-per-s", "1e9", "--anon-sessions-burst", "1e9"),
)
decode = msgspec.json.decode
encode = msgspec.json.encode

_EVENT_TYPES = {
    "message_accepted": "chat:accepted",
    "run_started": "chat:run_started",
    "response_delta": "chat:response",
    "tool_execution": "chat:tool_execution",
    "run_error": "chat:run_error",
    "run_completed": "chat:complete",
    "replay_gap": "chat:gap",
}


def decode_proto(data: bytes) -> dict[str, Any]:
    """A binary frame as the dict of the JSON frame, with the keys the bench reads (type,
    ref, session_id, seq, from_seq, run_id, time_unix_ms, text, message_id, reply fields)."""
    frame = epb.Frame.FromString(data)
    case = frame.WhichOneof("kind")
    if case == "response":
        r = frame.response
        return {
            "type": "chat:response",
            "session_id": r.session_id,
            "seq": r.seq,
            "from_seq": r.from_seq,
            "run_id": r.run_id,
            "time_unix_ms": r.time_unix_ms,
            "text": r.text,
        }
    if case == "event":
        ev = frame.event
        kind = ev.WhichOneof("kind") or ""
        out: dict[str, Any] = {
            "type": _EVENT_TYPES.get(kind, "chat:unknown"),
            "session_id": ev.session_id,
            "seq": ev.seq,
            "run_id": ev.run_id,
            "time_unix_ms": ev.time_unix_ms,
        }
        if kind == "message_accepted":
            out["message_id"] = ev.message_accepted.message_id
        elif kind == "response_delta":
            out["text"] = ev.response_delta.text
        return out
    out = {"type": case}
    if frame.HasField("ref"):
        out["ref"] = frame.ref
    for fd, value in getattr(frame, case or "").ListFields():
        out[fd.name] = value
    return out


@dataclass
class Proc:
    """A child process and everything it printed (drained so its pipe never fills)."""

    name: str
    process: subprocess.Popen[str]
    address: str
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_process(
    name: str, argv: list[str], marker: str, env: dict[str, str] | None = None
) -> Proc:
    """Run argv from the repository; wait (30 s at most) for its `<marker> ADDRESS` line."""
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    output: list[str] = []
    address: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if len(output) < 2000:
                output.append(line)
            if not ready.is_set() and marker in line:
                address.append(line.rsplit(" ", 1)[1].strip())
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(30) or not address:
        process.kill()
        raise RuntimeError(f"{name} did not start:\n{''.join(output)}")
    return Proc(name, process, address[0], output)


@dataclass
class RelayPair:
    """An agent service and an edge in front of it."""

    service: Proc
    edge: Proc

    @property
    def http(self) -> str:
        return self.edge.address

    @property
    def ws_url(self) -> str:
        return self.edge.address.replace("http", "ws", 1) + "/ws"

    def stop(self) -> None:
        self.edge.stop()
        self.service.stop()


def start_relay(
    tmp: Path,
    name: str,
    tokens_per_s: float,
    words: int,
    gc_args: tuple[str, ...],
    backend: tuple[str, ...] = (),
) -> RelayPair:
    """`python -m agent_service` (demo model) and `python -m ws_edge` in front of it, both
    at log level WARNING. The service's store and log: `backend` (its flags, e.g.
    `--store-url postgresql://... --log-url redis://...`), else the durable default, one
    SQLite file in `tmp`."""
    py = sys.executable
    service = start_process(
        f"{name}-service",
        [
            py, "-m", "agent_service", "--listen", "127.0.0.1:0",
            *(backend or ("--store-url", f"sqlite:///{tmp}/{name}.sqlite3")),
            "--demo-tokens-per-s", str(tokens_per_s), "--demo-reply-words", str(words),
            "--retention-events", "10000000", "--log-level", "WARNING", *gc_args,
        ],
        "agent_service listening on",
    )  # fmt: skip
    try:
        edge = start_process(
            f"{name}-edge",
            [
                py, "-m", "ws_edge", "--listen", "127.0.0.1:0", "--upstream", service.address,
                "--jwt-secret", SECRET, "--static-dir", "/nonexistent", "--log-level", "WARNING",
                *UNLIMITED, *gc_args,
            ],
            "ws_edge listening on",
        )  # fmt: skip
    except BaseException:
        service.stop()
        raise
    return RelayPair(service, edge)


async def scale_out_flags(stack: contextlib.AsyncExitStack) -> tuple[str, ...]:
    """A service's flags for the scale-out backends: a fresh database of the tests'
    PostgreSQL as its store and a fresh key prefix of their Redis as its log; `stack`
    drops both when it closes."""
    from tests.support.backends import postgres_database, redis_prefix

    store_url = await stack.enter_async_context(postgres_database())
    redis_url, prefix = await stack.enter_async_context(redis_prefix())
    return ("--store-url", store_url, "--log-url", f"{redis_url}?prefix={prefix}")


async def create_sessions(
    http: aiohttp.ClientSession, base: str, count: int
) -> list[tuple[str, str]]:
    """(session_id, token) of `count` new sessions, each for its own anonymous user."""
    gate = asyncio.Semaphore(32)

    async def one(index: int) -> tuple[str, str]:
        async with gate:
            async with http.post(f"{base}/api/sessions", json={"title": f"bench {index}"}) as reply:
                body = await reply.json()
                return str(body["session_id"]), str(body["token"])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


_PROTO = ProtoCodec()


class RelaySocket:
    """One socket to the edge: authenticated, joined to one session, always reading."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, session_id: str, wire: str = "json"
    ) -> None:
        self.ws = ws
        self.session_id = session_id
        self.wire = wire
        self.on_frame: Callable[[dict[str, Any]], None] | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, url: str, session_id: str, token: str, wire: str = "json"
    ) -> RelaySocket:
        ws = await http.ws_connect(
            url, protocols=[PROTOCOLS[wire]], compress=0, max_msg_size=0, autoping=True
        )
        await ws.receive()  # welcome
        sock = cls(ws, session_id, wire)
        ack = await sock.request({"type": "auth", "token": token})
        assert ack["type"] == "ack", ack
        for _ in range(50):
            ack = await sock.request({"type": "join", "session_id": session_id, "after_seq": 0})
            if ack.get("code") != "upstream_unavailable":
                break
            await asyncio.sleep(0.2)
        assert ack["type"] == "ack", ack
        return sock

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                frame = decode(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                frame = decode_proto(msg.data)
            else:
                continue
            ref = frame.get("ref")
            if ref is not None and ref in self._waiters:
                self._waiters.pop(ref).set_result(frame)
            elif self.on_frame is not None:
                self.on_frame(frame)

    async def request(self, frame: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        self._ids += 1
        ref = f"b{self._ids}"
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[ref] = waiter
        await self.send({**frame, "id": ref})
        return await asyncio.wait_for(waiter, timeout_s)

    async def send(self, frame: dict[str, Any]) -> None:
        """One client frame, in this socket's wire format."""
        if self.wire == "proto":
            data = _PROTO.encode(frame)
            assert isinstance(data, bytes)
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(encode(frame).decode())

    async def say(self, text: str, message_id: str | None = None) -> str:
        """Send a chat:message without waiting for its ack; returns its message_id."""
        message_id = message_id or uuid.uuid4().hex
        await self.send(
            {
                "type": "chat:message",
                "session_id": self.session_id,
                "message_id": message_id,
                "text": text,
            }
        )
        return message_id

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


class RunWatch:
    """One run seen by one socket: first delta, every delta frame, completion.

    Matches the run by the message_id of its `chat:accepted`; records for each
    `chat:response` the receive time, the words (model deltas) and events (seq values)
    it covers and its latency (now - the event's `time_unix_ms`, the newest event's).
    Messages sent to it must be one word long: the demo quotes them in its reply."""

    def __init__(self, message_id: str | None = None) -> None:
        self.message_id = message_id
        self.run_id: str | None = None
        self.sent_at = 0.0
        self.first_delta_at: float | None = None
        self.deltas = 0
        self.events = 0
        self.frames = 0
        self.latencies_ms: list[float] = []
        self.done = asyncio.Event()

    def __call__(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "chat:accepted":
            if self.run_id is None and (
                self.message_id is None or frame.get("message_id") == self.message_id
            ):
                self.run_id = frame["run_id"]
            return
        if self.run_id is None or frame.get("run_id") != self.run_id:
            return
        if kind == "chat:response":
            now = time.time()
            if self.first_delta_at is None:
                self.first_delta_at = time.perf_counter()
            self.frames += 1
            self.events += frame["seq"] - frame.get("from_seq", frame["seq"]) + 1
            # the demo model streams one word per delta; the service may carry several in
            # one event under load, so words are what was delivered, events what it cost
            self.deltas += len(frame["text"].split())
            self.latencies_ms.append(now * 1000 - frame["time_unix_ms"])
        elif kind == "chat:complete":
            self.done.set()


RETRYABLE = frozenset({"overloaded", "upstream_unavailable"})


async def say_until_acked(
    sock: RelaySocket, text: str, message_id: str, refusals: list[str]
) -> None:
    """Send a chat:message and, as both clients do, send it again with the same id once
    each retryable refusal's `retry_after_ms` (at least 500 ms) has passed, until it is
    acked or refused for good; the code of every refusal is appended to `refusals`."""
    frame = {"type": "chat:message", "session_id": sock.session_id, "message_id": message_id}
    while True:
        answer = await sock.request({**frame, "text": text}, timeout_s=300)
        if answer["type"] == "ack":
            return
        refusals.append(str(answer.get("code")))
        if answer.get("code") not in RETRYABLE:
            return
        await asyncio.sleep(max(500, answer.get("retry_after_ms", 1000)) / 1000)


async def fill_history(sock: RelaySocket, count: int, budget_s: float) -> int:
    """Put `count` messages (and their runs) behind the socket's session, 8 in flight at
    once, within about budget_s (fewer when it runs out); returns how many completed."""
    completed = 0
    progress = asyncio.Event()

    def on_frame(frame: dict[str, Any]) -> None:
        nonlocal completed
        if frame.get("type") == "chat:complete":
            completed += 1
            progress.set()

    sock.on_frame = on_frame
    sent = 0
    deadline = time.monotonic() + budget_s
    while completed < count and time.monotonic() < deadline:
        while sent < count and sent - completed < 8:
            await sock.say(f"history {sent}")
            sent += 1
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), 30)
        except TimeoutError:
            break
    while completed < sent and time.monotonic() < deadline + 30:
        progress.clear()
        await asyncio.wait_for(progress.wait(), 30)
    sock.on_frame = None
    return completed
