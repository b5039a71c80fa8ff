"""Session leases in Redis, beside the log they fence (`redis://HOST:PORT/DB?prefix=P`).

A session's lease is one key, `<prefix>lease:<session_id>`, whose value is
`<token> <replica_id> <address>` and which expires after the TTL. The log's
append script (log_redis.py) reads the token at the start of the value: a
writer whose token is not the current one is refused.

Tokens come from the conversation store (lease.FenceSource: a counter per
session in PostgreSQL, or in the SQLite file), not from Redis. Redis may come
back from a restart with nothing (no persistence, as CI runs it) or with what
its append-only file kept; a counter kept there would then start again at 1 and
hand a new owner the very token the old one still writes with, and the fence
would let both write. The store is durable and outside Redis, so a token is
never given twice. (A token made of the wall clock would also grow, but only as
long as no clock steps back; a counter in the store needs no such assumption.)

- acquire: when nobody else holds the key, a fresh token from the store, then
  one script that sets the key (and refuses when another replica got there in
  between: that token is simply never used).
- renewal: a background loop every TTL/3 extends every lease held in one
  script. A lease another replica holds is lost, and the callback is told. A
  lease whose key vanished (its Redis restarted: the key expired during the
  outage, or all data went) is put back with the same token (`SET NX`) when the
  store says no newer token was given since: nobody can have written with a
  newer one, so this replica is still the session's only writer, and its runs
  and its unwritten events go on. Otherwise it is lost.
- settling: for a TTL after this process sees Redis answer again, or sees that
  Redis lost its data (a sentinel key it keeps is gone), `acquire` does not take
  a lease Redis does not show: its live holder has that long to put it back, so
  a Redis restart does not move every session to whichever replica looks first.
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

from agent_service.errors import Unavailable
from agent_service.lease import FenceSource, Holder, LostCallback, default_replica_id
from agent_service.log_redis import SOCKET_TIMEOUT_S, lease_key
from agent_service.redis_client import command_client

log = logging.getLogger(__name__)

TRUST = 0.9  # of the TTL, after a renewal was sent, that this process trusts its lease
RENEW_CHUNK = 500  # leases renewed per script call

# KEYS: lease; ARGV: replica_id, address, ttl_ms, token. Returns the token, or 0 when
# another replica holds the lease.
ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^%d+ (%S+)') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[4] .. ' ' .. ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return tonumber(ARGV[4])
"""

