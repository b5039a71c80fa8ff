"""The scale-out backends the tests use: a real Redis and a real PostgreSQL on loopback.

Each test gets its own Redis key prefix and its own PostgreSQL database, and
removes them afterwards. Where one does not answer the test is skipped with the
command that starts it; under CI (CI set) it fails instead, since .ci/run starts
both.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

REDIS_URL = os.environ.get("AGENT_RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "AGENT_RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int, start: str) -> None:
    """Skip (or, under CI, fail) when host:port does not answer."""
    if answers(host, port):
        return
    message = f"{service} does not answer on {host}:{port}; start it with: {start}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[tuple[str, str]]:
    """(redis URL, a fresh key prefix); every key under the prefix is deleted after."""
    import redis.asyncio as aioredis

    require("Redis", "127.0.0.1", 6379, "redis-server --daemonize yes --save '' --bind 127.0.0.1")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    try:
        yield REDIS_URL, prefix
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """The URL of a fresh, empty database; dropped after."""
    import asyncpg

    require(
        "PostgreSQL",
        "127.0.0.1",
        5432,
        "pg_ctlcluster --skip-systemctl-redirect $(pg_lsclusters -h | cut -d' ' -f1) main start",
    )
    name = f"agent_relay_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
