"""Session leases in Redis, beside the log they fence (`redis://HOST:PORT/DB?prefix=P`).

A session's lease is one key, `<prefix>lease:<session_id>`, whose value is
`<token> <replica_id> <address>` and which expires after the TTL; its token
comes from `INCR <prefix>lease-token:<session_id>`, so every grant's token is
larger than every earlier one. The log's append script (log_redis.py) reads the
token at the start of the value: a writer whose token is not the current one is
refused.

- acquire: one script, the `SET NX PX` with a fresh INCR'd token (atomic: no
  key without a token, no token without its key).
- renewal: a background loop every TTL/3 extends every lease held in one
  script. A lease whose key vanished while nobody else took it (Redis lost it,
  say) is put back with the same token, since nobody can have written with a
  newer one; a lease another replica holds is lost, and the callback is told.
- `held()` trusts a lease only until its last successful renewal + 0.9 TTL by
  this process's monotonic clock: a process that was paused past that refuses
  to accept commands for the session even before it has heard it lost it.
- close: release every lease held (a clean shutdown hands sessions over at once
  instead of after the TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis

from agent_service.lease import Holder, LostCallback, default_replica_id
from agent_service.log_redis import SOCKET_TIMEOUT_S, lease_key

log = logging.getLogger(__name__)

TRUST = 0.9  # of the TTL, after a renewal was sent, that this process trusts its lease
RENEW_CHUNK = 500  # leases renewed per script call

# KEYS: lease, counter; ARGV: replica_id, address, ttl_ms. Returns the new token, or 0
# when another replica holds the lease.
ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^%d+ (%S+)') ~= ARGV[1] then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return token
"""

# KEYS: n leases, then their n counters; ARGV: ttl_ms, then the n values held. Returns the
# 1-based positions of the leases lost.
RENEW = """
local n = #KEYS / 2
local lost = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if v == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  elseif (not v) and redis.call('GET', KEYS[n + i]) == string.match(ARGV[i + 1], '^(%d+)') then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
"""

# KEYS: lease; ARGV: the value held. Deletes it only when it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def parse_holder(value: bytes | str) -> Holder:
    """A lease key's value as a Holder."""
    text = value.decode() if isinstance(value, bytes) else value
    token, replica_id, address = [*text.split(" ", 2), "", ""][:3]
    return Holder(replica_id, address, int(token))


class RedisLease:
    """Lease on Redis. See the module docstring."""

    def __init__(self, url: str, *, ttl_s: float, replica_id: str = "", address: str = "") -> None:
        parts = urlsplit(url)
        self.prefix = parse_qs(parts.query).get("prefix", ["agent-relay:"])[0]
        self._url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.ttl_s = ttl_s
        self.replica_id = replica_id or default_replica_id()
        self.address = address
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._held: dict[str, tuple[bytes, float]] = {}  # session -> (value, trusted until)
        self._callbacks: list[LostCallback] = []
        self._renewer: asyncio.Task[None] | None = None
        self._healthy = True

    @property
    def shared(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("lease is not open")
        return self._redis

    def _key(self, session_id: str) -> str:
        return lease_key(self.prefix, session_id)

    def _counter(self, session_id: str) -> str:
        return f"{self.prefix}lease-token:{session_id}"

    def on_lost(self, callback: LostCallback) -> None:
        self._callbacks.append(callback)

    async def open(self) -> None:
        if " " in self.replica_id or not self.replica_id:
            raise ValueError("replica_id must be non-empty and contain no space")
        self._redis = aioredis.Redis.from_url(
            self._url,
            decode_responses=False,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
        )
        await self._redis.ping()
        for name, body in (("acquire", ACQUIRE), ("renew", RENEW), ("release", RELEASE)):
            self._scripts[name] = self._redis.register_script(body)
        self._renewer = asyncio.create_task(self._renew_loop(), name="lease-renewal")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        for session_id in list(self._held):
            with contextlib.suppress(Exception):
                await self.release(session_id)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def acquire(self, session_id: str) -> int | None:
        token = self.held(session_id)
        if token is not None:
            return token
        sent = time.monotonic()
        token = int(
            await self._scripts["acquire"](
                keys=[self._key(session_id), self._counter(session_id)],
                args=[self.replica_id, self.address, round(self.ttl_s * 1000)],
            )
        )
        if token == 0:
            return None
        value = f"{token} {self.replica_id} {self.address}".encode()
        self._held[session_id] = (value, sent + self.ttl_s * TRUST)
        log.info("took the lease of session %s (token %d)", session_id, token)
        return token

    def held(self, session_id: str) -> int | None:
        entry = self._held.get(session_id)
        if entry is None or time.monotonic() >= entry[1]:
            return None
        return int(entry[0].split(b" ", 1)[0])

    async def holder(self, session_id: str) -> Holder | None:
        value: Any = await self.redis.get(self._key(session_id))
        return parse_holder(value) if value else None

    async def release(self, session_id: str) -> None:
        entry = self._held.pop(session_id, None)
        if entry is not None:
            await self._scripts["release"](keys=[self._key(session_id)], args=[entry[0]])

    async def _renew_loop(self) -> None:
        period = self.ttl_s / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self._renew_all()
            except Exception as exc:
                if self._healthy:
                    log.error("cannot renew session leases: %s", exc)
                self._healthy = False
            else:
                self._healthy = True

    async def _renew_all(self) -> None:
        if not self._held:
            await self.redis.ping()
            return
        held = list(self._held.items())
        ttl_ms = round(self.ttl_s * 1000)
        for start in range(0, len(held), RENEW_CHUNK):
            chunk = held[start : start + RENEW_CHUNK]
            sent = time.monotonic()
            keys = [self._key(s) for s, _ in chunk] + [self._counter(s) for s, _ in chunk]
            lost: Any = await self._scripts["renew"](
                keys=keys, args=[ttl_ms, *(value for _, (value, _) in chunk)]
            )
            lost_ids = {chunk[int(i) - 1][0] for i in lost}
            for session_id, (value, _) in chunk:
                if self._held.get(session_id, (b"",))[0] != value:
                    continue  # released or re-taken meanwhile
                if session_id in lost_ids:
                    del self._held[session_id]
                    log.warning("lost the lease of session %s", session_id)
                    for callback in self._callbacks:
                        callback(session_id)
                else:
                    self._held[session_id] = (value, sent + self.ttl_s * TRUST)
