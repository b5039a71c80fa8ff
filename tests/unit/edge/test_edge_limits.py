"""Token buckets, the run limit and abuse strikes, on an injected clock."""

import random

from ws_edge.backoff import backoff_s
from ws_edge.limits import AbuseCounter, FrameBudget, FrameLimiter, RunLimiter, TokenBucket, admit


def test_a_bucket_admits_its_burst_then_says_how_long_to_wait():
    bucket = TokenBucket(rate_per_s=10, burst=3)
    for _ in range(3):
        assert bucket.wait_ms(1, now=0.0) == 0
        bucket.spend(1, now=0.0)
    assert bucket.wait_ms(1, now=0.0) == 100
    assert bucket.wait_ms(1, now=0.05) == 50
    assert bucket.wait_ms(1, now=0.1) == 0


def test_a_bucket_never_holds_more_than_its_burst():
    bucket = TokenBucket(rate_per_s=10, burst=2)
    bucket.spend(2, now=0.0)
    assert bucket.wait_ms(2, now=100.0) == 0
    bucket.spend(2, now=100.0)
    assert bucket.wait_ms(1, now=100.0) == 100


def budget(frames=2.0, frame_burst=2.0, bytes_=100.0, bytes_burst=100.0) -> FrameBudget:
    return FrameBudget(frames, frame_burst, bytes_, bytes_burst)


def test_frames_and_bytes_are_both_limited():
    limiter = FrameLimiter(budget(), now=0.0)
    assert admit([limiter], 90, now=0.0) == 0
    assert admit([limiter], 20, now=0.0) == 100  # bytes: 10 missing at 100 B/s
    assert admit([limiter], 10, now=0.0) == 0
    assert admit([limiter], 1, now=0.0) == 500  # frames: 2 per s


def test_admit_spends_from_no_limiter_when_any_refuses():
    connection = FrameLimiter(budget(frames=100, frame_burst=100), now=0.0)
    user = FrameLimiter(budget(frames=1, frame_burst=1), now=0.0)
    assert admit([connection, user], 1, now=0.0) == 0
    for _ in range(5):
        assert admit([connection, user], 1, now=0.0) > 0
    other_connection_of_user = FrameLimiter(budget(frames=100, frame_burst=100), now=0.0)
    assert admit([other_connection_of_user, user], 1, now=0.0) == 1000
    assert connection.wait_ms(1, now=0.0) == 0  # still 99 frames left


def test_a_limiter_refills_to_its_burst_and_no_further():
    limiter = FrameLimiter(budget(frames=10, frame_burst=2), now=0.0)
    assert admit([limiter], 1, now=0.0) == admit([limiter], 1, now=0.0) == 0
    assert admit([limiter], 1, now=0.0) == 100
    assert admit([limiter], 1, now=0.1) == 0  # one frame back after 100 ms
    assert admit([limiter], 1, now=50.0) == admit([limiter], 1, now=50.0) == 0
    assert admit([limiter], 1, now=50.0) == 100  # a long pause refilled only the burst


def test_a_limiter_is_full_again_once_both_buckets_refilled():
    """Full, it may be let go (an idle socket holds none): a new one must then decide alike."""
    limiter = FrameLimiter(budget(frames=10, frame_burst=2, bytes_=100, bytes_burst=100), 0.0)
    assert limiter.full(0.0)
    assert admit([limiter], 50, now=0.0) == 0
    assert not limiter.full(0.1)  # the frame is back, 40 of the 50 bytes are not
    assert not limiter.full(0.49)
    assert limiter.full(0.5)
    fresh = FrameLimiter(budget(frames=10, frame_burst=2, bytes_=100, bytes_burst=100), 0.5)
    for size in (60, 30, 20, 1):
        assert admit([limiter], size, now=0.5) == admit([fresh], size, now=0.5)


