"""Rate limits: token buckets keyed by API key, client address or connection (issue 12).

Pure and clock-injected: a bucket is refilled from the time it is given, so tests need no
sleeps. The keyed table is bounded (the least recently used keys are forgotten first), so a
flood of distinct addresses cannot grow memory without limit.

Several nodes (``--redis-url``, signaling/cluster.py) share the limits that are per API key or
per client address through :class:`SharedBuckets` (Redis there), so N nodes do not allow N
times as much; :meth:`RateLimiter.acquire` falls back to this node's own bucket while the shared
one cannot be reached. What is per connection (messages per socket) or per node by nature
(unjoined sockets, which cost this node's descriptors) stays local.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import RateLimited


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float) -> float:
        """Take one token; 0.0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class SharedUnavailable(Exception):
    """The shared buckets could not be reached or did not answer in time."""


class SharedBuckets(Protocol):
    """Token buckets that several processes share (signaling/cluster.py: Redis)."""

    async def take(self, name: str, key: str, rate: float, burst: float) -> float:
        """Take one token from bucket ``key`` of limiter ``name``; 0.0 when allowed, else
        the seconds until one is available. Raises :class:`SharedUnavailable`."""
        ...


class RateLimiter:
    """One :class:`TokenBucket` per key. ``rate`` 0 turns the limit off. With ``shared``
    set (several nodes), :meth:`acquire` takes from the shared bucket instead."""

    def __init__(
        self,
        what: str,
        *,
        rate: float,
        burst: float,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self.clock = clock
        self.rejected = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.shared: SharedBuckets | None = None
        """Set by the cluster: the buckets all nodes take from."""
        self.shared_failures = 0
        """Attempts counted by this node's own bucket because the shared ones failed."""

    def check(self, key: str) -> None:
        """Count one attempt for ``key`` in this process's bucket; raise
        :class:`RateLimited` when over the limit."""
        if self.rate <= 0:
            return
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst)
            while len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
        self._buckets[key] = bucket
        self._verdict(bucket.take(self.clock()))

    async def acquire(self, key: str) -> None:
        """:meth:`check`, against the shared buckets when there are (this process's own while
        they fail: a limit is never off because Redis is)."""
        if self.rate <= 0:
            return
        if self.shared is None:
            return self.check(key)
        try:
            wait = await self.shared.take(self.what, key, self.rate, self.burst)
        except SharedUnavailable:
            self.shared_failures += 1
            return self.check(key)
        self._verdict(wait)

    def _verdict(self, wait: float) -> None:
        if wait > 0:
            self.rejected += 1
            raise RateLimited(
                f"too many {self.what}; retry in {math.ceil(wait)} s", retry_after=wait
            )

    def __len__(self) -> int:
        return len(self._buckets)


def per_minute(count: float) -> tuple[float, float]:
    """``(rate per second, burst)`` for a limit of ``count`` per minute."""
    return count / 60.0, max(1.0, count)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


UNJOINED_SOCKETS_PER_ADDRESS = 20
"""WebSockets one client address may hold open before they join (each costs a descriptor);
off with the join limit (``joins_per_minute`` 0)."""
AUTH_FAILURES_PER_MINUTE = 30
"""Requests with a wrong API key allowed per client address per minute (then 429)."""


class Limits:
    """The service's rate limiters, built once from the config."""

    def __init__(
        self,
        *,
        sessions_per_minute: float,
        joins_per_minute: float,
        messages_per_second: float,
        auth_failures_per_minute: float = AUTH_FAILURES_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        rate, burst = per_minute(sessions_per_minute)
        self.sessions = RateLimiter("session creations", rate=rate, burst=burst, clock=clock)
        rate, burst = per_minute(joins_per_minute)
        self.joins = RateLimiter("join attempts", rate=rate, burst=burst, clock=clock)
        rate, burst = per_minute(auth_failures_per_minute)
        self.auth_failures = RateLimiter(
            "requests with a wrong API key", rate=rate, burst=burst, clock=clock
        )
        self.messages_per_second = messages_per_second
        self.messages_rejected = 0
        self.unjoined: Counter[str] = Counter()
        """Open WebSockets that have not joined yet, by client address."""
        self.unjoined_rejected = 0
        self.clock = clock

    def share(self, buckets: SharedBuckets) -> None:
        """Take the per-key and per-address limits from ``buckets`` (all nodes' own)."""
        for limiter in (self.sessions, self.joins, self.auth_failures):
            limiter.shared = buckets

    @classmethod
    def unlimited(cls) -> Limits:
        """Every limit off: a media worker's, as its control process applies them for the whole
        machine (signaling/workers.py) and N workers must not allow N times as much."""
        return cls(
            sessions_per_minute=0,
            joins_per_minute=0,
            messages_per_second=0,
            auth_failures_per_minute=0,
        )

    def open_unjoined(self, address: str) -> None:
        """Count a new socket from ``address``; refuse it when too many have not joined."""
        if self.joins.rate > 0 and self.unjoined[address] >= UNJOINED_SOCKETS_PER_ADDRESS:
            self.unjoined_rejected += 1
            raise RateLimited(
                f"more than {UNJOINED_SOCKETS_PER_ADDRESS} sockets from this address have not "
                "joined",
                retry_after=1.0,
            )
        self.unjoined[address] += 1

    def joined_or_closed(self, address: str) -> None:
        self.unjoined[address] -= 1
        if self.unjoined[address] <= 0:
            del self.unjoined[address]

    def message_bucket(self) -> TokenBucket:
        """A fresh per-connection bucket: ``messages_per_second``, 5 seconds' burst."""
        rate = self.messages_per_second
        return TokenBucket(rate, max(1.0, rate * 5))
