"""The rate limiters on a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from parley.signaling.errors import RateLimited
from parley.signaling.limits import RateLimiter, TokenBucket, per_minute, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) > 0


def test_limiter_is_per_key_and_says_when_to_retry() -> None:
    clock = Clock()
    rate, burst = per_minute(2)
    limiter = RateLimiter("join attempts", rate=rate, burst=burst, clock=clock)
    limiter.check("10.0.0.1")
    limiter.check("10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        limiter.check("10.0.0.1")
    assert refused.value.code == "rate_limited" and refused.value.status == 429
    assert refused.value.retry_after == pytest.approx(30.0)
    assert retry_after_header(refused.value.retry_after) == "30"
    limiter.check("10.0.0.2")  # another address has its own budget
    clock.now += 30
    limiter.check("10.0.0.1")
    assert limiter.rejected == 1


def test_limiter_forgets_the_oldest_keys_instead_of_growing() -> None:
    limiter = RateLimiter("x", rate=1.0, burst=1.0, max_keys=100, clock=Clock())
    for i in range(10000):
        limiter.check(f"key-{i}")
    assert len(limiter) == 100


def test_zero_rate_means_unlimited() -> None:
    limiter = RateLimiter("x", rate=0.0, burst=1.0, clock=Clock())
    for _ in range(1000):
        limiter.check("k")
    assert TokenBucket(rate=0.0, burst=1.0).take(0.0) == 0.0
