"""``parley serve --workers N``: a control process and N media worker processes (issue 11).

The control process keeps the public HTTP port, the WebSocket endpoint and the embedded TURN
server. Each media worker is the ordinary aiohttp application (``create_app``) on a Unix socket
in a private folder and owns whole sessions: their routers, aiortc peer connections and UDP
sockets (aioice binds its own ports, so media needs no routing between processes).

- HTTP: ``/api/v1/sessions/{id}/...`` goes to the worker of that session; ``POST
  /api/v1/sessions`` to the least-loaded worker (fewest forwarded packets per second, then
  fewest sessions); everything else (pages, reports, conversations) to any live worker, as
  those read the shared store.
- WebSocket: the control process accepts the page's socket, reads its ``join`` message, finds
  the session in the token and relays frames both ways to a WebSocket on that session's worker.
- A session not held by a live worker (after a crash, or a restart) is *adopted* by the
  least-loaded worker from the store at its next request or join (LiveKit's "re-placed at the
  next join"). A worker that exits is noticed at once (its process is awaited), its relayed
  pages are told to reconnect (close 1001, as on SIGTERM), and a replacement is started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import pickle
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from parley.turn.server import TurnServer

from . import messages, tokens
from .api import client_address, error_middleware
from .config import ServiceConfig
from .errors import RateLimited, ShuttingDown, SignalingError
from .keys import CONFIG, DRAINING, ICE_SERVERS, LIMITS, RELAYED_TRANSPORTS, SESSIONS
from .limits import Limits
from .ws import GOING_AWAY_REASON, HEARTBEAT

logger = logging.getLogger(__name__)

STATUS_INTERVAL = 0.5
"""Seconds between the control process's load polls of each worker."""
READY_TIMEOUT = 60.0
"""Seconds a starting worker may take to answer on its socket."""
RESTART_DELAY = 0.2
"""Seconds before a crashed worker is replaced (a worker that dies at once is retried slower)."""
INTERNAL = "/internal/worker"
"""Routes only the workers' Unix sockets serve; the control process refuses them."""
SESSION_PATH = re.compile(r"^/api/v1/sessions/([^/]+)")
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


# --- the worker process -----------------------------------------------------------------------


def worker_routes() -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.post(INTERNAL + "/status")
    async def status(request: web.Request) -> web.Response:
        """The load; the control process sends its TURN allocations (for the reports)."""
        with contextlib.suppress(ValueError, TypeError, KeyError):
            body = await request.json()
            table = {
                (str(host), int(port)): str(transport) for host, port, transport in body["turn"]
            }
            relayed = request.app[RELAYED_TRANSPORTS]  # one dict, updated in place
            relayed.clear()
            relayed.update(table)
        manager = request.app[SESSIONS]
        forwarded = 0
        open_sessions = 0
        for session in manager.sessions.values():
            if session.ended_at is None:
                open_sessions += 1
            for peer in session.router.peers.values():
                for consumer in peer.subscribe.consumers.values():
                    forwarded += consumer.packets
        times = os.times()
        return web.json_response(
            {
                "pid": os.getpid(),
                "sessions": open_sessions,
                "forwarded_packets": forwarded,
                "cpu_seconds": times.user + times.system,
            }
        )

    @routes.post(INTERNAL + "/adopt/{session_id}")
    async def adopt(request: web.Request) -> web.Response:
        """Take a session from the store (it is on no live worker): found or not."""
        from . import recordings
        from .store_journal import JOURNAL, STORE

        session_id = request.match_info["session_id"]
        manager = request.app[SESSIONS]
        if session_id in manager.sessions:
            return web.json_response({"found": True})
        row = await request.app[STORE].get_session(session_id)
        if row is None:
            return web.json_response({"found": False})
        session = await request.app[JOURNAL].restore_one(manager, row, manager.clock())
        service = request.app[recordings.RECORDINGS]
        session.on_end.append(service.session_ended)
        # recordings the crashed worker left in this session's folder
        service._spawn(service.recover(only={session_id}))
        logger.info("[%s] session adopted from the store", session_id)
        return web.json_response({"found": True})

    return routes


