"""``parley serve --redis-url redis://...``: several nodes as one service (issue 11).

Each node is a control process with its media workers (signaling/workers.py). Redis holds what
the nodes share for a moment (LiveKit's layout): each node's entry (id, public and internal URL,
media addresses, load), refreshed every :data:`REFRESH` seconds with a :data:`NODE_TTL` expiry,
so a node that stops refreshing is dead 5 s later; and the session → node map. The sessions
themselves are in the shared PostgreSQL store (``--database-url``).

- ``POST /api/v1/sessions`` on any node goes to the least-loaded live node (forwarded there over
  HTTP when it is another node, which then creates the session and maps it to itself).
- A request for a session (``/api/v1/sessions/{id}/...``) or a page's WebSocket reaches a node
  that does not hold the session: forwarded to the node the map names, when that node is live.
  When it is dead (no entry, or it refused the connection), the map is moved to this node by a
  compare-and-set and this node's least-loaded worker adopts the session from the store, as
  workers adopt a crashed worker's sessions.
- Redis unreachable: sessions this node holds go on (nothing on their path needs Redis); new
  sessions, and sessions held nowhere here, are refused with 503 ``cluster_unavailable``.
- SIGTERM: the node leaves the registry first (no new sessions), then tells its pages to
  reconnect; they rejoin through any node onto a live one.
- Rate limits per API key and per client address (sessions, joins, wrong keys) are taken from
  buckets in Redis (:class:`RedisBuckets`), so two nodes do not allow twice as much; each is
  counted once, where the request is served (a page's join on the node it reached, a session on
  the node that creates it). While Redis fails, each node's own buckets apply.

Nodes call each other with two headers: the calling node's id and a key derived from the join
token secret (which every node shares, or join URLs would not verify); a request with them is
served here, never forwarded again, and its ``X-Forwarded-For`` is the client's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import aiohttp
import redis.asyncio as aioredis
from aiohttp import WSCloseCode, web
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import messages
from .api import client_address
from .config import ServiceConfig
from .errors import SignalingError
from .keys import CONFIG, DRAINING, LIMITS
from .limits import SharedUnavailable
from .workers import (
    CONTROL,
    SESSION_PATH,
    Control,
    PageGate,
    _forward_headers,
    _relay,
    stream_back,
)
from .ws import GOING_AWAY_REASON

logger = logging.getLogger(__name__)

REFRESH = 2.0
"""Seconds between a node's refreshes of its registry entry."""
NODE_TTL = 5.0
"""Seconds after the last refresh when a node counts as dead."""
UNREACHABLE_FOR = NODE_TTL
"""Seconds a node that refused a forwarded request counts as dead here (its entry may live on
for up to :data:`NODE_TTL` after it died)."""
RELAY_HEARTBEAT = 5.0
"""Seconds between pings on a page's socket relayed to another node (no pong: the node is gone
and the page is told to rejoin)."""
REDIS_TIMEOUT = 1.0
"""Seconds one Redis command may take before the cluster counts as unavailable."""
SESSION_KEY_TTL = 24 * 3600
"""Seconds a session → node entry is kept at least (and twice the join URLs' lifetime)."""
PREFIX = "parley:"
EPOCH_KEY = PREFIX + "epoch"
"""Set once by the first node that finds it missing: a new value means the map was lost."""
NODE_HEADER = "X-Parley-Cluster-Node"
KEY_HEADER = "X-Parley-Cluster-Key"

# move the map from a dead owner (or no owner) to us; returns the owner after the call
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return ARGV[2]
end
return current
"""


# GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): KEYS[1] holds
# the theoretical arrival time in ms of Redis's own clock (the same for every node); ARGV: ms
# per token, burst in tokens. Returns 0 (taken) or the ms until a token is available.
_TAKE = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - burst * interval - now
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(tat + interval - now) + 1000)
return 0
"""
RATE_KEY_PREFIX = "parley:rate:"


