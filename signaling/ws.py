"""The WebSocket endpoint ``/api/v1/ws``: a thin shell over :class:`~signaling.sessions.Session`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import WSMsgType, web

from . import messages
from .errors import NotJoined, SignalingError
from .keys import CONFIG, ICE_SERVERS, SESSIONS, SOCKETS
from .sessions import Participant, Session

logger = logging.getLogger(__name__)

HEARTBEAT = 10.0
"""Seconds between WebSocket pings; a client that stops answering is dropped (vanished)."""


class WebSocketConnection:
    """:class:`~signaling.sessions.Connection` over an aiohttp WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, user_agent: str = "") -> None:
        self.ws = ws
        self.user_agent = user_agent
        """Kept in the store with each join (signaling/store_journal.py)."""

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        try:
            await self.ws.send_json(message)
        except (ConnectionError, RuntimeError):
            pass

    async def close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            try:
                await self.ws.close(code=code, message=reason.encode())
            except (ConnectionError, RuntimeError):
                pass


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=messages.MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    app[SOCKETS].add(ws)
    connection = WebSocketConnection(ws, request.headers.get("User-Agent", "")[:300])
    session: Session | None = None
    participant: Participant | None = None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    await connection.send(
                        messages.error_message("bad_request", "binary frames are not accepted")
                    )
                continue
            try:
                message = messages.parse(msg.data)
                if isinstance(message, messages.Join):
                    if participant is not None:
                        raise SignalingError("already joined", code="already_joined")
                    session, claims = app[SESSIONS].verify(message.token)
                    ice = app[ICE_SERVERS]
                    policy = app[CONFIG].ice_transport_policy

                    def welcome(
                        p: Participant,
                        s: Session = session,
                        ice: Any = ice,
                        policy: str = policy,
                    ) -> dict[str, Any]:
                        return {
                            "type": "welcome",
                            "participant_id": p.id,
                            "session_id": s.id,
                            "role": p.role,
                            "name": p.name,
                            "ice_servers": ice(p.id),
                            "ice_transport_policy": policy,
                            "participants": [x.to_json() for x in s.connected()],
                        }

                    participant = await session.join(claims, message.name, connection, welcome)
                    continue
                if (
                    session is None
                    or participant is None
                    or participant.connection is not connection
                ):
                    raise NotJoined("send a join message first")
                if isinstance(message, messages.Offer):
                    await connection.send(await session.handle_offer(participant, message))
                elif isinstance(message, messages.Answer):
                    await session.handle_answer(participant, message)
                elif isinstance(message, messages.Leave):
                    await session.leave(participant, connection)
                    await connection.close(1000, "left")
                    break
                elif isinstance(message, messages.End):
                    await session.handle_end(participant)
                    break
            except SignalingError as exc:
                await connection.send(messages.error_message(exc.code, exc.message))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("unexpected error handling a signaling message")
                await connection.send(messages.error_message("internal_error", "internal error"))
    finally:
        if session is not None and participant is not None:
            await session.leave(participant, connection)
        app[SOCKETS].discard(ws)
    return ws
