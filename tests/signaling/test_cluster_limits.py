"""Rate limits hold for a cluster, not per node (issue 12 with issue 11's ``--redis-url``): the
limits per API key and per client address are buckets in Redis that every node takes from
(signaling/cluster.py ``RedisBuckets``), each attempt counted once; while Redis fails, each node
limits on its own. Real redis-server, and for the nodes a real PostgreSQL store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from parley.signaling.cluster import RATE_KEY_PREFIX, RedisBuckets
from parley.signaling.errors import RateLimited
from parley.signaling.limits import RateLimiter, SharedUnavailable
from tests.signaling.cluster_support import (
    RedisServer,
    create,
    create_on,
    running_cluster,
)
from tests.signaling.postgres_server import create_database, postgres_server  # noqa: F401
from tests.signaling.ws_client import WsParticipant


@pytest.fixture
async def redis_url(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, str]]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server, server.url
    finally:
        server.stop()


def _client(url: str) -> aioredis.Redis:
    # as the cluster's own client: one short try per command
    return aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


async def test_two_nodes_buckets_are_one_and_name_no_key(
    redis_url: tuple[RedisServer, str],
) -> None:
    _server, url = redis_url
    a, b = _client(url), _client(url)
    try:
        node_a, node_b = RedisBuckets(a, "cluster-secret"), RedisBuckets(b, "cluster-secret")
        waits = []
        for i in range(6):  # 3 at once, then none for 20 s (3 a minute)
            bucket = node_a if i % 2 == 0 else node_b
            waits.append(await bucket.take("session creations", "pk_the_api_key", 3 / 60, 3))
        assert waits[:3] == [0.0, 0.0, 0.0], waits
        assert all(0 < w <= 20.0 for w in waits[3:]), waits
        # another key has its own bucket
        assert await node_b.take("session creations", "pk_other", 3 / 60, 3) == 0.0
        # what Redis holds names neither the API key nor the limiter in the clear
        keys = [k.decode() async for k in a.scan_iter(match="*")]
        assert keys and all(k.startswith(RATE_KEY_PREFIX) for k in keys), keys
        assert not any("pk_" in k or "session" in k for k in keys), keys
        # every key expires (a bucket that is full again needs no key)
        ttls = [await a.pttl(k) for k in keys]
        assert all(0 < t <= 62_000 for t in ttls), ttls
        # a node with another secret (another cluster on the same Redis) has other buckets
        stranger = RedisBuckets(b, "another-secret")
        assert await stranger.take("session creations", "pk_the_api_key", 3 / 60, 3) == 0.0
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_node_whose_redis_fails_limits_on_its_own(
    redis_url: tuple[RedisServer, str],
) -> None:
    server, url = redis_url
    client = _client(url)
    limiter = RateLimiter("join attempts", rate=2 / 60, burst=2)
    limiter.shared = RedisBuckets(client, "cluster-secret")
    try:
        for _ in range(2):
            await limiter.acquire("127.0.0.9")
        with pytest.raises(RateLimited):
            await limiter.acquire("127.0.0.9")
        assert limiter.shared_failures == 0
        server.stop()
        with pytest.raises(SharedUnavailable):
            await limiter.shared.take("join attempts", "127.0.0.9", 2 / 60, 2)
        # this node's own bucket: 2 more, then refused (never unlimited because Redis is gone)
        for _ in range(2):
            await limiter.acquire("127.0.0.9")
        with pytest.raises(RateLimited):
            await limiter.acquire("127.0.0.9")
        assert limiter.shared_failures == 3
    finally:
        await client.aclose()


async def test_session_creation_is_limited_for_the_cluster(
    tmp_path: Path,
    postgres_server: str,  # noqa: F811
) -> None:
    """4 a minute per API key: 4 sessions through the two nodes together, then 429 on both
    (per-node buckets let 8 through)."""
    async with running_cluster(
        tmp_path, create_database(postgres_server), "--sessions-per-minute", "4"
    ) as cluster:
        async with aiohttp.ClientSession() as http:
            statuses: list[int] = []
            retry_after: list[str] = []
            for i in range(8):
                node = cluster.a if i % 2 == 0 else cluster.b
                async with await create(http, node, f"chat-{i}") as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        retry_after.append(response.headers.get("Retry-After", ""))
                        assert (await response.json())["error"]["code"] == "rate_limited"
            assert statuses == [201] * 4 + [429] * 4, statuses
            assert all(1 <= int(r) <= 60 for r in retry_after), retry_after


async def _join(base_url: str, join_url: str) -> dict[str, Any]:
    page = WsParticipant(base_url, join_url, "Ann")
    try:
        return await page.join(media=False)
    finally:
        await page.close()


async def test_join_attempts_are_limited_for_the_cluster_and_counted_once(
    tmp_path: Path,
    postgres_server: str,  # noqa: F811
) -> None:
    """3 join attempts a minute per client address, wherever they land: a join through node A
    for a session on node B is counted once (by A), then bad tokens through either node use
    the rest, and the next attempt is refused on both."""
    async with running_cluster(
        tmp_path, create_database(postgres_server), "--joins-per-minute", "3"
    ) as cluster:
        async with aiohttp.ClientSession() as http:
            session = await create_on(http, cluster.a, cluster.b)
            welcome = await _join(cluster.a.base_url, session["agent_url"])
            assert welcome["type"] == "welcome", welcome  # relayed to B: A counted it, B not
            bad = cluster.a.base_url + "/join/not-a-token"
            results = [
                await _join(cluster.b.base_url, bad),
                await _join(cluster.a.base_url, bad),
            ]
            assert [r.get("code") for r in results] == ["invalid_token"] * 2, results
            refused = [
                await _join(cluster.b.base_url, bad),
                await _join(cluster.a.base_url, session["customer_url"]),
            ]
            assert [r.get("code") for r in refused] == ["rate_limited"] * 2, refused
            assert all(r["retry_after"] > 0 for r in refused), refused
