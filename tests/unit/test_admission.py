"""relay_shared.admission: the backlog bound and the retry time, with a fake clock."""

from __future__ import annotations

import random

import pytest

from relay_shared.admission import MAX_RETRY_MS, MIN_RETRY_MS, Admission


class NoJitter(random.Random):
    def random(self) -> float:
        return 0.0


def test_past_the_bound_a_message_is_refused_with_a_retry_time_until_one_leaves() -> None:
    gate = Admission(2, rng=NoJitter())
    assert gate.try_enter(0.0) is None and gate.try_enter(0.0) is None
    wait_ms = gate.try_enter(0.0)
    assert wait_ms is not None and wait_ms >= MIN_RETRY_MS
    assert (gate.depth, gate.refused) == (2, 1)
    gate.leave(0.1)
    assert gate.try_enter(0.1) is None


def test_the_retry_time_is_the_backlogs_drain_time_at_the_recent_rate() -> None:
    gate = Admission(1000, rng=NoJitter())
    for _ in range(101):
        gate.try_enter(0.0)
    for i in range(101):  # 100 answers per second
        gate.leave(i / 100)
    for _ in range(299):
        gate.try_enter(1.0)
    assert gate.rate_per_s(1.0) == pytest.approx(100)
    assert gate.retry_after_ms(1.0) == 3000  # (299 + 1) at 100/s


def test_the_retry_time_is_bounded_and_spread() -> None:
    slow = Admission(10_000, rng=NoJitter())
    slow.try_enter(0.0), slow.try_enter(0.0)
    slow.leave(0.0), slow.leave(100.0)  # one answer in 100 s
    slow.try_enter(100.0)
    assert slow.retry_after_ms(100.0) == MAX_RETRY_MS // 2
    spread = {Admission(5, rng=random.Random(seed)).retry_after_ms(0.0) for seed in range(20)}
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
