"""Two ``parley serve --redis-url`` nodes (HTTP and media on 127.0.0.2 and 127.0.0.3), a real
``redis-server`` and a real PostgreSQL: a session created on node A is placed on node B, its two
aiortc participants join through A's URL and talk across; ``kill -9`` of node B mid-call brings
both back on A with media within 10 s. Redis stopped: the call goes on, new sessions are refused
with ``cluster_unavailable``, and taken again once Redis is back."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.media_client import wait_for
from tests.signaling.cluster_support import (
    Cluster,
    call_on,
    create,
    in_call,
    running_cluster,
    video_frames,
    wait_until,
)
from tests.signaling.postgres_server import postgres_server, postgres_url  # noqa: F401


async def session_owner(cluster: Cluster, session_id: str) -> str:
    """The node the session map in Redis names for ``session_id``."""
    client = aioredis.Redis.from_url(cluster.redis.url)
    try:
        value = await client.get(f"parley:session:{session_id}")
        return value.decode() if value else ""
    finally:
        await client.aclose()


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> AsyncIterator[Cluster]:
    """Two nodes of one media worker each (or ``request.param`` workers: the control process
    of each node then places within the node too)."""
    workers = str(getattr(request, "param", 1))
    async with running_cluster(tmp_path, postgres_url, "--workers", workers) as nodes:
        yield nodes


@pytest.mark.parametrize("cluster", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
async def test_a_session_placed_on_b_survives_kill_9_of_b(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    async with aiohttp.ClientSession() as http, call_on(http, a, b) as (session, a1, a2):
        sid = session["session_id"]

        # the control process polls its workers' counts every 0.5 s: a quick call can be up
        # before the first poll after the session was placed
        async def on_b() -> dict[str, Any] | None:
            health = await b.health(http)
            return health if sum(w["sessions"] for w in health["workers"]) >= 1 else None

        health_b = await wait_until(on_b, 3)
        assert health_b is not None
        assert health_b["cluster"]["node_id"] != (await a.health(http))["cluster"]["node_id"]
        async with http.get(f"{b.base_url}/api/v1/sessions/{sid}", headers=b.auth()) as r:
            assert r.status == 200 and (await r.json())["state"] == "active"
        async with http.get(f"{a.base_url}/api/v1/sessions/{sid}", headers=a.auth()) as r:
            assert r.status == 200 and (await r.json())["state"] == "active"  # forwarded

        b.kill_all([w["pid"] for w in health_b["workers"]])
        killed_at = time.monotonic()
        assert await wait_for(lambda: a1.joins >= 2 and a2.joins >= 2, timeout=10), (
            a.output.decode()[-3000:]
        )
        assert await wait_for(lambda: in_call(a1, a2, frames=5), timeout=15)
        back = time.monotonic() - killed_at
        assert back < 10.0, f"media back after {back:.1f} s"

        # the session is on node A now (its workers' counts are polled every 0.5 s), and node
        # B drops out of the registry (5 s expiry)
        async def on_a() -> bool:
            return sum(w["sessions"] for w in (await a.health(http))["workers"]) >= 1

        assert await wait_until(on_a, 5)

        async def b_gone() -> bool:
            return len((await a.health(http))["cluster"]["nodes"]) == 1

        assert await wait_until(b_gone, 8)
        async with http.get(f"{a.base_url}/metrics") as r:
            text = await r.text()
        assert "parley_cluster_live_nodes 1.0" in text
        assert "parley_cluster_registry_up 1.0" in text
        async with http.get(f"{a.base_url}/api/v1/sessions/{sid}", headers=a.auth()) as r:
            assert r.status == 200 and (await r.json())["state"] == "active"


async def test_a_frozen_node_is_left_when_it_stops_answering(cluster: Cluster) -> None:
    """SIGSTOP: its sockets stay open and say nothing; the relay's pings go unanswered and its
    registry entry expires (5 s), so the pages rejoin and the session moves to A."""
    a, b = cluster.a, cluster.b
    frozen: list[int] = []
    async with aiohttp.ClientSession() as http, call_on(http, a, b) as (session, a1, a2):
        try:
            frozen = [w["pid"] for w in (await b.health(http))["workers"]]
            b.kill_all(frozen, signal.SIGSTOP)
            stopped_at = time.monotonic()
            assert await wait_for(lambda: a1.joins >= 2 and a2.joins >= 2, timeout=15)
            assert await wait_for(lambda: in_call(a1, a2, frames=5), timeout=15)
            back = time.monotonic() - stopped_at
            # detection takes the relay's ping (5 s, 2.5 s for the pong) or the entry's expiry
            assert back < 15.0, f"media back after {back:.1f} s"
            owner = await session_owner(cluster, session["session_id"])
            assert owner == (await a.health(http))["cluster"]["node_id"]
        finally:
            if frozen:
                b.kill_all(frozen)  # a stopped process does not act on SIGINT


async def test_redis_down_keeps_the_call_and_refuses_new_sessions_until_it_is_back(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    async with aiohttp.ClientSession() as http, call_on(http, a, b) as (session, a1, a2):
        cluster.redis.stop()
        before = video_frames(a1, a2)
        for node in (a, b):
            async with await create(http, node, "chat-no-redis") as response:
                assert response.status == 503, await response.text()
                body = await response.json()
                assert body["error"]["code"] == "cluster_unavailable"
                assert "Redis" in body["error"]["message"]
        assert await wait_for(lambda: video_frames(a1, a2) >= before + 30, timeout=20)
        assert a1.joins == 1 and a2.joins == 1  # the call never noticed
        health = await a.health(http)
        assert health["status"] == "degraded" and not health["cluster"]["available"]
        async with http.get(f"{a.base_url}/metrics") as r:
            assert "parley_cluster_registry_up 0.0" in await r.text()

        cluster.redis.start()  # empty: the nodes register again, their sessions are re-mapped

        async def created() -> bool:
            async with await create(http, a, "chat-redis-back") as response:
                return response.status == 201

        assert await wait_until(created, 10)
        assert await wait_for(lambda: video_frames(a1, a2) >= before + 60, timeout=20)
        # the session map came back from the node holding it: A forwards to B again
        sid = session["session_id"]

        async def forwarded_to_b() -> bool:
            async with http.get(f"{a.base_url}/api/v1/sessions/{sid}", headers=a.auth()) as r:
                if r.status == 503:  # the registry is being rebuilt (a few seconds)
                    assert (await r.json())["error"]["code"] == "cluster_unavailable"
                    return False
                assert r.status == 200, await r.text()
                state = (await r.json())["state"]
                assert state == "active", state  # never adopted on A meanwhile
                return True

        assert await wait_until(forwarded_to_b, 10)
        assert a1.joins == 1 and a2.joins == 1
