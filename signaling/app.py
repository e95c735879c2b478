"""``create_app(config)``: the aiohttp application (STYLE.md §6)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily

from parley.relay import _aiortc
from parley.turn.credentials import rest_credentials

from . import api, metrics, recordings, reports
from .config import ServiceConfig
from .errors import Unauthorized
from .keys import CONFIG, DRAINING, ICE_SERVERS, LIMITS, SESSIONS, SOCKETS, TURN_SERVER
from .limits import Limits
from .sessions import SessionManager
from .ws import GOING_AWAY_REASON, websocket_handler

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SWEEP_INTERVAL = 30.0
EMBEDDED_TURN_USER_QUOTA = 12
"""Allocations one participant's TURN username may hold (two peer connections, a few transports
each, and retries)."""


def turn_urls(config: ServiceConfig, udp_tcp_port: int, tls_port: int | None) -> list[str]:
    host = config.turn_host
    if ":" in host:
        host = f"[{host}]"
    urls = [f"turn:{host}:{udp_tcp_port}?transport={t}" for t in config.turn.transports]
    if tls_port:
        urls.append(f"turns:{host}:{tls_port}?transport=tcp")
    return urls


def ice_servers_factory(
    config: ServiceConfig, urls: list[str], clock: Callable[[], float] = time.time
) -> Callable[[str], list[dict[str, Any]]]:
    """Fresh credentials per participant: REST credentials from the shared secret, or the fixed
    credentials of an external TURN service."""
    turn = config.turn

    def ice_servers(participant_id: str) -> list[dict[str, Any]]:
        if not urls:
            return []
        if turn.external_username is not None:
            username, credential = turn.external_username, turn.external_credential or ""
        else:
            username, credential = rest_credentials(
                turn.secret, participant_id, turn.credential_ttl, clock()
            )
        return [{"urls": list(urls), "username": username, "credential": credential}]

    return ice_servers


def settle_heap() -> None:
    """Call once the process is serving: what start-up made (modules, the application, its
    routes: about 100 000 objects) leaves the garbage collector's generations. A full
    collection, which the end of a session's cyclic objects sets off, then walks only what
    sessions made since; before, it walked everything (about 40 ms here), and every session's
    media waited meanwhile. What start-up made and later drops is still freed by reference
    counting; only a cycle among such objects would stay."""
    gc.collect()
    gc.freeze()


def create_app(config: ServiceConfig) -> web.Application:
    _aiortc.check_compatibility()
    app = web.Application(middlewares=[api.error_middleware], client_max_size=api.MAX_BODY_BYTES)
    app[CONFIG] = config
    app[SESSIONS] = SessionManager(
        media=config.media,
        token_secret=config.token_secret,
        token_ttl=config.token_ttl,
        max_participants=config.max_participants,
        ended_kept=config.ended_sessions_kept,
        resume_grace=config.resume_grace,
    )
    app[SOCKETS] = weakref.WeakSet()
    app[ICE_SERVERS] = ice_servers_factory(config, list(config.turn.external_urls))
    app[DRAINING] = asyncio.Event()
    app[LIMITS] = (
        Limits.unlimited()  # a media worker: its control process applies the limits
        if config.worker
        else Limits(
            sessions_per_minute=config.sessions_per_minute,
            joins_per_minute=config.joins_per_minute,
            messages_per_second=config.messages_per_second,
        )
    )
    app.add_routes(api.routes)
    app.router.add_get("/api/v1/ws", websocket_handler)
    if not config.metrics_port:
        app.router.add_get("/metrics", metrics_handler(app))
    app.router.add_get("/", _page("console.html"))
    app.router.add_get("/join/{token}", _page("join.html"))
    app.add_routes(reports.routes)  # issue 9: reports API and pages
    app.router.add_get("/reports", _page("reports.html"))
    app.router.add_get("/reports/{session_id}", _page("reports.html"))
    app.router.add_static("/static/", STATIC, show_index=False)
    metrics.register(app[SESSIONS], app)
    app.cleanup_ctx.append(_turn_server)
    if config.store.persistent:  # issue 9: store, webhooks, reports (before recordings and _sessions,
        # so that it closes after them)
        from .store_journal import store_context

        app.cleanup_ctx.append(store_context)
    recordings.setup(app)  # before _sessions: its cleanup runs after the sessions ended
    app.cleanup_ctx.append(_sessions)
    app.on_shutdown.append(shutdown)
    return app


def _page(name: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        path = STATIC / name
        if not path.exists():
            raise web.HTTPNotFound(text=f"{name} is missing from this installation")
        response = web.FileResponse(path)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return handler


def metrics_handler(app: web.Application) -> Callable[[web.Request], Any]:
    """``/metrics`` of ``app`` (served by ``app`` itself or by a separate metrics app), behind
    ``--metrics-token`` when one is set."""
    token = app[CONFIG].metrics_token.encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        if token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                raise Unauthorized("/metrics requires Authorization: Bearer <metrics token>")
        registry = app.get(metrics.REGISTRY)
        body = generate_latest(registry) if registry is not None else b""
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


def create_metrics_app(app: web.Application) -> web.Application:
    """A separate application serving only ``/metrics`` of ``app`` (``--metrics-port``)."""
    metrics_app = web.Application(middlewares=[api.error_middleware])
    metrics_app.router.add_get("/metrics", metrics_handler(app))
    return metrics_app


class LimitsCollector:
    """Rejections by the rate limits, for ``/metrics``."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "parley_rate_limited", "Requests refused by a rate limit", labels=["limit"]
        )
        limits = self.app[LIMITS]
        family.add_metric(["sessions"], limits.sessions.rejected)
        family.add_metric(["joins"], limits.joins.rejected)
        family.add_metric(["auth_failures"], limits.auth_failures.rejected)
        family.add_metric(["unjoined_sockets"], limits.unjoined_rejected)
        family.add_metric(["messages"], limits.messages_rejected)
        yield family


