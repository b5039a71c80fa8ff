"""Redis and PostgreSQL for `agent-relay cluster`: check they answer, start them when not.

Only loopback servers are started, and the same way CI does: `redis-server
--daemonize yes` bound to 127.0.0.1 with persistence off; `pg_lsclusters` names the
installed PostgreSQL cluster and `pg_ctlcluster --skip-systemctl-redirect VERSION NAME
start` starts it. Both keep running after the cluster stops (other work may use them).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
POLL_S = 0.2


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """The host and port a redis:// or postgresql:// URL names."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pick_pg_cluster(listing: str, port: int) -> tuple[str, str] | None:
    """(version, name) of the cluster in `pg_lsclusters -h` output that uses port (else
    the first one); None when none is installed. Pure."""
    rows = [line.split() for line in listing.splitlines() if len(line.split()) >= 3]
    for version, name, row_port, *_ in rows:
        if row_port == str(port):
            return version, name
    return (rows[0][0], rows[0][1]) if rows else None


async def _run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace").strip()


async def _wait_answers(host: str, port: int, wait_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        if await asyncio.to_thread(answers, host, port):
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(POLL_S)


async def ensure_redis(url: str, *, start: bool, wait_s: float, say: Callable[[str], None]) -> str:
    """Make sure the Redis at url answers. Returns "" when it does, else why not."""
    host, port = host_port(url, 6379)
    if await asyncio.to_thread(answers, host, port):
        return ""
    if not start or host not in LOOPBACK:
        return f"Redis does not answer on {host}:{port}"
    if shutil.which("redis-server") is None:
        return f"Redis does not answer on {host}:{port} and redis-server is not installed"
    say(f"Redis does not answer on {host}:{port}: starting redis-server")
    code, out = await _run(
        "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
        "--save", "",
    )  # fmt: skip
    if code != 0:
        return f"redis-server failed (exit code {code}): {out}"
    if not await _wait_answers(host, port, wait_s):
        return f"Redis still does not answer on {host}:{port} after {wait_s:.0f} s"
    return ""


async def ensure_postgres(
    url: str, *, start: bool, wait_s: float, say: Callable[[str], None]
) -> str:
    """Make sure the PostgreSQL at url answers. Returns "" when it does, else why not."""
    host, port = host_port(url, 5432)
    if await asyncio.to_thread(answers, host, port):
        return ""
    if not start or host not in LOOPBACK:
        return f"PostgreSQL does not answer on {host}:{port}"
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        return f"PostgreSQL does not answer on {host}:{port} and pg_ctlcluster is not installed"
    code, listing = await _run("pg_lsclusters", "-h")
    cluster = pick_pg_cluster(listing, port) if code == 0 else None
    if cluster is None:
        return f"PostgreSQL does not answer on {host}:{port} and pg_lsclusters lists no cluster"
    version, name = cluster
    say(f"PostgreSQL does not answer on {host}:{port}: starting cluster {version}/{name}")
    code, out = await _run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
    if code != 0:
        return f"pg_ctlcluster {version} {name} start failed (exit code {code}): {out}"
    if not await _wait_answers(host, port, wait_s):
        return f"PostgreSQL still does not answer on {host}:{port} after {wait_s:.0f} s"
    return ""


async def ensure_database(url: str, say: Callable[[str], None]) -> str:
    """Create the database url names when it is missing (connecting to `postgres` for
    that). Returns "" when it exists, else why not. Safe when two create it at once."""
    import asyncpg

    parts = urlsplit(url)
    name = parts.path.strip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres", query=""))
    try:
        admin = await asyncpg.connect(admin_url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"cannot connect to PostgreSQL at {admin_url}: {exc}"
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return ""
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await admin.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return ""  # created meanwhile by someone else
        except asyncpg.PostgresError as exc:
            return f"cannot create database {name!r}: {exc}"
        say(f"created PostgreSQL database {name!r}")
        return ""
    finally:
        await admin.close()
