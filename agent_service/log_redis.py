"""The event log on Redis Streams (`redis://HOST:PORT/DB`), for many machines.

One stream per session, `<prefix>log:<session_id>`, whose entry ids carry the
seq (`<seq>-0`), and a head key beside it. An append is one Lua script over
every session of the batch: it checks each session's head against the
expected seq and only then adds every event, so a batch is all or none and a
writer that lost track (or another replica that got there first) gets
SeqConflict instead of forking a log. Retention is bounded by `XTRIM MINID`.
An append that carries a fencing token also checks the session's lease
(lease_redis.py) in the same script: a replica that lost its lease gets
Fenced and can never write after the one that took over.

Redis may restart with less than it had (no persistence: nothing; an
append-only file synced every second: all but the last second). The script
then tells the writer (LeaseMissing while the lease key is gone, LogBehind when
the head is short of the writer's seq) rather than refusing it for good, and
the owner, its lease put back, writes its window again (a re-seed) at the
same seqs: readers that resume by seq get no duplicate, and a gap only for
what no window holds.
Readers in any process follow with blocking `XREAD`, which costs nothing per
idle session.

URL query options: `prefix` (key prefix, default `agent-relay:`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_relay.v1 import agent_pb2 as pb
from agent_service.log import Append, Fenced, LeaseMissing, LogBehind, SeqConflict
from agent_service.redis_client import LIB_VERSION, command_client

# KEYS: stream1, head1, lease1, stream2, head2, lease2, ...; ARGV: n, then per session:
# expected, count, fence, reseed, then every body of every session in order. A fence of
# 0 checks no lease; any other must be the token at the start of the session's lease
# value (lease_redis.py), else the whole batch is refused: FENCED when another token
# holds the lease, NOLEASE when none does. Then the head: SEQCONFLICT when the log is at
# or past the expected seq (another writer got there), BEHIND when it is short of it
# (it lost events), except for a fenced re-seed, which may start past head + 1 but never
# at or before the stream's newest entry. Returns 1, or an error naming the conflict.
APPEND = """
local n = tonumber(ARGV[1])
local arg = 2
for i = 1, n do
  local fence = tonumber(ARGV[arg + 2])
  if fence ~= 0 then
    local lease = redis.call('GET', KEYS[3 * i])
    if not lease then
      return redis.error_reply('NOLEASE ' .. KEYS[3 * i - 2])
    end
    local token = tonumber(string.match(lease, '^(%d+)'))
    if token ~= fence then
      return redis.error_reply('FENCED ' .. KEYS[3 * i - 2] .. ' token ' .. token)
    end
  end
  local head = tonumber(redis.call('GET', KEYS[3 * i - 1]) or '0')
  local expected = tonumber(ARGV[arg])
  if head + 1 > expected then
    return redis.error_reply('SEQCONFLICT ' .. KEYS[3 * i - 2] .. ' head ' .. head)
  end
  if head + 1 < expected then
    if fence == 0 or ARGV[arg + 3] ~= '1' then
      return redis.error_reply('BEHIND ' .. KEYS[3 * i - 2] .. ' head ' .. head)
    end
    local newest = redis.call('XREVRANGE', KEYS[3 * i - 2], '+', '-', 'COUNT', 1)[1]
    if newest and tonumber(string.match(newest[1], '^(%d+)')) >= expected then
      return redis.error_reply('SEQCONFLICT ' .. KEYS[3 * i - 2] .. ' head ' .. head)
    end
  end
  arg = arg + 4
end
local body = 2 + 4 * n
arg = 2
for i = 1, n do
  local expected = tonumber(ARGV[arg])
  local count = tonumber(ARGV[arg + 1])
  for k = 0, count - 1 do
    redis.call('XADD', KEYS[3 * i - 2], (expected + k) .. '-0', 'e', ARGV[body])
    body = body + 1
  end
  redis.call('SET', KEYS[3 * i - 1], expected + count - 1)
  arg = arg + 4
end
return 1
"""
FOLLOW_BLOCK_MS = 5_000
# Each follower parks one connection in XREAD BLOCK while it follows: follows get a pool
# of their own, as large as Redis's own default client limit (maxclients 10,000), so
# a replica that follows many sessions neither runs out (redis-py's pools hold 100 by
# default) nor makes appends and reads wait behind parked followers.
MAX_FOLLOWERS = 10_000
SOCKET_TIMEOUT_S = 3.0


def lease_key(prefix: str, session_id: str) -> str:
    """The key of a session's lease (lease_redis.py), which appends check."""
    return f"{prefix}lease:{session_id}"


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


