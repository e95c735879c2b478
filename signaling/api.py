"""The HTTP API (``/api/v1``) used by chat systems and the agent console."""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from parley.relay import accel

from . import recordings, store_journal
from .errors import (
    BadRequest,
    InvalidJson,
    MessageTooLarge,
    RateLimited,
    ShuttingDown,
    SignalingError,
    Unauthorized,
)
from .keys import CONFIG, DRAINING, LIMITS, SESSIONS
from .limits import retry_after_header
from .sessions import Session
from .tokens import ROLES

routes = web.RouteTableDef()

MAX_BODY_BYTES = 64 * 1024
"""Largest HTTP request body (aiohttp answers 413 above it)."""


def client_address(request: web.Request) -> str:
    """The client's address: the peer, or behind ``--trust-proxy`` the address the proxy
    appended last to ``X-Forwarded-For`` (earlier entries are the client's own claims)."""
    if request.app[CONFIG].trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return request.remote or ""


def _not_draining(request: web.Request) -> None:
    if request.app[DRAINING].is_set():
        raise ShuttingDown("the server is shutting down; retry shortly")


def _authorize(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    if not hmac.compare_digest(key.strip().encode(), request.app[CONFIG].api_key.encode()):
        # a wrong key costs the client's address a token: guessing keys is slow
        request.app[LIMITS].auth_failures.check(client_address(request))
        raise Unauthorized("the API key is not valid")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        raise MessageTooLarge(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidJson("the request body is not valid JSON") from exc
    except RecursionError as exc:
        raise InvalidJson("the request body nests too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidJson("the request body must be a JSON object")
    return data


def _join_url(request: web.Request, token: str) -> str:
    return f"{request.app[CONFIG].base_url}/join/{token}"


def _session(request: web.Request) -> Session:
    return request.app[SESSIONS].get(request.match_info["session_id"])


@routes.post("/api/v1/sessions")
async def create_session(request: web.Request) -> web.Response:
    _authorize(request)
    _not_draining(request)
    request.app[LIMITS].sessions.check(request.app[CONFIG].api_key)
    body = await _json_body(request)
    conversation_id = body.get("conversation_id")
    if not isinstance(conversation_id, str) or not conversation_id or len(conversation_id) > 200:
        raise BadRequest("'conversation_id' must be a non-empty string (at most 200 characters)")
    max_participants = body.get("max_participants")
    limit = request.app[CONFIG].max_participants
    if max_participants is not None and (
        not isinstance(max_participants, int)
        or isinstance(max_participants, bool)
        or not 2 <= max_participants <= max(limit, 2)
    ):
        raise BadRequest(f"'max_participants' must be an integer from 2 to {limit}")
    manager = request.app[SESSIONS]
    recording = recordings.parse_options(body)
    session = manager.create(conversation_id, max_participants)
    recordings.attach(request.app, session, recording)
    await store_journal.created(request.app, session)
    agent = manager.invite(session, "agent")
    customer = manager.invite(session, "customer")
    payload = {
        "session_id": session.id,
        "conversation_id": session.conversation_id,
        "agent_url": _join_url(request, agent),
        "customer_url": _join_url(request, customer),
        "expires_at": session.to_json()["expires_at"],
    }
    return web.json_response(payload, status=201)


@routes.post("/api/v1/sessions/{session_id}/invites")
async def create_invite(request: web.Request) -> web.Response:
    _authorize(request)
    _not_draining(request)
    session = _session(request)
    body = await _json_body(request)
    role = body.get("role")
    if role not in ROLES:
        raise BadRequest("'role' must be 'agent' or 'customer'")
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 80:
        raise BadRequest("'name' must be a string of at most 80 characters")
    token = request.app[SESSIONS].invite(session, role, name)
    return web.json_response({"url": _join_url(request, token)}, status=201)


@routes.get("/api/v1/sessions/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    _authorize(request)
    stored = await store_journal.stored_session(request.app, request.match_info["session_id"])
    if stored is not None:
        return web.json_response(stored)
    return web.json_response(_session(request).to_json())


@routes.delete("/api/v1/sessions/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    _authorize(request)
    await _session(request).end("ended_by_api")
    return web.Response(status=204)


@routes.get("/api/v1/conversations/{conversation_id}/sessions")
async def conversation_sessions(request: web.Request) -> web.Response:
    _authorize(request)
    history = await store_journal.history(request.app, request.match_info["conversation_id"])
    if history is not None:
        return web.json_response({"sessions": history})
    sessions = request.app[SESSIONS].for_conversation(request.match_info["conversation_id"])
    return web.json_response({"sessions": [s.to_json() for s in sessions]})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    # which per-packet path runs: "compiled" (relay/_accel.c) or "python", and whose SRTP
    return web.json_response(
        {
            "status": "ok",
            "packet_path": accel.IMPLEMENTATION,
            "srtp": accel.SRTP_CRYPTO,
            "srtp_gcm": accel.SRTP_GCM,
        }
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map every error to ``{"error": {"code", "message"}}`` with a fitting status."""
    try:
        return await handler(request)
    except SignalingError as exc:
        response = web.json_response(exc.to_json(), status=exc.status)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = retry_after_header(exc.retry_after)
        elif isinstance(exc, ShuttingDown):
            response.headers["Retry-After"] = "5"
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "message_too_large",
        }.get(exc.status, "http_error")
        return web.json_response(
            {"error": {"code": code, "message": exc.reason}}, status=exc.status
        )
