"""Typed application keys (aiohttp ``web.AppKey``), in one module."""

from __future__ import annotations

import weakref
from typing import Any

from aiohttp import web

from .config import ServiceConfig
from .sessions import SessionManager

CONFIG = web.AppKey("config", ServiceConfig)
SESSIONS = web.AppKey("sessions", SessionManager)
SOCKETS = web.AppKey("sockets", weakref.WeakSet)
TURN_SERVER = web.AppKey("turn_server", object)
ICE_SERVERS = web.AppKey("ice_servers", Any)
"""Callable[[participant_id], list[dict]]: the ``ice_servers`` of a welcome message."""