class RedisLog:
    """EventLog on Redis Streams."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        options = parse_qs(parts.query)
        self.prefix = options.get("prefix", ["agent-relay:"])[0]
        self._url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self._redis: aioredis.Redis | None = None
        self._follow_redis: aioredis.Redis | None = None
        self._append: object = None

    @property
    def redis(self) -> aioredis.Redis:  # redis-py's replies are loosely typed: Any below
        if self._redis is None:
            raise RuntimeError("event log is not open")
        return self._redis

    def _stream(self, session_id: str) -> str:
        return f"{self.prefix}log:{session_id}"

    def _head_key(self, session_id: str) -> str:
        return f"{self.prefix}head:{session_id}"

    async def open(self) -> None:
        # bounded waits: a Redis that stops answering fails a call (and the writer retries)
        # instead of hanging it; blocking reads add their block time to the timeout
        self._redis = command_client(
            self._url,
            socket_timeout_s=FOLLOW_BLOCK_MS / 1000 + SOCKET_TIMEOUT_S,
            connect_timeout_s=SOCKET_TIMEOUT_S,
        )
        await self._redis.ping()
        self._append = self._redis.register_script(APPEND)
        self._follow_redis = aioredis.Redis.from_url(
            self._url,
            decode_responses=False,
            socket_timeout=FOLLOW_BLOCK_MS / 1000 + SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            max_connections=MAX_FOLLOWERS,
            lib_version=LIB_VERSION,
        )

    async def close(self) -> None:
        for client in (self._redis, self._follow_redis):
            if client is not None:
                await client.aclose()
        self._redis = self._follow_redis = None

    async def append(self, batch: Sequence[Append]) -> None:
        keys: list[str] = []
        args: list[object] = [len(batch)]
        bodies: list[bytes] = []
        for item in batch:
            keys += [
                self._stream(item.session_id),
                self._head_key(item.session_id),
                lease_key(self.prefix, item.session_id),
            ]
            args += [item.expected_seq, len(item.events), item.fence, int(item.reseed)]
            bodies += [e.SerializeToString() for e in item.events]
        try:
            await self._append(keys=keys, args=[*args, *bodies])  # type: ignore[operator]
        except ResponseError as exc:
            text = str(exc)
            code = text.split(" ", 1)[0]
            if code == "FENCED":
                raise Fenced(text) from exc
            if code == "NOLEASE":
                raise LeaseMissing(text) from exc
            if code == "SEQCONFLICT":
                raise SeqConflict(text) from exc
            if code == "BEHIND":
                found = re.search(r"head (\d+)", text)
                raise LogBehind(text, int(found.group(1)) if found else 0) from exc
            raise

    async def head(self, session_id: str) -> int:
        value: Any = await self.redis.get(self._head_key(session_id))
        return int(value or 0)

    async def read_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[pb.SessionEvent]:
        entries: Any = await self.redis.xrange(
            self._stream(session_id), min=f"{after_seq + 1}-0", max="+", count=limit
        )
        return [pb.SessionEvent.FromString(fields[b"e"]) for _, fields in entries]

    async def read_tail(self, session_id: str, count: int) -> list[pb.SessionEvent]:
        if count <= 0:
            return []
        entries: Any = await self.redis.xrevrange(self._stream(session_id), count=count)
        return [pb.SessionEvent.FromString(fields[b"e"]) for _, fields in reversed(entries)]

    async def follow(self, session_id: str, after_seq: int) -> AsyncIterator[list[pb.SessionEvent]]:
        stream = self._stream(session_id)
        last = f"{after_seq}-0"
        follows = self._follow_redis
        if follows is None:
            raise RuntimeError("event log is not open")
        task = asyncio.current_task()
        while True:
            reply: Any = await follows.xread({stream: last}, count=1000, block=FOLLOW_BLOCK_MS)
            if task is not None and task.cancelling():
                # redis-py can swallow a cancel that lands in a blocking read (it returns
                # the read's reply instead); the follower must still stop
                raise asyncio.CancelledError
            for _, entries in reply:
                if entries:
                    last = f"{_seq(entries[-1][0])}-0"
                    yield [pb.SessionEvent.FromString(fields[b"e"]) for _, fields in entries]

    async def trim(self, session_id: str, keep_after_seq: int) -> int:
        return int(
            await self.redis.xtrim(
                self._stream(session_id), minid=f"{keep_after_seq + 1}-0", approximate=False
            )
        )

    async def ping(self) -> None:
        await self.redis.ping()