# KEYS: n leases; ARGV: ttl_ms, then the n values held. Returns {lost, vanished}: the
# 1-based positions of the leases another replica holds and of those with no key.
RENEW = """
local lost, vanished = {}, {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  elseif not v then
    table.insert(vanished, i)
  else
    table.insert(lost, i)
  end
end
return {lost, vanished}
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

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        fences: FenceSource,
        replica_id: str = "",
        address: str = "",
    ) -> None:
        parts = urlsplit(url)
        self.prefix = parse_qs(parts.query).get("prefix", ["agent-relay:"])[0]
        self._url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.ttl_s = ttl_s
        self.fences = fences
        self.replica_id = replica_id or default_replica_id()
        self.address = address
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._held: dict[str, tuple[bytes, float]] = {}  # session -> (value, trusted until)
        self._callbacks: list[LostCallback] = []
        self._renewer: asyncio.Task[None] | None = None
        self._healthy = True
        self._settles_at = 0.0  # monotonic time from which a missing lease may be taken
        self._acquiring: dict[str, asyncio.Future[int | None]] = {}

    @property
    def shared(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def settled(self) -> bool:
        return self._healthy and time.monotonic() >= self._settles_at

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("lease is not open")
        return self._redis

    def _key(self, session_id: str) -> str:
        return lease_key(self.prefix, session_id)

    @property
    def _sentinel(self) -> str:
        return f"{self.prefix}leases-kept"

    def on_lost(self, callback: LostCallback) -> None:
        self._callbacks.append(callback)

    async def open(self) -> None:
        if " " in self.replica_id or not self.replica_id:
            raise ValueError("replica_id must be non-empty and contain no space")
        self._redis = command_client(
            self._url, socket_timeout_s=SOCKET_TIMEOUT_S, connect_timeout_s=SOCKET_TIMEOUT_S
        )
        await self._redis.set(self._sentinel, b"1", nx=True)
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
        # one acquire per session at a time in this process, shared by its callers: two at
        # once (the start-up takeover beside the takeover loop) would take two tokens, the
        # second fencing the first's appends
        task = self._acquiring.get(session_id)
        if task is None:
            task = asyncio.ensure_future(self._acquire(session_id))
            self._acquiring[session_id] = task
            task.add_done_callback(lambda _: self._acquiring.pop(session_id, None))
        return await asyncio.shield(task)

    async def _acquire(self, session_id: str) -> int | None:
        entry = self._held.get(session_id)
        if entry is not None:
            # this replica's lease, not renewed in time (Redis was slow or away): renew it
            # (or put it back) with the same token rather than fence its own appends
            await self._renew_chunk([(session_id, entry)])
            token = self.held(session_id)
            if token is not None:
                return token
            if session_id in self._held:  # put back or not: the store did not say
                raise Unavailable(
                    f"cannot confirm this replica's lease of session {session_id}; retry",
                    reason="LEASE_UNCONFIRMED",
                )
        current: Any = await self.redis.get(self._key(session_id))
        if current is not None and parse_holder(current).replica_id != self.replica_id:
            return None
        if current is None and not self.settled:
            raise Unavailable(
                f"session leases are settling after a Redis outage; retry (session {session_id})",
                reason="LEASES_SETTLING",
            )
        sent = time.monotonic()
        fresh = await self.fences.next_fence(session_id)
        if fresh == 0:
            raise LookupError(f"no session {session_id!r} to lease")
        token = int(
            await self._scripts["acquire"](
                keys=[self._key(session_id)],
                args=[self.replica_id, self.address, round(self.ttl_s * 1000), fresh],
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
                if not self._healthy:
                    self._settle("Redis answers again")
                self._healthy = True

    def _settle(self, why: str) -> None:
        """Leases Redis does not show are left to their live holders for a TTL."""
        log.warning(
            "%s: leases it lost may be put back by their holders for %.1f s", why, self.ttl_s
        )
        self._settles_at = time.monotonic() + self.ttl_s

    async def _renew_all(self) -> None:
        if await self.redis.set(self._sentinel, b"1", nx=True):
            self._settle("Redis lost its data")
        held = list(self._held.items())
        for start in range(0, len(held), RENEW_CHUNK):
            await self._renew_chunk(held[start : start + RENEW_CHUNK])

    async def _renew_chunk(self, chunk: list[tuple[str, tuple[bytes, float]]]) -> None:
        """Renew these leases in one script; put back those whose keys vanished (when the
        store allows it) and tell the callbacks of those lost."""
        ttl_ms = round(self.ttl_s * 1000)
        if not chunk:
            return
        sent = time.monotonic()
        keys = [self._key(s) for s, _ in chunk]
        reply: Any = await self._scripts["renew"](
            keys=keys, args=[ttl_ms, *(value for _, (value, _) in chunk)]
        )
        lost = {chunk[int(i) - 1][0] for i in reply[0]}
        vanished = [chunk[int(i) - 1] for i in reply[1]]
        unsure: set[str] = set()
        if vanished:
            lost_too, restored = await self._put_back(vanished, ttl_ms)
            lost |= lost_too
            unsure = {s for s, _ in vanished} - lost_too - restored
        for session_id, (value, _) in chunk:
            if self._held.get(session_id, (b"",))[0] != value:
                continue  # released or re-taken meanwhile
            if session_id in lost:
                del self._held[session_id]
                log.warning("lost the lease of session %s", session_id)
                for callback in self._callbacks:
                    callback(session_id)
            elif session_id not in unsure:
                self._held[session_id] = (value, sent + self.ttl_s * TRUST)

    async def _put_back(
        self, vanished: list[tuple[str, tuple[bytes, float]]], ttl_ms: int
    ) -> tuple[set[str], set[str]]:
        """Put back the leases whose keys vanished and whose token is still the newest the
        store gave; returns the sessions lost (a newer token exists, or another replica set
        the key first) and those put back. A store that does not answer leaves them as they
        are: their trust runs out, and the next renewal asks again."""
        try:
            newest = await self.fences.fences([s for s, _ in vanished])
        except Exception as exc:
            log.warning("cannot check %d vanished leases with the store: %s", len(vanished), exc)
            return set(), set()
        lost: set[str] = set()
        restored: set[str] = set()
        for session_id, (value, _) in vanished:
            token = int(value.split(b" ", 1)[0])
            if newest.get(session_id) != token or not await self.redis.set(
                self._key(session_id), value, nx=True, px=ttl_ms
            ):
                lost.add(session_id)
            else:
                restored.add(session_id)
                log.warning("put back the lease of session %s (token %d)", session_id, token)
        return lost, restored
