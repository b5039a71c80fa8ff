"""The chaos soak: users chat through 2 edges while the agent service and the edges die.

Real processes: one agent service on its SQLite file (the durable default) and two
edges in front of it (edge B reaches the service through a loopback TCP proxy, so its
gRPC connections can be cut). Simulated users chat and use tools over WebSockets, some
straight to an edge, some through proxies the test controls. An injector, seeded, kills
(-9) and restarts the agent service (same port, same store file), kills and restarts an
edge (same port) and cuts TCP connections (client sockets and the edge's gRPC link).

Each user is a resilient client: on a drop it reconnects (to either edge) and joins at
the last `seq` it processed, and resends its unacknowledged message with the same
`message_id`. At the end the checker verifies, per session:

- every connection received a dense run of `seq` (no hole, no repeat) from the `seq` it
  joined after, and the user's connections together cover 1..N with nothing twice;
- what each connection received is what the log holds at that `seq` (a fresh join from 0);
- the log is dense, every acknowledged message was accepted once (one `chat:accepted`, the
  acknowledged run), every run has exactly one `chat:complete`;
- history (`GET /api/sessions/{id}/messages`) holds every acknowledged message once.

`make test` runs it bounded (20 s, 6 users); `make soak` sets AGENT_RELAY_SOAK=1 and
AGENT_RELAY_CHAOS_SECONDS / AGENT_RELAY_CHAOS_USERS. AGENT_RELAY_CHAOS_SEED picks the
fault schedule and the users' choices.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.clients_python.tcp_proxy import CuttableProxy
from tests.support.edge import EdgeClient, EdgeProcess, create_session, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

SOAK = os.environ.get("AGENT_RELAY_SOAK") == "1"
SECONDS = float(os.environ.get("AGENT_RELAY_CHAOS_SECONDS", "300" if SOAK else "20"))
USERS = int(os.environ.get("AGENT_RELAY_CHAOS_USERS", "30" if SOAK else "6"))
SEED = int(os.environ.get("AGENT_RELAY_CHAOS_SEED", "12"))

# About 0.5 s per plain reply, so faults land mid-run; tools: calculator and long_task.
AGENT_ARGS = ("--demo-tokens-per-s", "100", "--demo-reply-words", "50", "--metrics-listen", "")
EDGE_ARGS = ("--upstream-backoff-base-s", "0.1", "--upstream-backoff-max-s", "0.5")
PHRASES = ("calc 2 * (3 + 4)", "long task 2s", "hello there", "tell me about the weather")
RETRYABLE = {"upstream_unavailable", "rate_limited", "overloaded", "internal"}
# Pause between faults: the system gets back up (the restart has returned) and works a while.
FAULT_GAP_S = (1.5, 3.5)
DROPS = (ConnectionClosed, InvalidHandshake, OSError, TimeoutError)


class Refused(Exception):
    """The edge answered a join with a retryable error: reconnect later."""


@dataclass
class Connection:
    """One WebSocket of a user: where it went, what it joined after, what it got."""

    target: str
    after_seq: int
    client: EdgeClient

    def seqs(self, session_id: str) -> list[int]:
        return self.client.seqs(session_id)


@dataclass
class World:
    """The processes and proxies of one chaos run, and how to kill and restart them."""

    tmp_path: Path
    service: ServiceProcess
    service_port: int
    upstream_proxy: CuttableProxy
    edges: dict[str, EdgeProcess]
    edge_ports: dict[str, int]
    client_proxies: dict[str, CuttableProxy]
    proxy_urls: dict[str, str]
    faults: Counter[str] = field(default_factory=Counter)

    def targets(self) -> list[str]:
        """WebSocket URLs a user may connect to: both edges, straight or through a proxy."""
        direct = [f"ws://127.0.0.1:{port}/ws" for port in self.edge_ports.values()]
        return [*direct, *self.proxy_urls.values()]

    async def restart_service(self, kill: bool = True) -> None:
        """kill -9 (or SIGTERM: a graceful stop) and start again on the same port and file."""
        await asyncio.to_thread(self.service.kill if kill else self.service.stop)
        self.service = await asyncio.to_thread(
            start_agent_service,
            self.tmp_path,
            *AGENT_ARGS,
            store_path=self.service.store_path,
            listen=f"127.0.0.1:{self.service_port}",
        )

    async def restart_edge(self, name: str) -> None:
        """kill -9 the edge and start it again on the same port."""
        await asyncio.to_thread(self.edges[name].kill)
        self.edges[name] = await asyncio.to_thread(
            start_edge,
            self.upstream_for(name),
            *EDGE_ARGS,
            listen=f"127.0.0.1:{self.edge_ports[name]}",
        )

    def upstream_for(self, name: str) -> str:
        return self.upstream_proxy_address if name == "b" else f"127.0.0.1:{self.service_port}"

    upstream_proxy_address: str = ""


async def inject(world: World, rng: random.Random, until: float) -> None:
    """Faults at random (seeded) moments until `until`; everything is up again on return."""
    kinds: list[tuple[str, Callable[[], object]]] = [
        ("kill -9 agent service", lambda: world.restart_service()),
        ("SIGTERM agent service", lambda: world.restart_service(kill=False)),
        ("kill -9 edge a", lambda: world.restart_edge("a")),
        ("kill -9 edge b", lambda: world.restart_edge("b")),
        ("cut client TCP (proxy to edge a)", lambda: world.client_proxies["a"].cut()),
        ("cut client TCP (proxy to edge b)", lambda: world.client_proxies["b"].cut()),
        ("cut gRPC TCP (edge b to agent)", lambda: world.upstream_proxy.cut()),
    ]
    while True:
        await asyncio.sleep(rng.uniform(*FAULT_GAP_S))
        if time.monotonic() >= until:
            return
        kind, action = rng.choice(kinds)
        world.faults[kind] += 1
        result = action()
        if asyncio.iscoroutine(result):
            await result


@dataclass
class User:
    """A resilient chat user: reconnects, rejoins at its last seq, resends by message_id."""

    index: int
    session_id: str
    token: str
    targets: list[str]
    rng: random.Random
    connections: list[Connection] = field(default_factory=list)
    sent: dict[str, str] = field(default_factory=dict)  # message_id -> text
    acked: dict[str, str] = field(default_factory=dict)  # message_id -> run_id
    duplicate_acks: int = 0
    retries: int = 0
    drops: int = 0
    refused: list[dict] = field(default_factory=list)  # non-retryable errors: a defect
    pending: str | None = None
    state: str = "not started"  # what it is doing now, for the report of a stuck user
    codes: Counter[str] = field(default_factory=Counter)  # retryable errors seen

    @property
    def last_seq(self) -> int:
        seqs = [s for c in self.connections for s in c.seqs(self.session_id)]
        return max(seqs, default=0)

    def completed_runs(self) -> set[str]:
        return {
            f["run_id"]
            for c in self.connections
            for f in c.client.events(self.session_id)
            if f["type"] == "chat:complete"
        }

    async def run(self, until: float, hard_deadline: float) -> None:
        """Chat until `until`, then finish the message in flight (by `hard_deadline`)."""
        while time.monotonic() < hard_deadline:
            if time.monotonic() >= until and self.pending is None:
                return
            client = None
            try:
                target = self.rng.choice(self.targets)
                self.state = f"connecting to {target}"
                client = await EdgeClient.connect(target, token=self.token)
                await self._chat(target, client, until, hard_deadline)
                self.state = "done"
                return
            except (*DROPS, Refused):
                self.drops += 1
                await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            finally:
                if client is not None:
                    try:
                        await asyncio.wait_for(client.close(), scaled(5))
                    except (*DROPS, asyncio.CancelledError):
                        pass

    async def _chat(
        self, target: str, client: EdgeClient, until: float, hard_deadline: float
    ) -> None:
        after = self.last_seq
        self.state = f"joining {target} after {after}"
        ack = await client.join(self.session_id, after_seq=after)
        if ack.get("type") != "ack":
            if ack.get("code") in RETRYABLE:
                raise Refused(ack)
            self.refused.append(ack)
            raise Refused(ack)
        self.connections.append(Connection(target, after, client))
        while True:
            if self.pending is None:
                if time.monotonic() >= until:
                    return
                self.pending = uuid.uuid4().hex
                self.sent[self.pending] = self.rng.choice(PHRASES)
            message_id = self.pending
            if time.monotonic() >= hard_deadline:
                return
            self.state = f"sending {message_id} to {target}"
            reply = await client.say(self.session_id, self.sent[message_id], message_id=message_id)
            if reply.get("type") == "error":
                code = reply.get("code")
                if code == "not_joined":
                    raise Refused(reply)  # the edge dropped the session: reconnect, rejoin
                if code not in RETRYABLE:
                    self.refused.append(reply)
                    self.pending = None
                    continue
                self.retries += 1
                self.codes[code] += 1
                await asyncio.sleep(max(0.2, reply.get("retry_after_ms", 500) / 1000))
                continue
            run_id = reply["run_id"]
            if reply.get("duplicate"):
                self.duplicate_acks += 1
            assert self.acked.setdefault(message_id, run_id) == run_id, (message_id, reply)
            if run_id not in self.completed_runs():
                self.state = f"waiting for {run_id} of {message_id} on {target}"
                await client.until(
                    lambda f, run_id=run_id: (
                        f.get("type") == "chat:complete" and f.get("run_id") == run_id
                    ),
                    timeout_s=60,
                )
            self.pending = None
            await asyncio.sleep(self.rng.uniform(0.0, 0.4))


async def report_progress(world: World, users: list[User], start: float) -> None:
    """A line every 10 s, so a long run shows how it goes."""
    while True:
        await asyncio.sleep(10)
        print(
            f"chaos: {time.monotonic() - start:.0f} s, faults {sum(world.faults.values())},"
            f" acked {sum(len(u.acked) for u in users)}, drops {sum(u.drops for u in users)},"
            f" retried {sum((u.codes for u in users), Counter())},"
            f" busy users: {[u.state for u in users if u.state != 'done'][:3]}",
            flush=True,
        )


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
        return json.loads(reply.read())


def history_message_ids(edge_url: str, user: User) -> Counter[str]:
    """message_id of every user message in the session's history, counted."""
    counts: Counter[str] = Counter()
    token = ""
    for _ in range(10_000):
        query = "?page_size=1000" + (f"&page_token={token}" if token else "")
        page = get_json(f"{edge_url}/api/sessions/{user.session_id}/messages{query}", user.token)
        for message in page["messages"]:
            if message.get("role") == "user":
                counts[message["message_id"]] += 1
        token = page.get("next_page_token", "")
        if not token:
            return counts
    raise AssertionError("history did not end")