class RedisBuckets:
    """The cluster's shared rate-limit buckets (signaling/limits.py's :class:`SharedBuckets`):
    one Redis key per limiter and key, named by an HMAC of the key under the cluster key, so
    neither the API key nor clients' addresses are stored in Redis."""

    def __init__(self, redis: aioredis.Redis, secret: str) -> None:
        self.redis = redis
        self.secret = secret.encode()
        self._take = redis.register_script(_TAKE)

    def key(self, name: str, key: str) -> str:
        digest = hmac.new(self.secret, f"{name}\0{key}".encode(), hashlib.sha256).hexdigest()
        return f"{RATE_KEY_PREFIX}{digest[:40]}"

    async def take(self, name: str, key: str, rate: float, burst: float) -> float:
        try:
            waited = await self._take(
                keys=[self.key(name, key)], args=[f"{1000.0 / rate:.3f}", f"{burst:.3f}"]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise SharedUnavailable(str(exc)) from exc
        return int(waited) / 1000.0


def relayed_by_peer(request: web.Request) -> bool:
    """Whether another node relays this request (its limits were applied there)."""
    cluster = request.app.get(CLUSTER)
    return cluster is not None and cluster.from_peer(request)


class ClusterUnavailable(SignalingError):
    status = 503
    code = "cluster_unavailable"

    def __init__(self, detail: str = "Redis is unreachable") -> None:
        super().__init__(
            f"the cluster registry is unavailable ({detail}): no new sessions until it is back; "
            "retry shortly"
        )


@dataclasses.dataclass(frozen=True)
class Node:
    """One node's registry entry."""

    id: str
    public_url: str
    internal_url: str
    """Where other nodes forward requests and WebSockets (HTTP on the node's port)."""
    media_addresses: tuple[str, ...]
    sessions: int = 0
    packets_per_second: float = 0.0
    draining: bool = False

    def load(self) -> tuple[float, int]:
        return (round(self.packets_per_second, -1), self.sessions)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["media_addresses"] = list(self.media_addresses)
        data["packets_per_second"] = round(self.packets_per_second, 1)
        return data

    @classmethod
    def parse(cls, raw: bytes | str) -> Node | None:
        try:
            data = json.loads(raw)
            return cls(
                id=str(data["id"]),
                public_url=str(data["public_url"]),
                internal_url=str(data["internal_url"]),
                media_addresses=tuple(str(a) for a in data["media_addresses"]),
                sessions=int(data["sessions"]),
                packets_per_second=float(data["packets_per_second"]),
                draining=bool(data["draining"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


def least_loaded(nodes: list[Node], placed: dict[str, int]) -> Node | None:
    """The node forwarding the fewest packets per second (to the nearest ten), then with the
    fewest sessions (counting those ``placed`` on it since its entry was read), then by id."""

    def load(node: Node) -> tuple[float, int, str]:
        rate, sessions = node.load()
        return (rate, sessions + placed.get(node.id, 0), node.id)

    return min(nodes, key=load, default=None)


def tls_name(node: Node) -> str | None:
    """The name a node's certificate is checked against when it is called over HTTPS on its
    address (the host of its public URL; None over plain HTTP)."""
    if not node.internal_url.startswith("https://"):
        return None
    return urlparse(node.public_url).hostname


def node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def session_key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def cluster_key(config: ServiceConfig) -> str:
    """What nodes present to each other (derived from the shared join token secret)."""
    return hmac.new(config.token_secret, b"parley cluster node", hashlib.sha256).hexdigest()


def internal_url(config: ServiceConfig) -> str:
    """This node's own address for other nodes: the listening host and port (a wildcard host
    is replaced by the first media address)."""
    host = config.host
    if host in ("", "0.0.0.0", "::"):
        host = config.media.addresses[0]
    if ":" in host:
        host = f"[{host}]"
    return f"{config.scheme}://{host}:{config.port}"


def default_node_id(config: ServiceConfig) -> str:
    return f"{socket.gethostname()}:{config.port}"


class Cluster:
    """This node's membership: its registry entry, the live nodes, the session map."""

    def __init__(
        self,
        config: ServiceConfig,
        load: Callable[[], tuple[int, float]],
        local_sessions: Callable[[], list[str]],
        node_id: str = "",
    ) -> None:
        self.config = config
        self.load = load
        """(open sessions, forwarded packets per second) of this node."""
        self.local_sessions = local_sessions
        """Sessions this node's workers hold (re-asserted in the map on each refresh)."""
        self.id = node_id or default_node_id(config)
        self.key = cluster_key(config)
        self.internal_url = internal_url(config)
        self.session_ttl = max(SESSION_KEY_TTL, 2 * config.token_ttl)
        self.redis = aioredis.Redis.from_url(
            config.redis_url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._claim = self.redis.register_script(_CLAIM)
        self.nodes: dict[str, Node] = {}
        """The live nodes at the last refresh (this one included)."""
        self.available = False
        self.epoch: bytes | None = None
        """The registry's epoch key (a new one: Redis lost its data, the map may be empty)."""
        self.registry_since = 0.0
        """Monotonic time this node first saw the current Redis server."""
        self.draining = False
        self.unreachable: dict[str, float] = {}
        """Node id -> monotonic time until which it counts as dead here."""
        self.placed_since_refresh: dict[str, int] = {}
        self.unmapped: set[str] = set()
        """Sessions held here whose map entry could not be written (Redis failed): mapped (SET
        NX) at the next refresh that reaches Redis."""
        self.relayed: dict[web.WebSocketResponse, str] = {}
        """Pages' sockets relayed to another node -> that node's id."""
        self.http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=3),
        )
        await self.refresh()
        if not self.available:
            logger.error("cluster: Redis is unreachable; this node takes no new sessions yet")
        self._task = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            try:
                await self.refresh()
            except Exception:  # never let the loop die: the node would drop out of the cluster
                logger.exception("cluster: refresh failed")

    def entry(self) -> Node:
        sessions, rate = self.load()
        return Node(
            id=self.id,
            public_url=self.config.base_url,
            internal_url=self.internal_url,
            media_addresses=tuple(self.config.media.addresses),
            sessions=sessions,
            packets_per_second=rate,
            draining=self.draining,
        )

    async def refresh(self) -> bool:
        """Write this node's entry, read the live nodes; False when Redis did not answer. On a
        Redis that lost its data (restarted empty, flushed: the epoch key is new) this node maps
        its sessions again, where the map has none."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(EPOCH_KEY, secrets.token_hex(8), nx=True)
                pipe.get(EPOCH_KEY)
                if not self.draining:  # a draining node has left (drain deleted its entry)
                    entry = self.entry()
                    pipe.set(
                        node_key(self.id), json.dumps(entry.to_json()), px=int(NODE_TTL * 1000)
                    )
                replies = await pipe.execute()
            epoch = replies[1]
            if epoch != self.epoch or self.unmapped:
                sessions = self.local_sessions() if epoch != self.epoch else []
                sessions = [*sessions, *self.unmapped]
                if sessions:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for session_id in sessions:
                            pipe.set(session_key(session_id), self.id, ex=self.session_ttl, nx=True)
                        await pipe.execute()
                self.unmapped.clear()
            await self._read_nodes()
        except (RedisError, OSError) as exc:
            if self.available:
                logger.error(
                    "cluster: Redis is unreachable (%s); no new sessions", type(exc).__name__
                )
            self.available = False
            return False
        if epoch != self.epoch:  # a Redis we have not seen (started, or emptied)
            self.epoch = epoch
            self.registry_since = time.monotonic()
        elif time.monotonic() - self.registry_since >= NODE_TTL:  # every live node is listed
            self._drop_relays_to_gone_nodes()
        if not self.available:
            logger.info("cluster: node %s registered; %d live nodes", self.id, len(self.nodes))
        self.available = True
        return True

    async def _read_nodes(self) -> None:
        keys = [k async for k in self.redis.scan_iter(match=node_key("*"), count=200)]
        values = await self.redis.mget(keys) if keys else []
        nodes = {}
        for raw in values:
            node = Node.parse(raw) if raw is not None else None
            if node is not None:
                nodes[node.id] = node
        self.nodes = nodes
        self.placed_since_refresh.clear()

    def _drop_relays_to_gone_nodes(self) -> None:
        """Pages relayed to a node whose entry expired (it died without closing its sockets:
        frozen, or its machine gone) are told to rejoin; the session then moves to a live node."""
        for ws, node_id in list(self.relayed.items()):
            if node_id not in self.nodes and not ws.closed:
                logger.warning("cluster: node %s left the registry; its pages rejoin", node_id)
                asyncio.ensure_future(
                    ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
                )

    async def drain(self) -> None:
        """SIGTERM: leave the registry (no new sessions here), then the pages are told to
        reconnect (by the control process) and rejoin through any node onto a live one."""
        self.draining = True
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(node_key(self.id))
            logger.info("cluster: node %s left the registry (draining)", self.id)
        for ws in list(self.relayed):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if not self.draining:
            await self.drain()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        if self.http is not None:
            await self.http.close()

    # --- liveness and placement

    def is_live(self, node_id: str) -> bool:
        if node_id == self.id:
            return not self.draining
        until = self.unreachable.get(node_id)
        if until is not None:
            if time.monotonic() < until:
                return False
            del self.unreachable[node_id]
        node = self.nodes.get(node_id)
        return node is not None and not node.draining

    def mark_unreachable(self, node_id: str) -> None:
        if node_id != self.id:
            logger.warning("cluster: node %s does not answer; counting it dead here", node_id)
            self.unreachable[node_id] = time.monotonic() + UNREACHABLE_FOR

    async def place(self) -> Node:
        """The least-loaded live node (fewest packets per second, then fewest sessions), read
        from Redis now; :class:`ClusterUnavailable` when Redis does not answer."""
        if not await self.refresh():
            raise ClusterUnavailable()
        candidates = [n for n in self.nodes.values() if n.id != self.id and self.is_live(n.id)]
        if not self.draining:
            candidates.append(self.entry())
        chosen = least_loaded(candidates, self.placed_since_refresh)
        if chosen is None:
            raise ClusterUnavailable("no live node takes sessions")
        self.placed_since_refresh[chosen.id] = self.placed_since_refresh.get(chosen.id, 0) + 1
        return chosen

    async def _registered_now(self, node_id: str) -> bool:
        """Whether ``node_id`` has a live entry in Redis now (our list is up to 2 s old)."""
        try:
            raw = await self.redis.get(node_key(node_id))
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable() from exc
        node = Node.parse(raw) if raw is not None else None
        if node is None or node.draining:
            return False
        self.nodes[node.id] = node
        return True

    async def mapped(self, session_id: str) -> None:
        """A session created here (when Redis fails now, it is mapped at the next refresh)."""
        try:
            await self.redis.set(session_key(session_id), self.id, ex=self.session_ttl)
        except (RedisError, OSError):
            self.unmapped.add(session_id)

    async def route(self, session_id: str, held_here: bool) -> Node | None:
        """The live node that holds ``session_id`` when it is another one; None: serve it here
        (this node holds it, or it was moved here from a dead node, or nobody maps it)."""
        try:
            owner = await self.redis.get(session_key(session_id))
        except (RedisError, OSError) as exc:
            if held_here:
                return None  # Redis is down: the sessions here go on
            raise ClusterUnavailable() from exc
        if owner is None:
            if time.monotonic() - self.registry_since < NODE_TTL:
                # a new (or restarted, empty) Redis: the nodes holding sessions map them again
                # at their next refresh; until then an unmapped session may be held elsewhere
                raise ClusterUnavailable("the registry is being rebuilt after a Redis restart")
            if held_here:
                self.unmapped.add(session_id)  # mapped again at the next refresh
                return None
            owner_id = ""  # unknown: claimed here (and adopted from the store) unless raced
        else:
            owner_id = owner.decode() if isinstance(owner, bytes) else str(owner)
            if owner_id == self.id:
                return None
            if self.is_live(owner_id):
                return self.nodes[owner_id]
            if owner_id not in self.unreachable and await self._registered_now(owner_id):
                return self.nodes[owner_id]  # it registered since our last refresh
        try:
            now_owner = await self._claim(
                keys=[session_key(session_id)], args=[owner_id, self.id, self.session_ttl]
            )
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable() from exc
        now_owner = now_owner.decode() if isinstance(now_owner, bytes) else str(now_owner)
        if now_owner == self.id:
            if owner_id:
                logger.info("[%s] session moved here from node %s (not live)", session_id, owner_id)
            return None
        if self.is_live(now_owner) or await self._registered_now(now_owner):
            return self.nodes[now_owner]  # another node took it first
        raise ClusterUnavailable("the session is moving between nodes")

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.id,
            "available": self.available,
            "draining": self.draining,
            "nodes": [
                n.to_json()
                for n in sorted(self.nodes.values(), key=lambda n: n.id)
                if self.is_live(n.id)
            ],
        }

    def peer_headers(self) -> dict[str, str]:
        return {NODE_HEADER: self.id, KEY_HEADER: self.key}

    def from_peer(self, request: web.Request) -> bool:
        given = request.headers.get(KEY_HEADER, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.key.encode())


CLUSTER = web.AppKey("cluster", Cluster)


# --- HTTP ------------------------------------------------------------------------------------


async def forward_http(request: web.Request, cluster: Cluster, node: Node) -> web.StreamResponse:
    """``request`` as it came, to ``node``; raises ConnectionError when the node is gone."""
    assert cluster.http is not None
    headers = _forward_headers(request) | cluster.peer_headers()
    body = await request.read()
    try:
        upstream = await cluster.http.request(
            request.method,
            f"{node.internal_url}{request.path_qs}",
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=30, sock_connect=3),
            server_hostname=tls_name(node),
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        cluster.mark_unreachable(node.id)
        raise ConnectionError(str(exc)) from exc
    if upstream.status == 503:  # draining, or no media worker there: the session moves here
        upstream.release()
        cluster.mark_unreachable(node.id)
        raise ConnectionError(f"node {node.id} answered 503")
    if request.method == "POST" and upstream.status == 201:  # a session or an invite
        try:
            data = await upstream.json()
        finally:
            upstream.release()
        return web.json_response(
            entry_join_urls(data, node, cluster.config.base_url), status=upstream.status
        )
    try:
        return await stream_back(request, upstream)
    finally:
        upstream.release()


def entry_join_urls(data: Any, node: Node, base_url: str) -> Any:
    """The join URLs another node made (``agent_url``, ``customer_url``, an invite's ``url``)
    turned into this node's: the page then comes to the node the API client used, which relays
    its WebSocket to the session's node, and moves the session when that node dies."""
    if not isinstance(data, dict):
        return data
    theirs = node.public_url.rstrip("/") + "/join/"
    ours = base_url.rstrip("/") + "/join/"
    for key in ("agent_url", "customer_url", "url"):
        value = data.get(key)
        if isinstance(value, str) and value.startswith(theirs):
            data[key] = ours + value[len(theirs) :]
    return data


def _has_api_key(request: web.Request) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    expected = request.app[CONFIG].api_key.encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), expected)


def _is_create(request: web.Request) -> bool:
    return request.method == "POST" and request.path.rstrip("/") == "/api/v1/sessions"


@web.middleware
async def cluster_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    cluster = request.app[CLUSTER]
    control = request.app[CONTROL]
    if cluster.from_peer(request):
        # another node sent it: serve it here, with the client's address it passed on
        forwarded = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
        if forwarded:
            request = request.clone(remote=forwarded[:64])
        if _is_create(request):
            return await _created_here(request, handler, cluster)
        return await handler(request)
    if request.path == "/healthz":
        return await _healthz(request, handler, cluster)
    if _is_create(request):
        for _ in range(2):  # a second choice when the first node does not answer
            node = await cluster.place()
            if node.id == cluster.id:
                return await _created_here(request, handler, cluster)
            with contextlib.suppress(ConnectionError):
                return await forward_http(request, cluster, node)
        raise ClusterUnavailable("the chosen nodes did not answer")
    match = SESSION_PATH.match(request.path)
    if match and _has_api_key(request):  # without it, refused here (nothing is written to Redis)
        session_id = match.group(1)
        for _ in range(2):
            owner = await cluster.route(session_id, session_id in control.placement)
            if owner is None:
                break
            with contextlib.suppress(ConnectionError):
                return await forward_http(request, cluster, owner)
    return await handler(request)


async def _created_here(request: web.Request, handler: Any, cluster: Cluster) -> web.StreamResponse:
    if cluster.draining:
        from .errors import ShuttingDown

        raise ShuttingDown("this node is draining; retry (another node takes the session)")
    if not cluster.available and not await cluster.refresh():
        raise ClusterUnavailable()
    response = await handler(request)
    if response.status == 201 and isinstance(response, web.Response):
        body = response.body
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if isinstance(body, bytes):
                await cluster.mapped(json.loads(body)["session_id"])
    return response


async def _healthz(request: web.Request, handler: Any, cluster: Cluster) -> web.StreamResponse:
    response = await handler(request)
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        data = json.loads(response.body)
        data["cluster"] = cluster.to_json()
        if not cluster.available:
            data["status"] = "degraded"
        return web.json_response(data, status=response.status)
    return response


# --- WebSocket -------------------------------------------------------------------------------


async def relay_to_owner(
    request: web.Request,
    ws: web.WebSocketResponse,
    first: aiohttp.WSMessage,
    session_id: str,
    gate: PageGate,
) -> bool:
    """Called by the control process's WebSocket handler with the page's first message: True
    when the session is on another live node and the socket was relayed there (and is closed
    now); False: serve it here."""
    cluster = request.app[CLUSTER]
    control = request.app[CONTROL]
    if cluster.from_peer(request):
        return False
    for _ in range(2):
        try:
            node = await cluster.route(session_id, session_id in control.placement)
        except ClusterUnavailable as exc:
            await ws.send_json(messages.error_message(exc.code, exc.message))
            await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
            return True
        if node is None:
            return False
        if await _relay_to_node(request, ws, first, cluster, node, gate):
            return True
    return False


async def _relay_to_node(
    request: web.Request,
    ws: web.WebSocketResponse,
    first: aiohttp.WSMessage,
    cluster: Cluster,
    node: Node,
    gate: PageGate,
) -> bool:
    assert cluster.http is not None
    url = node.internal_url.replace("http", "ws", 1) + "/api/v1/ws"
    try:
        upstream = await cluster.http.ws_connect(
            url,
            headers={
                "X-Forwarded-For": client_address(request),
                "User-Agent": request.headers.get("User-Agent", ""),
                **cluster.peer_headers(),
            },
            max_msg_size=messages.MAX_MESSAGE_BYTES,
            heartbeat=RELAY_HEARTBEAT,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            server_hostname=tls_name(node),
        )
    except (aiohttp.ClientError, OSError, TimeoutError):
        cluster.mark_unreachable(node.id)
        return False
    cluster.relayed[ws] = node.id
    reason = b""
    try:
        await upstream.send_str(first.data)
        reason = await _relay(ws, upstream, gate)
    finally:
        cluster.relayed.pop(ws, None)
        if not upstream.closed:
            await upstream.close()
        if not ws.closed:
            if upstream.close_code in (None, WSCloseCode.ABNORMAL_CLOSURE):
                # the node went away: the page rejoins (onto a live node)
                cluster.mark_unreachable(node.id)
                await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
            else:
                await ws.close(code=upstream.close_code or 1000, message=reason)
    return True


# --- wiring ----------------------------------------------------------------------------------


def join_cluster(app: web.Application) -> None:
    """Make the control process's application a cluster member (before it starts)."""
    app.middlewares.append(cluster_middleware)
    app.cleanup_ctx.append(_cluster_context)


class ClusterCollector:
    """The registry as this node sees it, for ``/metrics``."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "parley_cluster_registry_up", "1 while this node reaches the Redis registry"
        )
        up.add_metric([], 1 if self.cluster.available else 0)
        live = GaugeMetricFamily(
            "parley_cluster_live_nodes", "Live nodes in the registry (this one included)"
        )
        live.add_metric([], len(self.cluster.to_json()["nodes"]))
        yield from (up, live)


async def _cluster_context(app: web.Application) -> AsyncIterator[None]:
    from .metrics import REGISTRY

    control = app[CONTROL]
    cluster = Cluster(
        app[CONFIG],
        load=lambda: _load(control),
        local_sessions=lambda: list(control.placement),
    )
    app[CLUSTER] = cluster
    app[LIMITS].share(RedisBuckets(cluster.redis, cluster.key))
    app[REGISTRY].register(ClusterCollector(cluster))
    await cluster.start()
    try:
        yield
    finally:
        await cluster.close()


def _load(control: Control) -> tuple[int, float]:
    live = [w for w in control.workers if w.alive]
    return (
        sum(w.sessions + w.placed_since_poll for w in live),
        sum(w.packets_per_second for w in live),
    )


async def drain(app: web.Application) -> None:
    cluster = app.get(CLUSTER)
    if cluster is not None:
        await cluster.drain()
        app[DRAINING].set()
