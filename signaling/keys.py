"""Typed application keys (aiohttp ``web.AppKey``), in one module."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import web

from parley.turn.server import TurnServer

from .config import ServiceConfig
from .limits import Limits
from .sessions import SessionManager

IceServersFactory = Callable[[str], list[dict[str, Any]]]
"""participant id -> the ``ice_servers`` of its welcome message (fresh credentials)."""

CONFIG = web.AppKey("config", ServiceConfig)
SESSIONS = web.AppKey("sessions", SessionManager)
SOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("sockets")
TURN_SERVER = web.AppKey("turn_server", TurnServer)
ICE_SERVERS: web.AppKey[IceServersFactory] = web.AppKey("ice_servers")

# --- limits and shutdown (issue 12) ---
DRAINING = web.AppKey("draining", asyncio.Event)
"""Set on SIGTERM: no new sessions or joins; pages are told to reconnect."""
LIMITS: web.AppKey[Limits] = web.AppKey("limits")

# --- media workers (issue 11) ---
RELAYED_TRANSPORTS: web.AppKey[dict[tuple[str, int], str]] = web.AppKey("relayed_transports")
"""In a media worker: relayed address of each allocation of the control process's TURN server
-> the client's transport to it (pushed with each load poll, signaling/workers.py)."""