async def run_worker(config: ServiceConfig, socket_path: str) -> None:
    """One media worker: the application on ``socket_path`` until SIGTERM (or the control
    process goes away: its stdin pipe closes)."""
    from .app import create_app, settle_heap, shutdown

    app = create_app(config)
    app.middlewares.append(forwarded_scheme)
    app[RELAYED_TRANSPORTS] = {}
    app.add_routes(worker_routes())
    # no access log: the control process logs each request once (with join tokens redacted)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, socket_path).start()
    settle_heap()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.ensure_future(_parent_gone(stop))
    try:
        await stop.wait()
        force_exit = loop.call_later(config.shutdown_timeout + 1.5, os._exit, 1)
        await shutdown(app)
        force_exit.cancel()
    finally:
        watch.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.cleanup(), config.shutdown_timeout)


async def _parent_gone(stop: asyncio.Event) -> None:
    """Stop when the control process dies (our stdin, its pipe, reaches end of file)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(Exception):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()
    stop.set()


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m parley.signaling.workers --socket PATH``: the config comes pickled on
    stdin (one line of hex, so that no secret is on the command line)."""
    parser = argparse.ArgumentParser(prog="parley-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    from .cli import _logging, _run

    _logging(args.log_level, f"worker{args.index} ")
    config = pickle.loads(bytes.fromhex(sys.stdin.readline().strip()))
    assert isinstance(config, ServiceConfig)

    _run(run_worker(config, args.socket))
    return 0


# --- the control process ----------------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """One media worker as the control process sees it."""

    index: int
    socket_path: str
    proc: asyncio.subprocess.Process | None = None
    http: aiohttp.ClientSession | None = None
    alive: bool = False
    restarts: int = 0
    sessions: int = 0
    placed_since_poll: int = 0
    packets_per_second: float = 0.0
    cpu_percent: float = 0.0
    forwarded_packets: int = 0
    last_poll: tuple[float, int, float] | None = None
    relayed: set[web.WebSocketResponse] = dataclasses.field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def load(self) -> tuple[float, int]:
        return (round(self.packets_per_second, -1), self.sessions + self.placed_since_poll)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "alive": self.alive,
            "sessions": self.sessions,
            "packets_per_second": round(self.packets_per_second, 1),
            "cpu_percent": round(self.cpu_percent, 1),
            "restarts": self.restarts,
        }


class NoWorker(SignalingError):
    status = 503

    def __init__(self) -> None:
        super().__init__("no media worker is running; retry shortly", code="unavailable")


