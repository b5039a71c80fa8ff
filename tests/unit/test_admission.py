"""relay_shared.admission: the backlog bound and the retry time, with a fake clock."""

from __future__ import annotations

import random

import pytest

from relay_shared.admission import DEFAULT_RATE_PER_S, MAX_RETRY_MS, MIN_RETRY_MS, Admission


class NoJitter(random.Random):
    def random(self) -> float:
        return 0.0


def answered(gate: Admission, count: int, start_s: float, per_s: float) -> float:
    """`count` messages admitted at start_s and answered at per_s; returns the end time."""
    for _ in range(count):
        assert gate.try_enter(start_s) is None
    now = start_s
    for _ in range(count):
        now += 1 / per_s
        gate.leave(now)
    return now


def test_past_the_bound_a_message_is_refused_with_a_retry_time_until_one_leaves() -> None:
    gate = Admission(2, rng=NoJitter())
    assert gate.try_enter(0.0) is None and gate.try_enter(0.0) is None
    wait_ms = gate.try_enter(0.0)
    assert wait_ms is not None and wait_ms >= MIN_RETRY_MS
    assert (gate.depth, gate.refused) == (2, 1)
    gate.leave(0.1)
    assert gate.try_enter(0.1) is None


def test_the_rate_is_measured_over_busy_time_only() -> None:
    gate = Admission(10_000, rng=NoJitter())
    assert gate.rate_per_s() == DEFAULT_RATE_PER_S  # nothing measured yet
    end = answered(gate, 100, 0.0, 100.0)
    assert gate.rate_per_s() == pytest.approx(100)
    answered(gate, 100, end + 3600.0, 100.0)  # an idle hour between: still 100 a second
    assert gate.rate_per_s() == pytest.approx(100)


def test_a_message_that_the_backlog_would_hold_past_its_deadline_is_refused_at_once() -> None:
    gate = Admission(10_000, rng=NoJitter())
    now = answered(gate, 100, 0.0, 100.0)  # 100 a second
    for _ in range(299):
        assert gate.try_enter(now, deadline_in_s=5.0) is None
    assert gate.try_enter(now, deadline_in_s=2.0) == 3000  # 300 ahead of it: 3 s to drain
    assert gate.try_enter(now, deadline_in_s=None) is None  # no deadline: only the bound
    assert gate.try_enter(now, deadline_in_s=-0.1) is not None  # passed already


def test_the_retry_time_is_bounded_and_spread() -> None:
    slow = Admission(10_000, rng=NoJitter())
    answered(slow, 70, 0.0, 0.01)  # one answer per 100 s
    assert slow.retry_after_ms() == MAX_RETRY_MS // 2
    spread = {Admission(5, rng=random.Random(seed)).retry_after_ms() for seed in range(20)}
    assert len(spread) > 10 and all(MIN_RETRY_MS <= w < 2 * MIN_RETRY_MS for w in spread)


def test_a_deadline_is_expired_from_its_millisecond_on_and_zero_is_none() -> None:
    gate = Admission(1)
    assert not gate.expired(0, 10**13)
    assert not gate.expired(1000, 999) and gate.expired(1000, 1000)


def test_leave_without_enter_is_a_bug_said_at_once() -> None:
    with pytest.raises(RuntimeError):
        Admission(1).leave(0.0)
    with pytest.raises(ValueError):
        Admission(0)
