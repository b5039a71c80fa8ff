"""Two agent replicas on one PostgreSQL database and one Redis key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from tests.support.backends import postgres_database, redis_prefix
from tests.support.service import ServiceProcess, start_agent_service


@dataclass
class Cluster:
    """The replicas' shared backends and a way to start more replicas on them."""

    tmp_path: Path
    redis_url: str
    prefix: str
    store_url: str
    ttl_s: float
    extra: tuple[str, ...]

    @property
    def log_url(self) -> str:
        return f"{self.redis_url}?prefix={self.prefix}"

    def start(self, replica_id: str) -> ServiceProcess:
        """Start a replica named `replica_id` and wait until it serves."""
        return start_agent_service(
            self.tmp_path / replica_id,
            "--store-url",
            self.store_url,
            "--log-url",
            self.log_url,
            "--replica-id",
            replica_id,
            "--lease-ttl-s",
            str(self.ttl_s),
            "--metrics-listen",
            "",
            *self.extra,
        )

    async def lease_owner(self, session_id: str) -> str:
        """The replica id the session's lease names ("" when nobody holds it)."""
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            value = await client.get(f"{self.prefix}lease:{session_id}")
        finally:
            await client.aclose()
        return value.decode().split(" ")[1] if value else ""

    async def stream_seqs(self, session_id: str) -> list[int]:
        """The seq of every entry of the session's Redis stream, in stream order."""
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            entries = await client.xrange(f"{self.prefix}log:{session_id}")
        finally:
            await client.aclose()
        return [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]


@asynccontextmanager
async def cluster(tmp_path: Path, *extra: str, ttl_s: float = 2.0) -> AsyncIterator[Cluster]:
    """Fresh shared backends for replicas (removed after)."""
    async with redis_prefix() as (redis_url, prefix), postgres_database() as store_url:
        yield Cluster(tmp_path, redis_url, prefix, store_url, ttl_s, extra)
