"""The cluster registry and session map (signaling/cluster.py) on a real ``redis-server``, with
``Cluster`` objects as nodes (no parley processes): entries expire 5 s after the last refresh;
placement takes the least-loaded live node; a session of a dead node moves to exactly one of the
nodes that ask for it at once; Redis down keeps the sessions held here and refuses the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from parley.relay.config import MediaConfig
from parley.signaling.cluster import (
    NODE_TTL,
    Cluster,
    ClusterUnavailable,
    Node,
    entry_join_urls,
    internal_url,
    least_loaded,
    tls_name,
)
from parley.signaling.config import ServiceConfig, StoreSettings
from tests.media_client import wait_for
from tests.signaling.cluster_support import RedisServer


def node_config(redis_url: str, port: int, address: str = "127.0.0.1") -> ServiceConfig:
    return ServiceConfig(
        api_key="k",
        token_secret=b"t" * 32,
        host=address,
        port=port,
        media=MediaConfig(addresses=(address,)),
        redis_url=redis_url,
        store=StoreSettings(database_url="postgresql://parley@127.0.0.1/unused"),
    )


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def make_node(redis: RedisServer) -> AsyncIterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(name: str, port: int, sessions: int = 0, rate: float = 0.0) -> Cluster:
        node = Cluster(
            node_config(redis.url, port),
            load=lambda: (sessions, rate),
            local_sessions=lambda: [],
            node_id=name,
        )
        made.append(node)
        return node

    yield make
    for node in made:
        await node.close()


def test_entries_parse_and_placement_prefers_packets_then_sessions() -> None:
    a = Node("a", "https://a.example", "http://10.0.0.1:8080", ("10.0.0.1",), 5, 900.0)
    b = Node("b", "https://b.example", "http://10.0.0.2:8080", ("10.0.0.2",), 9, 300.0)
    c = Node("c", "https://c.example", "https://10.0.0.3:443", ("10.0.0.3",), 2, 301.0)
    assert Node.parse(json.dumps(a.to_json())) == a
    assert Node.parse(b"{") is None and Node.parse('{"id": "x"}') is None
    assert least_loaded([a, b, c], {}) is c  # 300 and 301 round alike; c has fewer sessions
    assert least_loaded([a, b, c], {"c": 8}) is b  # placed since the entry was read count too
    assert least_loaded([], {}) is None
    assert tls_name(a) is None and tls_name(c) == "c.example"
    wildcard = dataclasses.replace(node_config("redis://r", 8443, "10.0.0.5"), host="0.0.0.0")
    assert internal_url(wildcard) == "http://10.0.0.5:8443"  # the media address, for peers


def test_join_urls_made_on_another_node_name_the_node_that_was_asked() -> None:
    b = Node("b", "http://127.0.0.3:8080", "http://127.0.0.3:8080", ("127.0.0.3",))
    made = {
        "session_id": "s_1",
        "agent_url": "http://127.0.0.3:8080/join/tok.en.a",
        "customer_url": "http://127.0.0.3:8080/join/tok.en.c",
        "expires_at": 1,
    }
    out = entry_join_urls(dict(made), b, "https://call.example.com/")
    assert out["agent_url"] == "https://call.example.com/join/tok.en.a"
    assert out["customer_url"] == "https://call.example.com/join/tok.en.c"
    assert out["session_id"] == "s_1" and out["expires_at"] == 1
    assert entry_join_urls({"url": "http://elsewhere/join/x"}, b, "http://a") == {
        "url": "http://elsewhere/join/x"
    }
    assert entry_join_urls([1], b, "http://a") == [1]


def test_a_cluster_needs_the_shared_store_and_a_redis_url() -> None:
    with pytest.raises(ValueError, match="--database-url"):
        ServiceConfig(api_key="k", token_secret=b"t" * 32, redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="redis://"):
        node_config("http://127.0.0.1:6379", 8080)


async def test_nodes_see_each_other_and_a_silent_node_is_dead_after_5_s(
    make_node: Callable[..., Cluster],
) -> None:
    n1 = make_node("n1", 8001, sessions=0)
    n2 = make_node("n2", 8002, sessions=3)
    await n1.start()
    await n2.start()
    await n1.refresh()
    assert sorted(n1.nodes) == ["n1", "n2"] and n1.nodes["n2"].sessions == 3
    assert (await n2.place()).id == "n1"  # fewer sessions
    assert n2.to_json()["node_id"] == "n2" and len(n2.to_json()["nodes"]) == 2

    await n1.mapped("s_1")
    owner = await n2.route("s_1", held_here=False)
    assert owner is not None and owner.id == "n1"
    assert await n1.route("s_1", held_here=True) is None  # its own

    assert n1._task is not None
    n1._task.cancel()  # n1 stops refreshing (a dead machine)
    stopped = time.monotonic()
    assert await wait_for(lambda: "n1" not in n2.nodes, timeout=NODE_TTL + 2 * 2.0 + 1)
    assert time.monotonic() - stopped >= NODE_TTL - 2.0 - 0.5  # not before its entry expired
    assert await n2.route("s_1", held_here=False) is None  # moved to n2
    assert await n2.redis.get("parley:session:s_1") == b"n2"


async def test_a_dead_nodes_session_moves_to_exactly_one_asking_node(
    make_node: Callable[..., Cluster],
) -> None:
    nodes = [make_node(f"n{i}", 8100 + i) for i in range(4)]
    for node in nodes:
        await node.start()
    dead, *askers = nodes
    await dead.mapped("s_2")
    assert dead._task is not None
    dead._task.cancel()
    await dead.redis.delete("parley:node:n0")  # its entry expired
    for node in askers:
        node.nodes.pop("n0", None)
    owners = await asyncio.gather(*(n.route("s_2", held_here=False) for n in askers))
    served_here = [n.id for n, owner in zip(askers, owners, strict=True) if owner is None]
    assert len(served_here) == 1, owners
    assert {o.id for o in owners if o is not None} == set(served_here)


async def test_redis_down_keeps_held_sessions_and_refuses_new_ones(
    redis: RedisServer, make_node: Callable[..., Cluster]
) -> None:
    node = make_node("n1", 8201)
    await node.start()
    await node.mapped("s_3")
    redis.stop()
    assert await node.route("s_3", held_here=True) is None  # served here, as before
    with pytest.raises(ClusterUnavailable) as refused:
        await node.route("s_3", held_here=False)
    assert refused.value.status == 503 and refused.value.code == "cluster_unavailable"
    with pytest.raises(ClusterUnavailable):
        await node.place()
    assert not node.available
    redis.start()  # empty, a new run id: unmapped sessions wait while the nodes re-map theirs
    assert (await node.place()).id == "n1"
    with pytest.raises(ClusterUnavailable, match="rebuilt"):
        await node.route("s_unmapped", held_here=False)


async def test_a_session_created_while_redis_fails_is_mapped_at_the_next_refresh(
    redis: RedisServer, make_node: Callable[..., Cluster]
) -> None:
    node = make_node("n1", 8301)
    await node.start()
    redis.stop()
    await node.mapped("s_4")  # the session exists here; the map entry waits
    assert node.unmapped == {"s_4"}
    redis.start()
    assert await node.refresh()
    assert await node.redis.get("parley:session:s_4") == b"n1" and not node.unmapped
    other = make_node("n2", 8302)
    await other.start()
    owner = await other.route("s_4", held_here=False)
    assert owner is not None and owner.id == "n1"


def test_a_standalone_node_never_imports_redis() -> None:
    code = (
        "import sys; import parley.signaling.cli, parley.signaling.app, parley.signaling.workers; "
        "print(sorted(m for m in sys.modules if m == 'redis' or m.endswith('.cluster')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
