"""The WebSocket endpoint ``/api/v1/ws``: a thin shell over :class:`~signaling.sessions.Session`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from . import messages, recordings
from .api import client_address
from .errors import NotJoined, RateLimited, ShuttingDown, SignalingError
from .keys import CONFIG, DRAINING, ICE_SERVERS, LIMITS, SESSIONS, SOCKETS
from .presence import state_of
from .sessions import Participant, Session

logger = logging.getLogger(__name__)

HEARTBEAT = 10.0
"""Seconds between WebSocket pings; a client that stops answering is dropped (vanished)."""
CLOSE_TIMEOUT = 2.0
"""Seconds our close frame waits for the client's (a half-open socket is then just dropped)."""
CLOSE_JOIN_TIMEOUT = WSCloseCode.POLICY_VIOLATION
LEAVE_TIMEOUT = 5.0
"""Seconds a closed socket's participant may take to leave (aiortc's close can hang)."""
GOING_AWAY_REASON = b"server restarting; reconnect"


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


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    if app[DRAINING].is_set():
        raise ShuttingDown("the server is shutting down; reconnect shortly")
    limits = app[LIMITS]
    address = client_address(request)
    limits.open_unjoined(address)  # 429 when this address holds too many unjoined sockets
    unjoined = True
    try:
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT, max_msg_size=messages.MAX_MESSAGE_BYTES, timeout=CLOSE_TIMEOUT
        )
        await ws.prepare(request)
    except ConnectionError:
        # the client gave up during the handshake (a page retrying its socket): nothing to log
        limits.joined_or_closed(address)
        return ws
    except BaseException:
        limits.joined_or_closed(address)
        raise
    app[SOCKETS].add(ws)
    connection = WebSocketConnection(ws, request.headers.get("User-Agent", "")[:300])
    session: Session | None = None
    participant: Participant | None = None
    bucket = limits.message_bucket()
    throttled_until = 0.0
    loop = asyncio.get_running_loop()

    def join_timeout() -> None:
        if participant is None and not ws.closed:
            logger.info("closing a WebSocket from %s that did not join in time", address)
            asyncio.ensure_future(connection.close(CLOSE_JOIN_TIMEOUT, "no join message in time"))

    join_timer = loop.call_later(app[CONFIG].join_timeout, join_timeout)
    finished = False
    """The page left or ended the session (or must reconnect in full): no resume grace."""
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            now = loop.time()
            wait = bucket.take(now)
            if wait > 0:
                # over the per-connection message rate: drop it; answer at most once a second
                limits.messages_rejected += 1
                if now >= throttled_until:
                    throttled_until = now + 1.0
                    await connection.send(
                        messages.error_message(
                            "rate_limited", f"too many messages; retry in {wait:.1f} s"
                        )
                        | {"retry_after": round(wait, 1)}
                    )
                continue
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
                    if app[DRAINING].is_set():
                        # like every other page: reconnect (to this server restarted, or another)
                        await ws.close(code=WSCloseCode.GOING_AWAY, message=GOING_AWAY_REASON)
                        break
                    limits.joins.check(address)
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
                            "resume_grace": s.resume_grace,
                            "participants": [x.to_json() | state_of(x) for x in s.connected()],
                            "recording": recordings.state_of(app, s.id),
                        }

                    participant = await session.join(
                        claims, message.name, connection, welcome, resume=message.resume
                    )
                    join_timer.cancel()
                    if unjoined:
                        unjoined = False
                        limits.joined_or_closed(address)
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
                elif isinstance(message, messages.Candidate):
                    session.handle_candidate(participant, message)
                elif isinstance(message, messages.Reconnect):
                    session.handle_reconnect(participant, message.pc)
                elif isinstance(message, messages.MediaCheck):
                    await connection.send(session.media_status(participant))
                elif isinstance(message, messages.Leave):
                    finished = True
                    await session.leave(participant, connection)
                    await connection.close(1000, "left")
                    break
                elif isinstance(message, messages.End):
                    finished = True
                    await session.handle_end(participant)
                    break
                elif isinstance(message, messages.TrackState):
                    await session.handle_track_state(participant, message)
                elif isinstance(message, messages.RecordingAction):
                    await recordings.handle_message(app, session, participant, message.action)
            except RateLimited as exc:
                await connection.send(
                    messages.error_message(exc.code, exc.message)
                    | {"retry_after": round(exc.retry_after, 1)}
                )
            except SignalingError as exc:
                await connection.send(messages.error_message(exc.code, exc.message))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("unexpected error handling a signaling message")
                await connection.send(messages.error_message("internal_error", "internal error"))
    finally:
        join_timer.cancel()
        if unjoined:
            limits.joined_or_closed(address)
        app[SOCKETS].discard(ws)
        if (
            session is not None
            and participant is not None
            and not finished
            and not app[DRAINING].is_set()
            and session.vanished(participant, connection)
        ):
            pass  # the socket went away without a leave (a network drop?): the page may resume
        elif session is not None and participant is not None:
            try:
                await asyncio.wait_for(session.leave(participant, connection), LEAVE_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "[%s/%s] leaving took longer than %.0f s (peer close)",
                    session.id,
                    participant.id,
                    LEAVE_TIMEOUT,
                )
    return ws
