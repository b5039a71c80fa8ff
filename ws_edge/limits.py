"""Budgets: token buckets, per-address buckets, the per-user run limit and the abuse counter.
Pure; time is passed in.

Each check either spends from its budgets and returns None, or spends nothing
and returns how long to wait (in ms) before the same request would fit. The
caller turns a wait into a `rate_limited` error whose `retry_after_ms` it is.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field


def _refilled(
    tokens: float, updated_at: float, now: float, rate_per_s: float, burst: float
) -> float:
    """A bucket's tokens at `now` (never more than burst; a clock gone back adds none)."""
    if now > updated_at:
        return min(burst, tokens + (now - updated_at) * rate_per_s)
    return tokens


def _wait_ms(tokens: float, cost: float, rate_per_s: float, burst: float) -> int:
    """0 if cost fits in tokens, else the ms until it will (a cost over burst never fits:
    the wait is then the time to refill the whole bucket)."""
    if cost <= tokens:
        return 0
    missing = min(cost, burst) - tokens
    if missing <= 0:
        missing = burst - tokens
    if rate_per_s <= 0:
        return 60_000
    return max(1, math.ceil(missing / rate_per_s * 1000))


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_s` tokens a second, holding at most `burst`; starts full."""

    rate_per_s: float
    burst: float
    tokens: float = field(default=-1.0)
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        self.tokens = _refilled(self.tokens, self.updated_at, now, self.rate_per_s, self.burst)
        self.updated_at = max(self.updated_at, now)

    def wait_ms(self, cost: float, now: float) -> int:
        """0 if cost fits now, else the ms until it will (a cost over burst never fits: the
        wait is then the time to refill the whole bucket)."""
        self._refill(now)
        return _wait_ms(self.tokens, cost, self.rate_per_s, self.burst)

    def spend(self, cost: float, now: float) -> None:
        self._refill(now)
        self.tokens -= cost


@dataclass(frozen=True)
class FrameBudget:
    """The rates one kind of owner (a connection, or a user) may use."""

    frames_per_s: float
    frames_burst: float
    bytes_per_s: float
    bytes_burst: float


class FrameLimiter:
    """Frames and bytes of one owner: both buckets must admit a frame, or neither is spent.

    The two buckets are two numbers beside the shared budget, not two bucket objects:
    every socket holds one limiter and its user another (PERFORMANCE.md: memory per idle
    socket); the rule is TokenBucket's (`_refilled`, `_wait_ms`)."""

    __slots__ = ("_budget", "_bytes", "_frames", "_updated_at")

    def __init__(self, budget: FrameBudget, now: float) -> None:
        self._budget = budget
        self._frames = budget.frames_burst  # both start full
        self._bytes = budget.bytes_burst
        self._updated_at = now

    def _refill(self, now: float) -> None:
        budget, at = self._budget, self._updated_at
        self._frames = _refilled(self._frames, at, now, budget.frames_per_s, budget.frames_burst)
        self._bytes = _refilled(self._bytes, at, now, budget.bytes_per_s, budget.bytes_burst)
        if now > at:
            self._updated_at = now

    def wait_ms(self, size: int, now: float) -> int:
        """0 if a frame of size bytes fits now, else the ms until it will. Spends nothing."""
        self._refill(now)
        budget = self._budget
        return max(
            _wait_ms(self._frames, 1, budget.frames_per_s, budget.frames_burst),
            _wait_ms(self._bytes, size, budget.bytes_per_s, budget.bytes_burst),
        )

    def spend(self, size: int, now: float) -> None:
        self._refill(now)
        self._frames -= 1
        self._bytes -= size

    def full(self, now: float) -> bool:
        """Whether both buckets are full at `now`. A full limiter admits exactly what a new
        one (which starts full) would, so its owner may let it go until its next frame: an
        idle socket then holds none (PERFORMANCE.md: memory per idle socket)."""
        self._refill(now)
        budget = self._budget
        return self._frames >= budget.frames_burst and self._bytes >= budget.bytes_burst


def admit(limiters: list[FrameLimiter], size: int, now: float) -> int:
    """Admit a frame against several limiters (the connection's and the user's): 0 and spend
    from all, or the longest wait and spend from none."""
    wait = max((lim.wait_ms(size, now) for lim in limiters), default=0)
    if wait:
        return wait
    for lim in limiters:
        lim.spend(size, now)
    return 0


class AddressBuckets:
    """One token bucket per key (a client address), for requests that have no user yet.

    Only the `max_keys` most recently seen keys are kept: a key forgotten comes back
    with a full bucket, so the bound on memory costs at most one burst per churned key."""

    __slots__ = ("_buckets", "_burst", "_max_keys", "_rate")

    def __init__(self, rate_per_s: float, burst: float, *, max_keys: int = 65_536) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> int:
        """0 and one token spent, or the ms until key's bucket has one (nothing spent)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, updated_at=now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.wait_ms(1, now)
        if not wait:
            bucket.spend(1, now)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


_FINISHED_KEPT = 4096


class RunLimiter:
    """Runs each user has going. A run counts from its acceptance until its completion is
    seen, or until `max_age_s` passes (a completion the edge never saw must not leak).

    Calling rule: `check`, then `reserve` before sending the message upstream, then
    `release` once its reply came (after `start` on success), so messages in flight count
    too and a burst cannot slip past the limit."""

    def __init__(self, max_runs: int, *, max_age_s: float = 900.0, retry_after_ms: int = 1000):
        self._max_runs = max_runs
        self._max_age_s = max_age_s
        self._retry_after_ms = retry_after_ms
        self._runs: dict[str, dict[str, float]] = {}  # user -> run id -> started at
        self._owner: dict[str, str] = {}  # run id -> user
        self._reserved: dict[str, int] = {}  # user -> messages on their way upstream
        # Completions seen before the run was started here: a run that ends at once may
        # complete (in the same upstream batch) before its acceptance reply is handled.
        self._finished: OrderedDict[str, None] = OrderedDict()

    def check(self, user_id: str, now: float) -> int:
        """0 if the user may start another run, else the ms to wait."""
        runs = self._runs.get(user_id)
        for run_id, started in list((runs or {}).items()):
            if now - started > self._max_age_s:
                self.finish(run_id)
        going = len(self._runs.get(user_id, ())) + self._reserved.get(user_id, 0)
        return self._retry_after_ms if going >= self._max_runs else 0

    def reserve(self, user_id: str) -> None:
        """A message that passed `check` is on its way upstream."""
        self._reserved[user_id] = self._reserved.get(user_id, 0) + 1

    def release(self, user_id: str) -> None:
        """That message's reply came (call `start` first when it started a run)."""
        left = self._reserved.get(user_id, 0) - 1
        if left > 0:
            self._reserved[user_id] = left
        else:
            self._reserved.pop(user_id, None)

    def start(self, user_id: str, run_id: str, now: float) -> None:
        if not run_id or run_id in self._owner or run_id in self._finished:
            return
        self._runs.setdefault(user_id, {})[run_id] = now
        self._owner[run_id] = user_id

    def finish(self, run_id: str) -> None:
        user_id = self._owner.pop(run_id, None)
        if user_id is None:
            self._finished[run_id] = None
            if len(self._finished) > _FINISHED_KEPT:
                self._finished.popitem(last=False)
            return
        runs = self._runs.get(user_id, {})
        runs.pop(run_id, None)
        if not runs:
            self._runs.pop(user_id, None)

    def active(self, user_id: str) -> int:
        return len(self._runs.get(user_id, ()))


class AbuseCounter:
    """Strikes (rejected frames) within a sliding window; past the limit the socket is closed."""

    __slots__ = ("_max", "_times", "_window_s")

    def __init__(self, max_strikes: int, window_s: float) -> None:
        self._max = max_strikes
        self._window_s = window_s
        self._times: deque[float] | None = None  # made at the first strike: most sockets earn none

    def strike(self, now: float) -> bool:
        """Record one strike; True when the socket has now earned a 1008 close."""
        if self._times is None:
            self._times = deque()
        self._times.append(now)
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()
        return len(self._times) >= self._max