async def final_log(edge: EdgeProcess, user: User) -> tuple[int, list[dict]]:
    """A fresh join from 0: the head and every event of the session's log."""
    client = await EdgeClient.connect(edge.ws_url, token=user.token)
    try:
        ack = await client.join(user.session_id, after_seq=0, deltas="stream")
        assert ack["type"] == "ack", ack
        head = ack["head_seq"]
        if head:
            await client.until(
                lambda f: f.get("session_id") == user.session_id and f.get("seq", 0) >= head,
                timeout_s=60,
            )
        return head, client.events(user.session_id)
    finally:
        await client.close()


def check_user(user: User, head: int, log: list[dict], history: Counter[str]) -> list[str]:
    """Every invariant for one session; returns what broke (empty: all hold)."""
    sid = user.session_id
    broken: list[str] = []
    # the log itself: dense from 1 to the head
    log_seqs = [s for f in log for s in range(f.get("from_seq", f["seq"]), f["seq"] + 1)]
    if log_seqs != list(range(1, head + 1)):
        broken.append(f"{sid}: the log's seqs are not 1..{head}: {log_seqs[:5]}..{log_seqs[-5:]}")
    by_seq = {s: f for f in log for s in range(f.get("from_seq", f["seq"]), f["seq"] + 1)}
    # each connection: a dense run from the seq it joined after, what the log holds there
    stream: list[int] = []
    for n, conn in enumerate(user.connections):
        got = conn.seqs(sid)
        want = list(range(conn.after_seq + 1, conn.after_seq + 1 + len(got)))
        if got != want:
            broken.append(f"{sid} connection {n} ({conn.target}) after {conn.after_seq}: {got}")
        for frame in conn.client.events(sid):
            logged = by_seq.get(frame["seq"])
            if logged is None or (logged["type"], logged["run_id"]) != (
                frame["type"],
                frame["run_id"],
            ):
                broken.append(f"{sid}: received {frame} but the log has {logged}")
        stream.extend(got)
    if stream != list(range(1, len(stream) + 1)):
        broken.append(f"{sid}: across reconnects the seqs are not dense from 1: {stream}")
    if any(f["type"] == "chat:gap" for c in user.connections for f in c.client.frames):
        broken.append(f"{sid}: a chat:gap within the retention window")
    # every acknowledged message: accepted once, as the acknowledged run, completed once
    accepted = Counter(f["message_id"] for f in log if f["type"] == "chat:accepted")
    accepted_run = {f["message_id"]: f["run_id"] for f in log if f["type"] == "chat:accepted"}
    completes = Counter(f["run_id"] for f in log if f["type"] == "chat:complete")
    started = {f["run_id"] for f in log if f["type"] == "chat:run_started"}
    for message_id, run_id in user.acked.items():
        if accepted[message_id] != 1 or accepted_run.get(message_id) != run_id:
            broken.append(f"{sid}: {message_id} accepted {accepted[message_id]} times")
        if completes[run_id] != 1:
            broken.append(f"{sid}: run {run_id} completed {completes[run_id]} times")
        if history[message_id] != 1:
            broken.append(f"{sid}: {message_id} in history {history[message_id]} times")
    for run_id in started:
        if completes[run_id] != 1:
            broken.append(f"{sid}: run {run_id} has {completes[run_id]} chat:complete")
    for message_id, count in history.items():
        if message_id not in user.sent or count != 1:
            broken.append(f"{sid}: history has {message_id} {count} times (never sent?)")
    broken.extend(f"{sid}: refused {r}" for r in user.refused)
    return broken


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(scaled(SECONDS * 4 + 300))
async def test_chaos_users_keep_every_seq_and_every_message_through_kills_and_cuts(
    tmp_path: Path,
):
    rng = random.Random(SEED)
    service = await asyncio.to_thread(start_agent_service, tmp_path, *AGENT_ARGS)
    service_port = int(service.address.rsplit(":", 1)[1])
    upstream_proxy = CuttableProxy(service.address)
    upstream_address = await upstream_proxy.start()
    edges = {
        "a": await asyncio.to_thread(start_edge, service.address, *EDGE_ARGS),
        "b": await asyncio.to_thread(start_edge, upstream_address, *EDGE_ARGS),
    }
    client_proxies = {name: CuttableProxy(f"127.0.0.1:{e.port}") for name, e in edges.items()}
    proxy_urls = {name: f"ws://{await p.start()}/ws" for name, p in client_proxies.items()}
    world = World(
        tmp_path,
        service,
        service_port,
        upstream_proxy,
        edges,
        {name: e.port for name, e in edges.items()},
        client_proxies,
        proxy_urls,
        upstream_proxy_address=upstream_address,
    )
    try:
        users = []
        for index in range(USERS):
            made = await asyncio.to_thread(
                create_session, edges["ab"[index % 2]], None, f"u{index}"
            )
            users.append(
                User(
                    index,
                    made["session_id"],
                    made["token"],
                    world.targets(),
                    random.Random(rng.random()),
                )
            )
        start = time.monotonic()
        until = start + SECONDS
        hard_deadline = until + scaled(120)
        injector = asyncio.create_task(inject(world, random.Random(rng.random()), until))
        progress = asyncio.create_task(report_progress(world, users, start))
        runs = [asyncio.create_task(u.run(until, hard_deadline)) for u in users]
        _, stuck = await asyncio.wait(runs, timeout=hard_deadline + scaled(90) - time.monotonic())
        for task in stuck:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await injector  # returns with every process up
        progress.cancel()
        elapsed = time.monotonic() - start

        broken: list[str] = [
            f"{u.session_id}: still {u.state} at the end" for u in users if u.state != "done"
        ]
        broken.extend(
            f"{u.session_id}: {task.exception()!r}"
            for u, task in zip(users, runs, strict=True)
            if not task.cancelled() and task.exception() is not None
        )
        live_events = final_events = 0
        for user in users:
            if user.pending is not None:
                acked = "acknowledged" if user.pending in user.acked else "never acknowledged"
                broken.append(f"{user.session_id}: {user.pending} ({acked}) never completed")
            head, log = await final_log(world.edges["a"], user)
            history = await asyncio.to_thread(history_message_ids, world.edges["b"].url, user)
            broken.extend(check_user(user, head, log, history))
            live_events += sum(len(c.seqs(user.session_id)) for c in user.connections)
            final_events += head

        sent = sum(len(u.sent) for u in users)
        acked = sum(len(u.acked) for u in users)
        print(
            f"\nchaos: seed {SEED}, {USERS} users, {elapsed:.0f} s; faults injected "
            f"{sum(world.faults.values())}: "
            + ", ".join(f"{kind} x{n}" for kind, n in sorted(world.faults.items()))
            + f"; messages sent {sent}, acknowledged {acked}"
            f" ({sum(u.duplicate_acks for u in users)} acks of a resent id, duplicate),"
            f" {sum(u.retries for u in users)} sends retried after a retryable error"
            f" ({dict(sum((u.codes for u in users), Counter()))});"
            f" connections {sum(len(u.connections) for u in users)},"
            f" drops {sum(u.drops for u in users)}; events checked: {live_events} received"
            f" live, {final_events} in the logs replayed from 0;"
            f" invariants broken: {len(broken)}"
        )
        for line in broken[:40]:
            print("  BROKEN", line)
        assert sum(world.faults.values()) >= 1
        assert acked >= USERS  # every user got through at least once
        assert not broken, broken[:20]
    finally:
        for proxy in (*client_proxies.values(), upstream_proxy):
            await proxy.close()
        for edge in world.edges.values():
            await asyncio.to_thread(edge.stop)
        await asyncio.to_thread(world.service.stop)