async def shutdown(app: web.Application) -> None:
    """SIGTERM: stop accepting sessions and joins, tell every page to reconnect (close frame
    1001 GOING_AWAY), close every peer. Each step is bounded by ``shutdown_timeout``; idempotent."""
    draining = app[DRAINING]
    if draining.is_set():
        return
    draining.set()
    timeout = app[CONFIG].shutdown_timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tracked = app[SOCKETS]
    sockets = [ws for ws in list(tracked) if not ws.closed]
    logger.info("shutting down: telling %d connected pages to reconnect", len(sockets))
    closes = [
        asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON))
        for ws in sockets
    ]
    if closes:
        _, pending = await asyncio.wait(closes, timeout=max(0.1, (deadline - loop.time()) / 2))
        for task in pending:
            task.cancel()
    try:
        await asyncio.wait_for(app[SESSIONS].shutdown(), max(0.1, deadline - loop.time()))
    except TimeoutError:
        logger.warning("shutting down: peers did not close within %.0f s", timeout)


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    manager = app[SESSIONS]

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            await manager.expire()

    task = asyncio.ensure_future(sweep())
    if not app[CONFIG].worker:  # a worker's are all off; the control process reports its own
        app[metrics.REGISTRY].register(LimitsCollector(app))
    yield
    task.cancel()
    await shutdown(app)


async def _turn_server(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.turn.embedded:
        yield
        return
    from parley.turn.config import TurnConfig
    from parley.turn.server import TurnServer

    low, high = config.turn.relay_ports or (0, 0)
    relay_address = config.media.addresses[0]
    turn_config = TurnConfig(
        host=config.turn.listen_host,
        port=config.turn.port,
        tls_port=config.turn.tls_port if config.turn.tls_enabled else None,
        tls_cert=config.turn.tls_cert,
        tls_key=config.turn.tls_key,
        secrets=(config.turn.secret,),
        relay_address=relay_address,
        relay_port_min=low,
        relay_port_max=high,
        allowed_peers=tuple(f"{a}/{128 if ':' in a else 32}" for a in config.media.addresses),
        user_quota=EMBEDDED_TURN_USER_QUOTA,
    )
    # its collector goes into the app's registry (one set of TURN metrics, typed)
    server = TurnServer(turn_config, registry=app[metrics.REGISTRY])
    await server.start()
    app[TURN_SERVER] = server
    urls = turn_urls(config, server.udp_port, server.tls_port)
    app[ICE_SERVERS] = ice_servers_factory(config, urls)
    logger.info("embedded TURN server on %s: %s", config.turn.listen_host, " ".join(urls))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.close(), config.shutdown_timeout)
