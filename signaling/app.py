"""``create_app(config)``: the aiohttp application (STYLE.md §6)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from parley.relay import _aiortc
from parley.turn.credentials import rest_credentials

from . import api, metrics, reports
from .config import ServiceConfig
from .keys import CONFIG, ICE_SERVERS, SESSIONS, SOCKETS, TURN_SERVER
from .sessions import SessionManager
from .ws import websocket_handler

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SWEEP_INTERVAL = 30.0


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


def create_app(config: ServiceConfig) -> web.Application:
    _aiortc.check_compatibility()
    app = web.Application(middlewares=[api.error_middleware], client_max_size=256 * 1024)
    app[CONFIG] = config
    app[SESSIONS] = SessionManager(
        media=config.media,
        token_secret=config.token_secret,
        token_ttl=config.token_ttl,
        max_participants=config.max_participants,
        ended_kept=config.ended_sessions_kept,
    )
    app[SOCKETS] = weakref.WeakSet()
    app[ICE_SERVERS] = ice_servers_factory(config, list(config.turn.external_urls))
    app.add_routes(api.routes)
    app.router.add_get("/api/v1/ws", websocket_handler)
    app.router.add_get("/metrics", metrics.handler)
    app.router.add_get("/", _page("console.html"))
    app.router.add_get("/join/{token}", _page("join.html"))
    app.add_routes(reports.routes)  # issue 9: reports API and pages
    app.router.add_get("/reports", _page("reports.html"))
    app.router.add_get("/reports/{session_id}", _page("reports.html"))
    app.router.add_static("/static/", STATIC, show_index=False)
    app.cleanup_ctx.append(_turn_server)
    if config.store.persistent:  # issue 9: store, webhooks, reports (before _sessions)
        from .store_journal import store_context

        app.cleanup_ctx.append(store_context)
    app.cleanup_ctx.append(_sessions)
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


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    manager = app[SESSIONS]

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            await manager.expire()

    task = asyncio.ensure_future(sweep())
    metrics.register(manager, app)
    yield
    task.cancel()
    sockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
    await manager.close()


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
    )
    server = TurnServer(turn_config)
    await server.start()
    app[TURN_SERVER] = server
    urls = turn_urls(config, server.udp_port, server.tls_port)
    app[ICE_SERVERS] = ice_servers_factory(config, urls)
    logger.info("embedded TURN server on %s: %s", config.turn.listen_host, " ".join(urls))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await server.close()
