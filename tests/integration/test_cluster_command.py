"""`agent-relay cluster` (`make cluster`) with real processes: 2 replicas and 2 edges on
the local Redis and PostgreSQL, on free ports, with their own database and key prefix."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.backends import POSTGRES_URL, postgres_database, redis_prefix
from tests.support.edge import EdgeClient, create_session
from tests.support.timing import scaled

REPO = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    """Ports free now (held open together so they differ)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def readyz(url: str) -> int:
    with urllib.request.urlopen(url + "/readyz", timeout=scaled(5)) as reply:
        return int(reply.status)


def start_cluster(
    replicas: list[str],
    edges: list[str],
    metrics: list[str],
    redis_url: str,
    prefix: str,
    store_url: str,
    tmp_path: Path,
) -> tuple[subprocess.Popen[str], list[str]]:
    """`agent-relay cluster` as `make cluster` runs it, on these ports and backends; its
    output keeps being collected into the list returned."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_service.cli",
            "cluster",
            "--replica-listen",
            ",".join(replicas),
            "--edge-listen",
            ",".join(edges),
            "--replica-metrics-listen",
            ",".join(metrics),
            "--redis-url",
            redis_url,
            "--log-prefix",
            prefix,
            "--postgres-url",
            store_url,
            "--var-dir",
            str(tmp_path / "var"),
            "--workspace-dir",
            str(tmp_path / "workspace"),
            "--lease-ttl-s",
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", AGENT_RELAY_DEMO_TOKENS_PER_S="0"),
    )
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return process, lines


def stop(process: subprocess.Popen[str]) -> int:
    """SIGTERM, as Ctrl-C would; the exit code (bounded wait)."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=scaled(60))


async def test_make_cluster_serves_one_session_on_both_edges_and_sigterm_frees_every_port(
    tmp_path: Path,
) -> None:
    ports = free_ports(6)
    replicas = [f"127.0.0.1:{p}" for p in ports[:2]]
    edges = [f"127.0.0.1:{p}" for p in ports[2:4]]
    metrics = [f"127.0.0.1:{p}" for p in ports[4:]]
    async with redis_prefix() as (redis_url, prefix), postgres_database() as store_url:
        # a database name the command has to create itself (it is dropped with the fixture's)
        database = f"agent_relay_cluster_{uuid.uuid4().hex[:8]}"
        own_url = store_url.rsplit("/", 1)[0] + f"/{database}"
        process, lines = start_cluster(
            replicas, edges, metrics, redis_url, prefix, own_url, tmp_path
        )
        try:
            deadline = time.monotonic() + scaled(60)
            while "cluster is running" not in "".join(lines):
                assert process.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "".join(lines)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)  # the rest of the banner
            banner = "".join(lines)
            urls = re.findall(r"edge-\d: (http://\S+)/", banner)
            grpc_addresses = re.findall(r"replica-\d: gRPC on (\S+)", banner)
            assert urls == [f"http://{e}" for e in edges], banner
            assert grpc_addresses == replicas, banner
            assert f"created PostgreSQL database '{database}'" in banner
            for url in urls:
                assert readyz(url) == 200

            # one session: a message through edge 1, seen by a socket on edge 2
            session = create_session(SimpleNamespace(url=urls[0]))
            sid = session["session_id"]
            on_1 = await EdgeClient.connect(
                urls[0].replace("http", "ws") + "/ws", token=session["token"]
            )
            on_2 = await EdgeClient.connect(
                urls[1].replace("http", "ws") + "/ws", token=session["token"]
            )
            assert (await on_1.join(sid))["type"] == "ack"
            assert (await on_2.join(sid))["type"] == "ack"
            ack = await on_1.say(sid, "hello from edge 1")
            assert ack["type"] == "ack", ack
            done_2 = await on_2.until_complete(sid, ack["run_id"], timeout_s=30)
            done_1 = await on_1.until_complete(sid, ack["run_id"], timeout_s=30)
            assert done_1["seq"] == done_2["seq"]
            assert on_2.seqs(sid) == on_1.seqs(sid) == list(range(1, done_2["seq"] + 1))
            await on_1.close()
            await on_2.close()
        finally:
            code = await asyncio.to_thread(stop, process)
            await _drop(database)
        text = "".join(lines)
        assert code == 0, text
        for name in ("edge-1", "edge-2", "replica-1", "replica-2"):
            assert f"{name} stopped (exit code 0)" in text, text
        for port in ports:
            assert port_free(port), f"port {port} still taken after the stop:\n{text}"


async def _drop(database: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


pytestmark = pytest.mark.timeout(180)
