"""The Redis client the event log and the lease send their commands on.

redis-py's default pool holds 100 connections and fails the 101st call at once
("Too many connections"): a replica that loads or appends to hundreds of sessions
at once makes that many calls at once. Here a call that finds every connection
busy waits for one, as long as a call may take, and fails only then.

Every client here names redis-py's version itself (LIB_VERSION): without it, each new
connection reads it from the package's metadata (importlib.metadata parses the METADATA
file every time), about 1.1 of the 3.3 ms a connection took here, and a replica opens
one per session it follows.
"""

from __future__ import annotations

from importlib import metadata

import redis.asyncio as aioredis

COMMAND_CONNECTIONS = 100  # at most this many calls are on the wire at once
LIB_VERSION = metadata.version("redis")  # sent to Redis by CLIENT SETINFO, as redis-py would


def command_client(
    url: str, *, socket_timeout_s: float, connect_timeout_s: float
) -> aioredis.Redis:
    """A client of `url` whose calls wait up to socket_timeout_s for a free connection."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=COMMAND_CONNECTIONS,
        timeout=socket_timeout_s,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        lib_version=LIB_VERSION,
    )
    return aioredis.Redis.from_pool(pool)