def _event(seq: int, kind: str, **fields: object) -> dict:
    return {"type": kind, "session_id": "s", "seq": seq, "run_id": "r1", **fields}


_LOG = [
    _event(1, "chat:accepted", message_id="m1"),
    _event(2, "chat:run_started", message_id="m1"),
    _event(4, "chat:response", from_seq=3, text="hi"),
    _event(5, "chat:complete", finish_reason="stop"),
]

# a dense log whose run has no chat:accepted (what a kill -9 between the store's commit
# and the log's once left, before recovery appended the acceptance)
_NO_ACCEPT = [
    _event(1, "chat:run_started", message_id="m1"),
    _event(3, "chat:response", from_seq=2, text="hi"),
    _event(4, "chat:complete", finish_reason="interrupted"),
]


def _user(pieces: list[tuple[int, list[dict]]]) -> User:
    user = User(0, "s", "token", [], random.Random(0), sent={"m1": "hi"}, acked={"m1": "r1"})
    for after, frames in pieces:
        client = EdgeClient(None)
        client.frames = list(frames)
        user.connections.append(Connection("ws://test", after, client))
    return user


@pytest.mark.parametrize(
    ("pieces", "log", "history", "fault"),
    [
        ([(0, _LOG[:2]), (2, _LOG[2:])], _LOG, {"m1": 1}, ""),
        ([(0, _LOG[:2]), (1, _LOG[1:])], _LOG, {"m1": 1}, "a repeat across reconnects"),
        ([(0, _LOG[:2]), (4, _LOG[3:])], _LOG, {"m1": 1}, "a hole across reconnects"),
        ([(0, [_LOG[0], *_LOG[2:]])], _LOG, {"m1": 1}, "a hole within a connection"),
        ([(0, _LOG)], [*_LOG, _event(6, "chat:complete")], {"m1": 1}, "a run completed twice"),
        ([(0, _LOG)], _LOG[:3], {"m1": 1}, "a run never completed"),
        ([(0, _LOG)], _LOG, {"m1": 2}, "a message twice in history"),
        ([(0, _LOG)], _LOG, {}, "a message missing from history"),
        ([(0, _LOG)], _LOG, {"m1": 1, "m9": 1}, "a message nobody sent"),
        ([(0, _NO_ACCEPT)], _NO_ACCEPT, {"m1": 1}, "a message acknowledged, never in the log"),
        ([(0, [_LOG[0], _event(2, "chat:complete")])], _LOG, {"m1": 1}, "not what the log has"),
    ],
)
def test_the_checker_finds_each_broken_invariant(
    pieces: list[tuple[int, list[dict]]], log: list[dict], history: dict[str, int], fault: str
):
    head = max(f["seq"] for f in log)
    broken = check_user(_user(pieces), head, log, Counter(history))
    assert bool(broken) == bool(fault), (fault, broken)