class Control:
    """Starts, watches and replaces the workers; places sessions; relays signaling."""

    def __init__(self, config: ServiceConfig, worker_config: ServiceConfig) -> None:
        self.config = config
        self.worker_config = worker_config
        self.folder = tempfile.mkdtemp(prefix="parley-workers-")  # 0700
        self.workers = [
            Worker(i, os.path.join(self.folder, f"worker-{i}.sock")) for i in range(config.workers)
        ]
        self.placement: dict[str, Worker] = {}
        self.turn_server: TurnServer | None = None
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._adopting: dict[str, asyncio.Future[Worker | None]] = {}

    # --- lifecycle

    async def start(self) -> None:
        from .store import Store
        from .store_journal import store_url

        # the schema once, before the workers open the store together (SQLite has no lock
        # for a concurrent first migration)
        store = await Store.open(store_url(self.config.store))
        await store.close()
        await asyncio.gather(*(self._start(w, first=True) for w in self.workers))
        self._spawn(self._poll())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, worker: Worker, first: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.socket_path)
        config = dataclasses.replace(
            self.worker_config, recover_recordings=first and worker.index == 0
        )
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley.signaling.workers",
            "--socket",
            worker.socket_path,
            "--index",
            str(worker.index),
            "--log-level",
            str(level),
            stdin=asyncio.subprocess.PIPE,
        )
        assert worker.proc.stdin is not None
        worker.proc.stdin.write(pickle.dumps(config).hex().encode() + b"\n")
        await worker.proc.stdin.drain()  # the pipe stays open: its end tells the worker we died
        if worker.http is None or worker.http.closed:
            worker.http = aiohttp.ClientSession(
                # no pool limit: every relayed page holds one WebSocket to its worker
                connector=aiohttp.UnixConnector(path=worker.socket_path, limit=0),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while loop.time() < deadline and worker.proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with worker.http.post(f"http://worker{INTERNAL}/status", json={}) as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.05)
        else:
            logger.error("media worker %d did not start", worker.index)
        worker.alive = worker.proc.returncode is None
        worker.sessions = worker.placed_since_poll = 0
        worker.last_poll = None
        worker.packets_per_second = worker.cpu_percent = 0.0
        logger.info("media worker %d running (pid %d)", worker.index, worker.pid)
        self._spawn(self._watch(worker, worker.proc))

    async def _watch(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        """Notice the worker's exit at once; tell its pages to reconnect; replace it."""
        started = time.monotonic()
        code = await proc.wait()
        if worker.proc is not proc:
            return
        worker.alive = False
        lost = [sid for sid, w in self.placement.items() if w is worker]
        for sid in lost:
            del self.placement[sid]
        if self.stopping:
            return
        logger.error(
            "media worker %d (pid %d) exited with %s; %d sessions to re-place, restarting it",
            worker.index,
            proc.pid,
            code,
            len(lost),
        )
        for ws in list(worker.relayed):
            self._spawn(ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON))
        worker.restarts += 1
        await asyncio.sleep(RESTART_DELAY if time.monotonic() - started > 5 else 2.0)
        if not self.stopping:
            await self._start(worker)

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        pages = sum(len(w.relayed) for w in self.workers)
        logger.info("shutting down: telling %d connected pages to reconnect", pages)
        for worker in self.workers:
            for ws in list(worker.relayed):
                self._spawn(ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON))
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)
        wait = self.config.shutdown_timeout + 2.0
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), wait)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            if worker.http is not None:
                await worker.http.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.folder):
                os.unlink(os.path.join(self.folder, name))
            os.rmdir(self.folder)

    async def _poll(self) -> None:
        while True:
            turn = self.relayed_transports()
            await asyncio.gather(*(self._poll_one(w, turn) for w in self.workers if w.alive))
            await asyncio.sleep(STATUS_INTERVAL)

    def relayed_transports(self) -> list[tuple[str, int, str]]:
        """Each allocation's relayed and advertised address with the client's transport."""
        server = self.turn_server
        if server is None:
            return []
        out = []
        for allocation in server.handler.allocations:
            transport = allocation.five_tuple.transport
            for host, port in {allocation.relay[:2], allocation.advertised[:2]}:
                out.append((str(host), int(port), transport))
        return out

    async def _poll_one(self, worker: Worker, turn: list[tuple[str, int, str]]) -> None:
        assert worker.http is not None
        try:
            async with worker.http.post(
                f"http://worker{INTERNAL}/status",
                json={"turn": turn},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as r:
                status = await r.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return
        now = time.monotonic()
        if worker.last_poll is not None:
            then, packets, cpu = worker.last_poll
            elapsed = max(now - then, 1e-3)
            worker.packets_per_second = max(0, status["forwarded_packets"] - packets) / elapsed
            worker.cpu_percent = 100.0 * max(0.0, status["cpu_seconds"] - cpu) / elapsed
        worker.last_poll = (now, status["forwarded_packets"], status["cpu_seconds"])
        worker.forwarded_packets = status["forwarded_packets"]
        worker.sessions = status["sessions"]
        worker.placed_since_poll = 0

    # --- placement

    def least_loaded(self) -> Worker:
        live = [w for w in self.workers if w.alive]
        if not live:
            raise NoWorker()
        return min(live, key=lambda w: (*w.load(), w.index))

    async def worker_of(self, session_id: str) -> Worker | None:
        """The live worker holding ``session_id``; adopted by the least-loaded worker from the
        store when no live worker holds it (None: the store does not know it)."""
        worker = self.placement.get(session_id)
        if worker is not None and worker.alive:
            return worker
        pending = self._adopting.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Worker | None] = asyncio.get_running_loop().create_future()
        self._adopting[session_id] = future
        try:
            target = self.least_loaded()
            assert target.http is not None
            async with target.http.post(
                f"http://worker{INTERNAL}/adopt/{session_id}",
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                found = r.status == 200 and (await r.json()).get("found")
            result = target if found else None
            if result is not None:
                self.placed(session_id, result)
            future.set_result(result)
            return result
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it from shield
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._adopting[session_id]

    def placed(self, session_id: str, worker: Worker) -> None:
        if self.placement.get(session_id) is not worker:
            self.placement[session_id] = worker
            worker.placed_since_poll += 1


CONTROL = web.AppKey("control", Control)


def _forward_headers(request: web.Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    for name in ("X-Forwarded-For", "X-Forwarded-Proto"):
        headers.pop(name, None)
    headers["X-Forwarded-For"] = client_address(request)  # the workers trust the control
    headers["X-Forwarded-Proto"] = request.scheme
    if request.host:
        headers["Host"] = request.host  # URLs the worker builds from the request
    return headers


@web.middleware
async def forwarded_scheme(request: web.Request, handler: Any) -> web.StreamResponse:
    """In a worker: the scheme the control process was reached with (HTTPS there, not here)."""
    proto = request.headers.get("X-Forwarded-Proto")
    if proto in ("http", "https") and proto != request.scheme:
        request = request.clone(scheme=proto)
    return await handler(request)


async def _check_api_limits(request: web.Request) -> bool:
    """The HTTP API's rate limits, here for the whole machine (the workers apply none): session
    creation per API key (before forwarding, as api.create_session checks it before reading the
    body). True when the request carries a wrong API key (the worker's 401 then costs the
    client's address a token, as in api._authorize)."""
    config = request.app[CONFIG]
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return False
    if not hmac.compare_digest(key.strip().encode(), config.api_key.encode()):
        return True
    if (
        request.method == "POST"
        and request.path == "/api/v1/sessions"
        and not request.app[DRAINING].is_set()
    ):
        await request.app[LIMITS].sessions.acquire(config.api_key)
    return False


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    path = request.path
    if path.startswith(INTERNAL) or path == "/metrics":
        # the workers' routes stay inside; /metrics is the control's own (only on
        # --metrics-listen when that is set)
        raise web.HTTPNotFound()
    worker: Worker | None = None
    match = SESSION_PATH.match(path)
    if match:
        try:
            worker = await control.worker_of(match.group(1))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NoWorker() from exc
    if worker is None:
        worker = control.least_loaded()
    wrong_key = await _check_api_limits(request)
    body = await request.read()
    assert worker.http is not None
    try:
        upstream = await worker.http.request(
            request.method,
            f"http://worker{request.path_qs}",
            headers=_forward_headers(request),
            data=body if body else None,
            allow_redirects=False,
        )
    except (aiohttp.ClientError, OSError) as exc:
        logger.warning("media worker %d did not answer: %s", worker.index, exc)
        raise NoWorker() from exc
    try:
        if wrong_key and upstream.status == 401:
            # as api._authorize: a wrong key costs the address a token (429 once none is left)
            await request.app[LIMITS].auth_failures.acquire(client_address(request))
        if (
            request.method == "POST"
            and path.rstrip("/") == "/api/v1/sessions"
            and upstream.status == 201
        ):
            data = await upstream.read()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                control.placed(json.loads(data)["session_id"], worker)
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(body=data, status=upstream.status, headers=headers)
        return await stream_back(request, upstream)
    finally:
        upstream.release()


async def stream_back(
    request: web.Request, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    """Answer ``request`` with what a worker (or another node) answered, streamed as it comes."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for key, value in upstream.headers.items():
        if key.lower() not in HOP_BY_HOP:
            response.headers.add(key, value)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:  # the client hung up mid-answer: nobody is left to tell
        pass
    return response


def _session_of_join(config: ServiceConfig, data: str) -> str | None:
    """The session id a first message's join token names (None: not a valid join; the worker
    that gets it answers with the same error a single process would)."""
    try:
        message = messages.parse(data)
        if isinstance(message, messages.Join):
            return tokens.verify(config.token_secret, message.token, now=time.time()).session_id
    except (SignalingError, ValueError):
        pass
    return None


class PageGate:
    """The limits ws.py applies to a page's socket in one process, applied here for the whole
    machine (the workers apply none): the socket counts as unjoined for its address until its
    worker welcomes it; every message takes a token from the connection's bucket; until the
    welcome, a ``join`` takes one from the address's join bucket. A refused message is answered
    here and never reaches the worker."""

    def __init__(self, limits: Limits, address: str, ws: web.WebSocketResponse) -> None:
        self.limits = limits
        self.address = address
        self.ws = ws
        self.bucket = limits.message_bucket()
        self.throttled_until = 0.0
        self.joined = False
        self.unjoined = True
        self.count_joins = True
        """False for a socket another node relays: it counted the join already."""

    def release(self) -> None:
        """No longer an unjoined socket of its address (welcomed, or closed)."""
        if self.unjoined:
            self.unjoined = False
            self.limits.joined_or_closed(self.address)

    async def admit(self, msg: aiohttp.WSMessage) -> bool:
        """Whether ``msg`` goes on to the worker (else it was answered here)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = self.bucket.take(now)
        if wait > 0:
            self.limits.messages_rejected += 1
            if now >= self.throttled_until:  # answered at most once a second, as in ws.py
                self.throttled_until = now + 1.0
                await self._send(
                    messages.error_message(
                        "rate_limited", f"too many messages; retry in {wait:.1f} s"
                    )
                    | {"retry_after": round(wait, 1)}
                )
            return False
        if (
            self.count_joins
            and not self.joined
            and msg.type == WSMsgType.TEXT
            and _type_of(msg.data) == "join"
        ):
            try:
                await self.limits.joins.acquire(self.address)
            except RateLimited as exc:
                await self._send(
                    messages.error_message(exc.code, exc.message)
                    | {"retry_after": round(exc.retry_after, 1)}
                )
                return False
        return True

    def from_worker(self, data: str) -> None:
        """Watch the worker's messages until it welcomes the page."""
        if not self.joined and _type_of(data) == "welcome":
            self.joined = True
            self.release()

    async def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_json(message)


def _type_of(data: str) -> str:
    """The ``type`` of a JSON message ("" when it is not one; the worker answers those)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return ""
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else ""


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """Accept the page's socket, wait for its first message, relay to its session's worker."""
    app = request.app
    if app[DRAINING].is_set():
        raise ShuttingDown("the server is shutting down; reconnect shortly")
    limits = app[LIMITS]
    address = client_address(request)
    limits.open_unjoined(address)  # 429 when this address holds too many unjoined sockets
    try:
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT, max_msg_size=messages.MAX_MESSAGE_BYTES, timeout=2.0
        )
        await ws.prepare(request)
    except BaseException:
        limits.joined_or_closed(address)
        raise
    gate = PageGate(limits, address, ws)
    if request.app[CONFIG].redis_url:
        from .cluster import relayed_by_peer

        # the node the page reached counted its join (in the buckets all nodes share)
        gate.count_joins = not relayed_by_peer(request)
    try:
        return await _serve_page(request, ws, gate)
    finally:
        gate.release()


async def _serve_page(
    request: web.Request, ws: web.WebSocketResponse, gate: PageGate
) -> web.WebSocketResponse:
    control = request.app[CONTROL]
    config = request.app[CONFIG]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.join_timeout
    while True:  # the first message the limits let through picks the worker
        try:
            first = await ws.receive(timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no join message in time")
            return ws
        if first.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return ws
        if await gate.admit(first):
            break
    session_id = _session_of_join(config, first.data) if first.type == WSMsgType.TEXT else None
    if config.redis_url and session_id is not None:  # several nodes: it may be on another one
        from .cluster import relay_to_owner

        if await relay_to_owner(request, ws, first, session_id, gate):
            return ws
    worker: Worker | None = None
    try:
        if session_id is not None:
            worker = await control.worker_of(session_id)
        if worker is None:
            worker = control.least_loaded()
    except SignalingError as exc:
        await ws.send_json(messages.error_message(exc.code, exc.message))
        await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
        return ws
    except (aiohttp.ClientError, OSError, TimeoutError):  # the worker died while adopting
        await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
        return ws
    assert worker.http is not None
    try:
        upstream = await worker.http.ws_connect(
            "http://worker/api/v1/ws",
            headers={
                "X-Forwarded-For": gate.address,
                "User-Agent": request.headers.get("User-Agent", ""),
            },
            max_msg_size=messages.MAX_MESSAGE_BYTES,
            heartbeat=None,
        )
    except (aiohttp.ClientError, OSError):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
        return ws
    worker.relayed.add(ws)
    reason = b""
    try:
        if first.type == WSMsgType.TEXT:
            await upstream.send_str(first.data)
        else:
            await upstream.send_bytes(first.data)
        reason = await _relay(ws, upstream, gate)
    finally:
        worker.relayed.discard(ws)
        if not upstream.closed:
            await upstream.close()
        if not ws.closed:
            if not worker.alive or upstream.close_code in (None, WSCloseCode.ABNORMAL_CLOSURE):
                # the worker went away: the page rejoins (onto a live worker)
                await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
            else:
                await ws.close(code=upstream.close_code or 1000, message=reason)
    return ws


async def _relay(
    ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, gate: PageGate
) -> bytes:
    """Frames both ways until either side closes; the worker's close reason."""
    close_reason: list[bytes] = []

    async def page_to_worker() -> None:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY) or not await gate.admit(msg):
                continue
            try:
                if msg.type == WSMsgType.TEXT:
                    await upstream.send_str(msg.data)
                else:
                    await upstream.send_bytes(msg.data)
            except ConnectionError:
                # the other side is closing (a session that just ended: 4002): let its close
                # frame, read by worker_to_page, decide the page's close code (not 1001)
                await asyncio.sleep(2.0)
                return

    async def worker_to_page() -> None:
        while True:
            msg = await upstream.receive()
            if msg.type == WSMsgType.TEXT:
                gate.from_worker(msg.data)
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.CLOSE:
                close_reason.append(str(msg.extra or "").encode())
                return
            elif msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return

    tasks = [asyncio.ensure_future(page_to_worker()), asyncio.ensure_future(worker_to_page())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    return close_reason[0] if close_reason else b""


# --- /healthz and /metrics of the control process -------------------------------------------


async def healthz_handler(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    live = sum(w.alive for w in control.workers)
    from parley.relay import accel  # the workers import the same module: same choice

    return web.json_response(
        {
            "status": "ok" if live else "degraded",
            "packet_path": accel.IMPLEMENTATION,
            "srtp": accel.SRTP_CRYPTO,
            "srtp_gcm": accel.SRTP_GCM,
            "workers": [w.to_json() for w in control.workers],
        }
    )


class WorkersCollector:
    """Each worker's sessions, packet rate and CPU (labelled by worker index only)."""

    def __init__(self, control: Control) -> None:
        self.control = control

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "parley_worker_up", "1 while the media worker runs", labels=["worker"]
        )
        sessions = GaugeMetricFamily(
            "parley_worker_sessions", "Open sessions on the media worker", labels=["worker"]
        )
        rate = GaugeMetricFamily(
            "parley_worker_forwarded_packets_per_second",
            "RTP packets the media worker forwards per second",
            labels=["worker"],
        )
        cpu = GaugeMetricFamily(
            "parley_worker_cpu_percent",
            "CPU the media worker uses (100: one core)",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "parley_worker_restarts", "Times the media worker was replaced", labels=["worker"]
        )
        for w in self.control.workers:
            label = [str(w.index)]
            up.add_metric(label, 1 if w.alive else 0)
            sessions.add_metric(label, w.sessions)
            rate.add_metric(label, w.packets_per_second)
            cpu.add_metric(label, w.cpu_percent)
            restarts.add_metric(label, w.restarts)
        yield from (up, sessions, rate, cpu, restarts)


def merge_metrics(texts: list[str]) -> str:
    """The workers' ``/metrics`` as one: samples with the same name and labels are added (every
    relay metric is a count or a sum over sessions, so the sums are what one process shows)."""
    order: list[str] = []
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            entry = families.get(family.name)
            if entry is None:
                entry = (family.type, family.documentation, {})
                families[family.name] = entry
                order.append(family.name)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                entry[2][key] = entry[2].get(key, 0.0) + sample.value
    lines = []
    for name in order:
        kind, doc, samples = families[name]
        doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            text = ",".join(
                f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                for k, v in labels
            )
            lines.append(
                f"{sample_name}{{{text}}} {_number(value)}"
                if text
                else f"{sample_name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def metrics_handler(control_app: web.Application) -> Any:
    import hmac

    from .errors import Unauthorized
    from .metrics import REGISTRY

    token = control_app[CONFIG].metrics_token.encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        if token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                raise Unauthorized("/metrics requires Authorization: Bearer <metrics token>")
        control = control_app[CONTROL]

        async def scrape(worker: Worker) -> str:
            if not worker.alive or worker.http is None:
                return ""
            try:
                async with worker.http.get(
                    "http://worker/metrics", timeout=aiohttp.ClientTimeout(total=3)
                ) as r:
                    return await r.text() if r.status == 200 else ""
            except (aiohttp.ClientError, OSError, TimeoutError):
                return ""

        texts = await asyncio.gather(*(scrape(w) for w in control.workers))
        body = (
            generate_latest(control_app[REGISTRY]) + merge_metrics([t for t in texts if t]).encode()
        )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


# --- serve ------------------------------------------------------------------------------------


def create_control_app(config: ServiceConfig) -> web.Application:
    """The control process's application: TURN (the app's own context), the worker pool,
    ``/healthz``, ``/metrics``, the WebSocket relay and the HTTP proxy."""
    from . import app as app_module
    from .metrics import REGISTRY

    app = web.Application(middlewares=[error_middleware], client_max_size=1024**2 * 2)
    app[CONFIG] = config
    app[DRAINING] = asyncio.Event()
    app[LIMITS] = Limits(  # every rate limit, for the whole machine (the workers apply none)
        sessions_per_minute=config.sessions_per_minute,
        joins_per_minute=config.joins_per_minute,
        messages_per_second=config.messages_per_second,
    )
    app[ICE_SERVERS] = app_module.ice_servers_factory(config, list(config.turn.external_urls))
    app[REGISTRY] = CollectorRegistry()
    app[REGISTRY].register(app_module.LimitsCollector(app))
    app.cleanup_ctx.append(app_module._turn_server)
    app.cleanup_ctx.append(_control_context)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/api/v1/ws", websocket_handler)
    if not config.metrics_port:
        app.router.add_get("/metrics", metrics_handler(app))
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app


def _worker_config(app: web.Application) -> ServiceConfig:
    """The config every worker runs with: no TURN server of its own (the control's, as external
    URLs with the same shared secret), client addresses from the control, no metrics port."""
    from .keys import TURN_SERVER

    config = app[CONFIG]
    turn = config.turn
    server = app.get(TURN_SERVER)
    if server is not None:
        from .app import turn_urls

        turn = dataclasses.replace(
            turn, external_urls=tuple(turn_urls(config, server.udp_port, server.tls_port))
        )
    return dataclasses.replace(
        config,
        turn=turn,
        workers=1,
        worker=True,
        trust_proxy=True,
        metrics_port=0,
        metrics_host="",
        metrics_token="",
    )


async def _control_context(app: web.Application) -> AsyncIterator[None]:
    from .keys import TURN_SERVER

    control = Control(app[CONFIG], _worker_config(app))
    control.turn_server = app.get(TURN_SERVER)
    app[CONTROL] = control
    from .metrics import REGISTRY

    app[REGISTRY].register(WorkersCollector(control))
    try:
        await control.start()
        yield
    finally:
        await control.stop()


async def serve_control(config: ServiceConfig, notes: list[str]) -> None:
    """``parley serve --workers N`` (N > 1)."""
    from .cli import RedactingAccessLogger, banner, run_until_signalled, server_ssl_context

    if config.port == 0:
        raise ValueError("--workers above 1 and --redis-url need a fixed --port")
    app = create_control_app(config)
    if config.redis_url:  # a member of a cluster of nodes (signaling/cluster.py)
        from .cluster import join_cluster

        join_cluster(app)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=RedactingAccessLogger,
        shutdown_timeout=1.0,
        keepalive_timeout=15.0,
    )
    await runner.setup()  # starts TURN and the workers
    site = web.TCPSite(runner, config.host, config.port, ssl_context=server_ssl_context(config))
    await site.start()
    metrics_runner: web.AppRunner | None = None
    if config.metrics_port:
        metrics_app = web.Application(middlewares=[error_middleware])
        metrics_app.router.add_get("/metrics", metrics_handler(app))
        metrics_runner = web.AppRunner(metrics_app, handle_signals=False)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, config.metrics_host, config.metrics_port).start()
    notes = [
        *notes,
        f"{config.workers} media workers (pids {', '.join(str(w.pid) for w in app[CONTROL].workers)}"
        "; --workers 1: one process)",
    ]
    print(banner(config, notes, config.port), flush=True)
    from .app import settle_heap

    settle_heap()

    async def stop() -> None:
        if config.redis_url:  # leave the cluster first: the pages rejoin onto live nodes
            from .cluster import drain

            await drain(app)
        app[DRAINING].set()
        await app[CONTROL].stop()

    async def cleanup() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.cleanup(), config.shutdown_timeout + 3)
            if metrics_runner is not None:
                await asyncio.wait_for(metrics_runner.cleanup(), 1.0)

    await run_until_signalled(stop, cleanup, config.shutdown_timeout + 5, logger)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_main())