def test_a_limiter_decides_as_a_pair_of_token_buckets():
    """The limiter keeps its two buckets as numbers; it must answer as two TokenBuckets."""
    rng = random.Random(15)
    for _ in range(50):
        b = budget(
            frames=rng.choice([0.0, 1.0, 5.0]),
            frame_burst=rng.choice([1.0, 3.0]),
            bytes_=rng.choice([10.0, 1000.0]),
            bytes_burst=rng.choice([50.0, 500.0]),
        )
        limiter = FrameLimiter(b, now=0.0)
        frames = TokenBucket(b.frames_per_s, b.frames_burst, updated_at=0.0)
        bytes_ = TokenBucket(b.bytes_per_s, b.bytes_burst, updated_at=0.0)
        now = 0.0
        for _ in range(40):
            now += rng.choice([0.0, 0.01, 0.3, 2.0, -0.5])  # a clock may step back
            size = rng.choice([1, 20, 400, 900])
            expected = max(frames.wait_ms(1, now), bytes_.wait_ms(size, now))
            assert admit([limiter], size, now) == expected
            if not expected:
                frames.spend(1, now)
                bytes_.spend(size, now)


def test_runs_per_user_are_counted_until_their_completion():
    runs = RunLimiter(max_runs=2, retry_after_ms=700)
    runs.start("u", "r1", now=0.0)
    runs.start("u", "r2", now=0.0)
    runs.start("u", "r2", now=0.0)  # the same run twice (a retried message) counts once
    assert runs.check("u", now=1.0) == 700
    assert runs.check("v", now=1.0) == 0
    runs.finish("r1")
    assert runs.check("u", now=1.0) == 0


def test_a_run_whose_completion_was_never_seen_stops_counting_after_max_age():
    runs = RunLimiter(max_runs=1, max_age_s=60.0)
    runs.start("u", "r1", now=0.0)
    assert runs.check("u", now=59.0) > 0
    assert runs.check("u", now=61.0) == 0
    assert runs.active("u") == 0


def test_abuse_closes_only_after_enough_strikes_within_the_window():
    abuse = AbuseCounter(max_strikes=3, window_s=10.0)
    assert not abuse.strike(0.0)
    assert not abuse.strike(1.0)
    assert not abuse.strike(12.0)  # the first two have aged out
    assert not abuse.strike(13.0)
    assert abuse.strike(14.0)


def test_backoff_grows_with_full_jitter_up_to_the_cap():
    rng = random.Random(7)
    delays = [backoff_s(n, base_s=0.1, max_s=2.0, rng=rng) for n in range(12)]
    assert all(0.0 <= d <= min(2.0, 0.1 * 2**n) for n, d in enumerate(delays))
    assert max(delays[6:]) > 0.2  # later attempts may wait far longer than the first


def test_messages_on_their_way_upstream_count_against_the_run_limit():
    runs = RunLimiter(max_runs=2)
    assert runs.check("u", now=0.0) == 0
    runs.reserve("u")
    assert runs.check("u", now=0.0) == 0
    runs.reserve("u")
    assert runs.check("u", now=0.0) > 0  # two in flight: a third must wait
    runs.start("u", "r1", now=0.0)
    runs.release("u")
    runs.release("u")  # the second was refused upstream: no run
    assert runs.active("u") == 1 and runs.check("u", now=0.0) == 0


def test_a_run_seen_completing_before_its_acceptance_was_handled_never_counts():
    runs = RunLimiter(max_runs=1)
    runs.finish("r_fast")  # its completion came in the same upstream batch as the reply
    runs.start("u", "r_fast", now=0.0)
    assert runs.active("u") == 0 and runs.check("u", now=0.0) == 0


def test_address_buckets_limit_each_address_on_its_own():
    from ws_edge.limits import AddressBuckets

    buckets = AddressBuckets(rate_per_s=1, burst=2)
    assert [buckets.take("10.0.0.1", now=0.0) for _ in range(3)] == [0, 0, 1000]
    assert buckets.take("10.0.0.2", now=0.0) == 0  # another address has its own burst
    assert buckets.take("10.0.0.1", now=0.5) == 500
    assert buckets.take("10.0.0.1", now=1.0) == 0


def test_address_buckets_keep_only_the_most_recent_addresses():
    from ws_edge.limits import AddressBuckets

    buckets = AddressBuckets(rate_per_s=0, burst=1, max_keys=3)
    for i in range(10):
        buckets.take(f"a{i}", now=0.0)
    assert len(buckets) == 3
    assert buckets.take("a9", now=0.0) > 0  # remembered: still spent
