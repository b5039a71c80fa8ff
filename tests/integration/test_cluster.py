"""A cluster on one machine, real processes: 2 agent replicas and 2 edges (each edge with
both replicas upstream) on a Redis server started for the test and a PostgreSQL database
reached through a loopback proxy the test can cut.

Any edge serves any session; sockets of one session on both edges see the same events;
commands reach the replica that owns the session; a replica or an edge killed with
kill -9, a Redis restart and a PostgreSQL outage leave clients able to resume by seq,
with every accepted message in history once.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import urllib.error
import urllib.request
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import websockets

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from tests.support.backends import postgres_database, require
from tests.support.chat import ChatClient
from tests.support.edge import EdgeClient, EdgeProcess, create_session, start_edge
from tests.support.proxy import PausableProxy
from tests.support.replicas import Cluster
from tests.support.service import ServiceProcess
from tests.support.timing import scaled

TTL_S = 2.0
# about 4 s per reply: long enough to act mid-run, short enough for the suite
SLOW = ("--demo-tokens-per-s", "100", "--demo-reply-words", "400")
QUICK = "/fail"  # the demo model ends such a run at once, with a model error
CHANNELS = 2  # the edge's default --upstream-channels
IDS = ("replica-a", "replica-b")

pytestmark = pytest.mark.timeout(240)


class OwnRedis:
    """A redis-server of the test's own on a free loopback port (`--save ''`) that the
    test can shut down (`redis-cli shutdown nosave`) and start again on that port. With
    `aof_dir` it keeps an append-only file there (fsync on every write), so what it held
    comes back with it; without, it comes back empty."""

    def __init__(self, aof_dir: Path | None = None) -> None:
        self.aof_dir = aof_dir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.aof_dir is not None:
            self.aof_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--dir", str(self.aof_dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = asyncio.get_running_loop().time() + scaled(15)
        while not await self._cli("ping"):
            assert asyncio.get_running_loop().time() < deadline, "redis-server did not start"
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        await self._cli("shutdown", "nosave")
        if self.process is not None:
            await asyncio.wait_for(self.process.wait(), scaled(15))

    async def _cli(self, *argv: str) -> bool:
        process = await asyncio.create_subprocess_exec(
            "redis-cli",
            "-p",
            str(self.port),
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await process.communicate()
        return process.returncode == 0 and (argv[0] != "ping" or b"PONG" in out)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@dataclass
class Four:
    """2 replicas (by replica id) and 2 edges on shared backends."""

    shared: Cluster
    replicas: dict[str, ServiceProcess]
    edges: list[EdgeProcess]
    redis: OwnRedis
    postgres: PausableProxy

    def upstream(self) -> list[str]:
        return [self.replicas[name].address for name in IDS]

    def edge_pick(self, session_id: str) -> str:
        """The replica id both edges carry the session on while both replicas are up (the
        edge's rendezvous hashing over `address#slot`, slots numbered in upstream order)."""
        keys = [
            (name, f"{self.replicas[name].address}#{i * CHANNELS + c}")
            for i, name in enumerate(IDS)
            for c in range(CHANNELS)
        ]
        return max(keys, key=lambda item: zlib.crc32(f"{session_id}|{item[1]}".encode()))[0]

    def ws(self, index: int) -> str:
        return self.edges[index].ws_url


@pytest.fixture
async def four(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Four]:
    """The cluster; parametrized indirectly with True, its Redis keeps an append-only file."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    require("PostgreSQL", "127.0.0.1", 5432, "pg_ctlcluster ... main start")
    aof = bool(getattr(request, "param", False))
    redis = OwnRedis(tmp_path / "redis" if aof else None)
    await redis.start()
    async with postgres_database() as store_url:
        proxy = await PausableProxy.start(store_url)
        host_part, database = store_url.rsplit("/", 1)
        proxied = f"{host_part.rsplit(':', 1)[0]}:{proxy.port}/{database}"
        shared = Cluster(tmp_path, redis.url, "c:", proxied, TTL_S, SLOW)
        replicas: dict[str, ServiceProcess] = {}
        edges: list[EdgeProcess] = []
        try:
            for name in IDS:  # the proxy runs on this loop: start them from a thread
                replicas[name] = await asyncio.to_thread(shared.start, name)
            upstream = ",".join(replicas[name].address for name in IDS)
            for _ in range(2):
                edges.append(
                    await asyncio.to_thread(start_edge, upstream, "--upstream-backoff-max-s", "0.3")
                )
            for edge in edges:
                await until_ready(edge)
            yield Four(shared, replicas, edges, redis, proxy)
        finally:
            await proxy.restore()
            for edge in edges:
                await asyncio.to_thread(edge.stop)
            for replica in replicas.values():
                await asyncio.to_thread(replica.stop)
            await proxy.close()
            await redis.kill()


async def until_ready(edge: EdgeProcess) -> None:
    """Wait (bounded) until the edge's /readyz says 200: some replica serves it."""
    deadline = asyncio.get_running_loop().time() + scaled(30)
    while await asyncio.to_thread(_readyz, edge.url) != 200:
        assert asyncio.get_running_loop().time() < deadline, edge.text()[-2000:]
        await asyncio.sleep(0.1)


async def until_not_ready(edge: EdgeProcess) -> None:
    """Wait (bounded) until the edge's /readyz says 503: no replica is SERVING."""
    deadline = asyncio.get_running_loop().time() + scaled(30)
    while await asyncio.to_thread(_readyz, edge.url) == 200:
        assert asyncio.get_running_loop().time() < deadline, "readyz stayed 200 in the outage"
        await asyncio.sleep(0.1)


def _readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as reply:
            return int(reply.status)
    except (urllib.error.URLError, OSError):
        return 0


def stub_for(address: str) -> tuple[grpc.aio.Channel, agent_pb2_grpc.AgentServiceStub]:
    channel = grpc.aio.insecure_channel(address)
    return channel, agent_pb2_grpc.AgentServiceStub(channel)


async def user_messages(address: str, session_id: str) -> list[str]:
    """The message ids of the session's user messages, in history order."""
    channel, stub = stub_for(address)
    async with channel:
        history = await stub.ListMessages(pb.ListMessagesRequest(session_id=session_id))
    return [m.message_id for m in history.messages if m.role == pb.ROLE_USER]


async def say_until_accepted(client: EdgeClient, sid: str, text: str, message_id: str) -> dict:
    """Send (same message id each time) until the edge acks; while a replica or a backend
    is down the edge answers `upstream_unavailable` (retryable)."""
    deadline = asyncio.get_running_loop().time() + scaled(60)
    while True:
        reply = await client.say(sid, text, message_id=message_id)
        if reply["type"] == "ack":
            return reply
        assert reply["code"] == "upstream_unavailable", reply
        assert asyncio.get_running_loop().time() < deadline, reply
        await asyncio.sleep(reply.get("retry_after_ms", 200) / 1000)


def view(client: EdgeClient, sid: str) -> dict[str, object]:
    """What two sockets of one session must agree on: every seq, the frames other than
    the (batched) deltas, and each run's text."""
    events = client.events(sid)
    others = [
        (f["type"], f["seq"], f.get("run_id"), f.get("finish_reason"))
        for f in events
        if f["type"] != "chat:response"
    ]
    texts: dict[str, str] = {}
    for f in events:
        if f["type"] == "chat:response":
            texts[f["run_id"]] = texts.get(f["run_id"], "") + f["text"]
    return {"seqs": client.seqs(sid), "others": others, "texts": texts}


async def session_on_both_edges(four: Four) -> tuple[str, EdgeClient, EdgeClient]:
    session = await asyncio.to_thread(create_session, four.edges[0])
    sid = session["session_id"]
    on_1 = await EdgeClient.connect(four.ws(0), token=session["token"])
    on_2 = await EdgeClient.connect(four.ws(1), token=session["token"])
    assert (await on_1.join(sid))["type"] == "ack"
    assert (await on_2.join(sid))["type"] == "ack"
    return sid, on_1, on_2


def gaps(client: EdgeClient) -> list[dict]:
    return [f for f in client.frames if f.get("type") == "chat:gap"]


async def test_sockets_of_one_session_on_both_edges_get_identical_sequences(four: Four) -> None:
    sid, on_1, on_2 = await session_on_both_edges(four)
    first = await on_1.say(sid, "tell me a story", message_id="m1")
    queued = await on_2.say(sid, QUICK, message_id="m2")  # queued behind it, through edge 2
    assert first["type"] == queued["type"] == "ack", (first, queued)
    last = await on_1.until_complete(sid, queued["run_id"], timeout_s=60)
    await on_2.until_complete(sid, queued["run_id"], timeout_s=60)
    await asyncio.sleep(0.3)  # anything either might still receive
    assert view(on_1, sid) == view(on_2, sid)
    assert on_1.seqs(sid) == list(range(1, last["seq"] + 1))
    assert view(on_1, sid)["texts"][first["run_id"]]  # the run streamed text
    assert await user_messages(four.replicas["replica-a"].address, sid) == ["m1", "m2"]
    await on_1.close()
    await on_2.close()


async def test_a_cancel_through_edge_b_stops_a_run_that_runs_on_replica_a(four: Four) -> None:
    session = await asyncio.to_thread(create_session, four.edges[0])
    sid = session["session_id"]
    pick = four.edge_pick(sid)
    owner = next(name for name in IDS if name != pick)
    # the first message goes straight to the replica the edges do NOT carry the session
    # on: it owns the session, so edge B's cancel must travel edge B -> pick -> owner
    channel, stub = stub_for(four.replicas[owner].address)
    direct = ChatClient(stub)
    reply = await direct.send(sid, "m1", "tell me a long story")
    assert reply.status.code == 0, reply.status
    run_id = reply.accepted.run_id
    await direct.close()
    await channel.close()
    assert await four.shared.lease_owner(sid) == owner
    on_b = await EdgeClient.connect(four.ws(1), token=session["token"])
    assert (await on_b.join(sid))["type"] == "ack"
    await on_b.until(lambda f: f.get("type") == "chat:response" and f["run_id"] == run_id)
    cancelled = await on_b.request({"type": "chat:cancel", "session_id": sid, "run_id": run_id})
    assert cancelled["type"] == "ack", cancelled
    done = await on_b.until_complete(sid, run_id, timeout_s=30)
    assert done["finish_reason"] == "cancelled"
    assert f"run {run_id} ended: cancelled" in four.replicas[owner].text()
    assert f"run {run_id} ended" not in four.replicas[pick].text()
    await on_b.close()


async def test_kill_9_of_the_owning_replica_interrupts_the_run_and_the_other_runs_the_next(
    four: Four,
) -> None:
    sid, on_1, on_2 = await session_on_both_edges(four)
    first = await on_1.say(sid, "tell me a long story", message_id="m1")
    assert first["type"] == "ack", first
    await on_2.until(lambda f: f.get("type") == "chat:response" and f["seq"] >= 10)
    owner = await four.shared.lease_owner(sid)
    survivor = next(name for name in IDS if name != owner)
    four.replicas[owner].kill()
    for client in (on_1, on_2):
        done = await client.until_complete(sid, first["run_id"], timeout_s=TTL_S + 30)
        assert done["finish_reason"] == "interrupted"
    nxt = await say_until_accepted(on_2, sid, QUICK, "m2")
    for client in (on_1, on_2):
        last = await client.until_complete(sid, nxt["run_id"], timeout_s=30)
        assert client.seqs(sid) == list(range(1, last["seq"] + 1))
        assert not gaps(client)
        completes = [f for f in client.events(sid) if f["type"] == "chat:complete"]
        assert [f["run_id"] for f in completes] == [first["run_id"], nxt["run_id"]]
    assert f"run {nxt['run_id']} ended" in four.replicas[survivor].text()
    assert await four.shared.lease_owner(sid) == survivor
    assert await user_messages(four.replicas[survivor].address, sid) == ["m1", "m2"]
    await on_1.close()
    await on_2.close()


async def test_kill_9_of_an_edge_its_clients_resume_on_the_other_edge_with_no_gap(
    four: Four,
) -> None:
    session = await asyncio.to_thread(create_session, four.edges[0])
    sid = session["session_id"]
    on_1 = await EdgeClient.connect(four.ws(0), token=session["token"])
    assert (await on_1.join(sid))["type"] == "ack"
    first = await on_1.say(sid, "tell me a long story", message_id="m1")
    assert first["type"] == "ack", first
    await on_1.until(lambda f: f.get("type") == "chat:response" and f["seq"] >= 10)
    four.edges[0].kill()
    with pytest.raises(websockets.exceptions.ConnectionClosed):  # gone with its edge
        while True:
            await on_1.recv(timeout_s=10)
    seen = on_1.seqs(sid)
    # what a client does: reconnect to the other edge's URL, join at its last seq
    again = await EdgeClient.connect(four.ws(1), token=session["token"])
    assert (await again.join(sid, after_seq=seen[-1]))["type"] == "ack"
    done = await again.until_complete(sid, first["run_id"], timeout_s=60)
    assert done["finish_reason"] == "stop"
    assert not gaps(again)
    assert seen + again.seqs(sid) == list(range(1, done["seq"] + 1))
    nxt = await again.say(sid, QUICK, message_id="m2")
    assert nxt["type"] == "ack", nxt
    await again.until_complete(sid, nxt["run_id"], timeout_s=30)
    assert await user_messages(four.replicas["replica-a"].address, sid) == ["m1", "m2"]
    await again.close()


async def _resumes_after(four: Four, outage: str) -> None:
    """A conversation on both edges; mid-run, `outage` (a Redis restart or a PostgreSQL
    cut); after it every socket still follows the session, a new message runs, and
    every accepted message is in history once."""
    sid, on_1, on_2 = await session_on_both_edges(four)
    first = await on_1.say(sid, "tell me a long story", message_id="m1")
    assert first["type"] == "ack", first
    await on_2.until(lambda f: f.get("type") == "chat:response" and f["seq"] >= 10)
    accepted = ["m1"]
    if outage == "redis":
        await four.redis.shutdown()
        down_since = asyncio.get_running_loop().time()
        await asyncio.sleep(1.0)
        during = await on_2.say(sid, "during the outage", message_id="m2")
        for edge in four.edges:  # both replicas say NOT_SERVING, so no edge is ready
            await until_not_ready(edge)
        # an outage that outlasts the lease: every lease expires (or is gone) meanwhile
        await asyncio.sleep(max(0.0, down_since + 2 * TTL_S - asyncio.get_running_loop().time()))
        await four.redis.start()
    else:
        await four.postgres.cut()
        await asyncio.sleep(1.0)
        during = await on_2.say(sid, "during the outage", message_id="m2")
        for edge in four.edges:
            await until_not_ready(edge)
        await four.postgres.restore()
    for edge in four.edges:
        await until_ready(edge)
    if during["type"] == "ack":
        accepted.append("m2")
    else:
        assert during["code"] == "upstream_unavailable", during
    # the first run ends one way or another; then a new message runs, seen on both edges
    for client in (on_1, on_2):
        try:
            await client.until_complete(sid, first["run_id"], timeout_s=60)
        except TimeoutError:
            logs = {name: r.text()[-4000:] for name, r in four.replicas.items()}
            raise AssertionError(f"run {first['run_id']} never ended on a socket: {logs}") from None
    nxt = await say_until_accepted(on_1, sid, QUICK, "m3")
    accepted.append("m3")
    for client in (on_1, on_2):
        last = await client.until_complete(sid, nxt["run_id"], timeout_s=60)
        # the owner lived through it: what it had made durable is written again if Redis
        # lost it, so nothing is missing, nothing twice, and no gap is reported
        assert client.seqs(sid) == list(range(1, last["seq"] + 1))
        assert not gaps(client)
    assert view(on_1, sid)["seqs"] == view(on_2, sid)["seqs"]
    address = four.replicas["replica-a"].address
    deadline = asyncio.get_running_loop().time() + scaled(30)
    while (history := await user_messages(address, sid)) != accepted:
        assert asyncio.get_running_loop().time() < deadline, (history, accepted)
        await asyncio.sleep(0.2)
    await on_1.close()
    await on_2.close()


@pytest.mark.parametrize("four", [True], indirect=True, ids=["aof"])
async def test_a_redis_restart_mid_conversation_clients_resume_and_nothing_is_lost(
    four: Four,
) -> None:
    """Redis as a deployment runs it for the log: with its append-only file."""
    await _resumes_after(four, "redis")


async def test_a_redis_restart_that_lost_its_data_mid_conversation_clients_resume(
    four: Four,
) -> None:
    """Redis as CI runs it: no persistence, so it comes back empty. The owner puts its
    lease back (its token is still the store's newest) and writes its window again."""
    await _resumes_after(four, "redis")


async def test_an_owner_killed_while_redis_loses_its_data_is_taken_over_past_a_gap(
    four: Four,
) -> None:
    """The worst case: Redis comes back empty and the owner, the one replica whose window
    held the session's events, died meanwhile. The survivor takes the session over after
    the settling time and continues after the seqs the store had reserved: every socket
    is told of a gap (those events are truly gone), never shown another event under a
    seq it has seen, and the run ends interrupted once."""
    sid, on_1, on_2 = await session_on_both_edges(four)
    first = await on_1.say(sid, "tell me a long story", message_id="m1")
    assert first["type"] == "ack", first
    await on_2.until(lambda f: f.get("type") == "chat:response" and f["seq"] >= 10)
    owner = await four.shared.lease_owner(sid)
    survivor = next(name for name in IDS if name != owner)
    await four.redis.shutdown()
    four.replicas[owner].kill()
    await four.redis.start()  # empty: no persistence
    for client in (on_1, on_2):
        try:
            done = await client.until_complete(sid, first["run_id"], timeout_s=TTL_S * 3 + 60)
        except TimeoutError:
            logs = {name: r.text()[-6000:] for name, r in four.replicas.items()}
            logs |= {f"edge {i}": e.text()[-3000:] for i, e in enumerate(four.edges)}
            raise AssertionError(f"run {first['run_id']} never ended on a socket: {logs}") from None
        assert done["finish_reason"] == "interrupted"
        seqs = client.seqs(sid)
        assert seqs == sorted(set(seqs)), seqs  # in order, none twice
        assert gaps(client), "the lost events are reported as a gap"
    nxt = await say_until_accepted(on_2, sid, QUICK, "m2")
    for client in (on_1, on_2):
        await client.until_complete(sid, nxt["run_id"], timeout_s=60)
        completes = [f["run_id"] for f in client.events(sid) if f["type"] == "chat:complete"]
        assert completes == [first["run_id"], nxt["run_id"]]
    assert await four.shared.lease_owner(sid) == survivor
    assert await user_messages(four.replicas[survivor].address, sid) == ["m1", "m2"]
    await on_1.close()
    await on_2.close()


async def test_a_postgresql_outage_mid_conversation_clients_resume_and_nothing_is_lost(
    four: Four,
) -> None:
    await _resumes_after(four, "postgresql")
