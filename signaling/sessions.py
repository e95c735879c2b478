"""Sessions and participants: the signaling state machine, testable without a socket.

A :class:`Session` owns one :class:`relay.Router`. Each participant slot comes from a join token;
a participant is connected through one :class:`Connection` (the WebSocket handler implements it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from parley.relay import MediaConfig, Peer, RelayError, Router
from parley.relay.router import Leg

from . import tokens
from .errors import Forbidden, SessionEnded, SessionFull, SessionNotFound, SignalingError
from .messages import Answer, Candidate, Offer, TrackState
from .presence import Presence

logger = logging.getLogger(__name__)

CLOSE_REPLACED = 4000
CLOSE_MEDIA_FAILED = 4001
CLOSE_SESSION_ENDED = 4002

LEG_REBUILD_TIMEOUT = 30.0
"""Seconds a rebuilt media leg has to connect before the page is told to reconnect in full."""
LEG_REBUILDS_PER_JOIN = 5
"""Leg rebuilds in a row, none of which connected, after which a failed leg means a full
reconnect (a rebuilt leg that connects starts the count again: a long call may lose its
network many times)."""
RESUME_GRACE = 45.0
"""Default seconds a participant whose WebSocket vanished stays listed (as reconnecting), its
media kept, for its page to come back with ``join`` + ``resume`` (a network drop takes the
socket down too; the socket's heartbeat notices within 15 s, so a drop of 30 s resumes).
``ServiceConfig.resume_grace`` / ``--resume-grace``."""


class Connection(Protocol):
    """How a session talks to one participant's client."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class SessionListener(Protocol):
    """Told of membership changes, after they happened (the store and webhooks, store_journal).
    Implementations never raise."""

    async def joined(
        self, session: Session, participant: Participant, connection: Connection
    ) -> None: ...

    async def left(self, session: Session, participant: Participant) -> None: ...

    async def ended(self, session: Session) -> None: ...

    def closing(self, session: Session, participant: Participant) -> None:
        """The participant's media is about to close (its last report sample)."""


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


@dataclass
class Participant:
    id: str
    role: str
    name: str
    joined_at: float | None = None
    left_at: float | None = None
    connection: Connection | None = None
    peer: Peer | None = None
    joins: int = 0
    muted: set[str] = field(default_factory=set)
    """Sources the participant turned off (``track_state``; signaling/presence.py)."""
    vanished: bool = False
    """Its socket went away without ``leave`` and the relay keeps its media for a resume."""
    rebuilds_in_a_row: int = 0
    """Leg rebuilds since one last connected (see :data:`LEG_REBUILDS_PER_JOIN`)."""
    announcing: set[Leg] = field(default_factory=set)
    """Legs whose ``reconnect`` is being sent (their rebuild follows): a page's own
    ``reconnect`` for such a leg is the same rebuild, not a second one."""

    @property
    def reconnecting(self) -> bool:
        """Away for now, expected back: its socket vanished, or a media leg is being rebuilt
        (the others see a frozen tile and ``reconnecting`` in ``participant_state``)."""
        peer = self.peer
        if peer is None:
            return False
        return self.vanished or peer.rebuilding("publish") or peer.rebuilding("subscribe")

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "participant_id": self.id,
            "role": self.role,
            "name": self.name,
            "joined_at": iso(self.joined_at),
            "left_at": iso(self.left_at),
        }


@dataclass
class Session:
    id: str
    conversation_id: str
    created_at: float
    expires_at: float
    max_participants: int
    router: Router
    participants: dict[str, Participant] = field(default_factory=dict)
    ended_at: float | None = None
    end_reason: str | None = None
    clock: Callable[[], float] = time.time
    on_end: list[Callable[[Session], Awaitable[None]]] = field(default_factory=list)
    """Called once the session ended and its media closed (the recorder finalises)."""
    started_at: float | None = None
    """When the first participant joined."""
    listener: SessionListener | None = None
    presence: Presence = field(init=False, repr=False)
    """participant_state, speaking and connection_quality (signaling/presence.py)."""
    resume_grace: float = RESUME_GRACE
    """Seconds a vanished participant's media is kept for a resume (see :meth:`vanished`)."""
    _grace: set[asyncio.Future[None]] = field(default_factory=set)
    """Pending leaves of vanished participants (see :meth:`vanished`)."""

    def __post_init__(self) -> None:
        self.presence = Presence(self)

    @property
    def state(self) -> str:
        if self.ended_at is not None:
            return "ended"
        if any(p.connected for p in self.participants.values()):
            return "active"
        return "waiting"

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "conversation_id": self.conversation_id,
            "state": self.state,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "ended_at": iso(self.ended_at),
            "participants": [
                p.to_json() for p in self.participants.values() if p.joined_at is not None
            ],
        }

    def connected(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.connected]

    # --- membership ----------------------------------------------------------------------------

    async def join(
        self,
        claims: tokens.JoinClaims,
        name: str,
        connection: Connection,
        welcome: Callable[[Participant], dict[str, Any]],
        resume: bool = False,
    ) -> Participant:
        """Connect a participant; a second join with the same token replaces the first, unless
        it ``resume``s: then the participant keeps its media and only its socket changes."""
        if self.ended_at is not None:
            raise SessionEnded("the session has ended")
        participant = self.participants.get(claims.participant_id)
        others = [p for p in self.connected() if p is not participant]
        if len(others) >= self.max_participants:
            raise SessionFull(f"the session is full ({self.max_participants} participants)")
        now = self.clock()
        if participant is None:
            participant = Participant(
                id=claims.participant_id,
                role=claims.role,
                name=name or claims.name or claims.role.capitalize(),
            )
            self.participants[participant.id] = participant
        elif resume and participant.peer is not None and not participant.peer.closed:
            return await self._resume(participant, connection, welcome)
        elif participant.connection is not None:
            old = participant.connection
            await self._disconnect(participant)
            logger.info("[%s/%s] replaced by a new connection", self.id, participant.id)
            await old.close(CLOSE_REPLACED, "replaced by a new connection")
        if name:
            participant.name = name
        rejoined = participant.joined_at is not None
        if participant.joined_at is None or participant.left_at is not None:
            participant.joined_at = now
        participant.left_at = None
        participant.connection = connection
        participant.joins += 1
        self.presence.joined(participant)
        if self.started_at is None:
            self.started_at = now
        await connection.send(welcome(participant))

        async def send_offer(sdp: str, tracks: list[dict[str, Any]]) -> None:
            # the participant's socket of the moment (a resume changes it)
            if participant.connection is not None:
                await participant.connection.send(
                    {"type": "offer", "pc": "subscribe", "sdp": sdp, "tracks": tracks}
                )

        def failed(peer: Peer) -> None:
            current = participant.connection
            # while its socket is gone the page cannot take a new leg: its resume restarts it
            if participant.peer is peer and current is not None and not participant.vanished:
                leg = peer.failed_leg
                asyncio.ensure_future(self._leg_failed(participant, current, peer, leg))

        participant.peer = self.router.add_peer(participant.id, send_offer, failed)
        participant.rebuilds_in_a_row = 0
        logger.info(
            "[%s/%s] joined as %s%s",
            self.id,
            participant.id,
            participant.role,
            " (again)" if rejoined else "",
        )
        await self.broadcast(
            {"type": "participant_joined", "participant": participant.to_json()},
            exclude=participant,
        )
        if self.listener is not None:
            await self.listener.joined(self, participant, connection)
        return participant

    async def _resume(
        self,
        participant: Participant,
        connection: Connection,
        welcome: Callable[[Participant], dict[str, Any]],
    ) -> Participant:
        """The participant's page is back on a new socket with its peer connections: swap the
        socket, keep the media, tell nobody (the page rebuilds legs that died meanwhile)."""
        old = participant.connection
        participant.connection = connection
        participant.vanished = False
        participant.joins += 1
        logger.info("[%s/%s] resumed on a new connection", self.id, participant.id)
        if old is not None and old is not connection:
            await old.close(1000, "resumed on a new connection")
        await connection.send(welcome(participant) | {"resumed": True})
        peer = participant.peer
        lost: list[Leg] = []
        if peer is not None:
            # legs that died meanwhile (a rebuild told to the lost socket is started again);
            # each rebuild tells the others when the participant is back
            lost = [leg for leg in ("publish", "subscribe") if peer.leg_lost(leg)]
            for leg in lost:
                asyncio.ensure_future(self._leg_failed(participant, connection, peer, leg))
        if not lost:
            await self.presence.state_changed(participant)
        return participant

    def vanished(self, participant: Participant, connection: Connection) -> bool:
        """The participant's socket closed without a ``leave``: if it has media, it leaves
        only when its page does not resume on a new socket within :attr:`resume_grace`
        (True: kept for that long, listed as reconnecting). False: nothing to keep, the caller
        makes it leave."""
        peer = participant.peer
        if participant.connection is not connection or peer is None or not peer.had_media():
            return False
        participant.vanished = True
        logger.info(
            "[%s/%s] connection lost; media kept %.0f s for a resume",
            self.id,
            participant.id,
            self.resume_grace,
        )

        async def grace() -> None:
            await self.presence.state_changed(participant)  # reconnecting, for the others
            await asyncio.sleep(self.resume_grace)
            try:
                # bounded: aiortc's close can hang
                await asyncio.wait_for(self.leave(participant, connection), 10.0)
            except TimeoutError:
                logger.warning("[%s/%s] leaving took longer than 10 s", self.id, participant.id)

        task = asyncio.ensure_future(grace())
        self._grace.add(task)
        task.add_done_callback(self._grace.discard)
        return True

    async def leave(self, participant: Participant, connection: Connection) -> None:
        """The participant left (``leave``, closed socket, vanished). Stale connections of a
        replaced participant are ignored."""
        if participant.connection is not connection:
            return
        participant.vanished = False
        await self._disconnect(participant)
        participant.left_at = self.clock()
        logger.info("[%s/%s] left", self.id, participant.id)
        await self.broadcast({"type": "participant_left", "participant_id": participant.id})
        if self.listener is not None:
            await self.listener.left(self, participant)

    async def _leg_failed(
        self,
        participant: Participant,
        connection: Connection,
        peer: Peer,
        leg: Leg | None,
        asked: bool = False,
    ) -> None:
        """One media leg died (silent, consent expired, DTLS closed): rebuild only that leg
        (``reconnect`` tells the page which: it makes a new peer connection for it) while the
        participant stays listed and everybody else's connections stay as they are. If the new
        leg does not connect in time, or this connection has rebuilt too often, the page
        reconnects in full (LiveKit's resume, then full reconnect). ``asked``: the page's own
        ``reconnect``; nothing to do when that leg's rebuild is already under way (a resumed
        page asks for the legs it found dead while the relay restarts those it had noticed)."""
        if participant.peer is not peer or participant.connection is not connection:
            return
        if asked and leg is not None and (peer.rebuilding(leg) or leg in participant.announcing):
            return
        if leg is None or participant.rebuilds_in_a_row >= LEG_REBUILDS_PER_JOIN:
            await self._media_failed(participant, connection)
            return
        if leg in participant.announcing:
            return  # the same rebuild, being announced
        logger.info("[%s/%s] %s leg lost; rebuilding it", self.id, participant.id, leg)
        participant.announcing.add(leg)
        try:
            await connection.send({"type": "reconnect", "pc": leg})
        finally:
            participant.announcing.discard(leg)
        if participant.peer is not peer or participant.connection is not connection:
            return
        peer.rebuild(leg)
        participant.rebuilds_in_a_row += 1
        await self.presence.state_changed(participant)  # reconnecting
        rebuilds = peer.rebuilds
        connected = await peer.wait_connected(leg, LEG_REBUILD_TIMEOUT)
        if connected:
            logger.info("[%s/%s] %s leg rebuilt", self.id, participant.id, leg)
            if participant.peer is peer:
                participant.rebuilds_in_a_row = 0
        if participant.peer is peer:
            await self.presence.state_changed(participant)
        if connected or participant.vanished:
            return  # a vanished participant's resume grace decides (it restarts lost legs)
        if peer.rebuilds == rebuilds:  # not already being rebuilt again
            await self._media_failed(participant, connection)

    async def _media_failed(self, participant: Participant, connection: Connection) -> None:
        """A media leg failed or closed under the relay (consent expired, DTLS closed): tell the
        page, list the participant as gone at once (the socket may be half-open; everybody is
        told), then close its socket with CLOSE_MEDIA_FAILED so the page reconnects. In a task of
        its own: closing the socket cancels the socket's handler, and with it any leave it had
        started."""
        if participant.connection is not connection:
            return
        logger.info("[%s/%s] media connection lost; the page reconnects", self.id, participant.id)
        await connection.send(
            {
                "type": "error",
                "code": "media_failed",
                "message": "the media connection was lost; reconnecting",
            }
        )
        await self.leave(participant, connection)
        await connection.close(CLOSE_MEDIA_FAILED, "media failed")

    async def _disconnect(self, participant: Participant) -> None:
        if self.listener is not None and participant.peer is not None:
            self.listener.closing(self, participant)
        participant.connection = None
        peer, participant.peer = participant.peer, None
        if peer is not None:
            await peer.close()

    async def end(self, reason: str) -> None:
        """End the session for everyone: ``session_ended``, then their sockets close."""
        if self.ended_at is not None:
            return
        for task in list(self._grace):
            task.cancel()
        self.ended_at = self.clock()
        self.end_reason = reason
        self.presence.close()
        logger.info("[%s] ended (%s)", self.id, reason)
        connections = []
        left = []
        for participant in self.connected():
            connection = participant.connection
            if connection is None:  # its socket closed while an earlier one was being told
                continue
            connections.append(connection)
            await self._disconnect(participant)
            participant.left_at = self.ended_at
            left.append(participant)
            await connection.send({"type": "session_ended", "reason": reason})
        await asyncio.gather(
            *(c.close(CLOSE_SESSION_ENDED, "session ended") for c in connections),
            return_exceptions=True,
        )
        await self.router.close()
        for hook in self.on_end:
            try:
                await hook(self)
            except Exception:  # a failing hook never stops the session from ending
                logger.exception("[%s] an end-of-session hook failed", self.id)
        if self.listener is not None:
            for participant in left:
                await self.listener.left(self, participant)
            await self.listener.ended(self)

    async def suspend(self) -> None:
        """Server shutdown with a store: drop every connection and the media, keep the session
        open (it is restored at the next start and its participants rejoin by themselves)."""
        self.presence.close()
        for task in list(self._grace):
            task.cancel()
        for participant in list(self.participants.values()):
            connection = participant.connection
            if connection is not None:
                await self.leave(participant, connection)
                await connection.close(1001, "server restarting")
            elif participant.joined_at is not None and participant.left_at is None:
                # its socket handler was cancelled by the shutdown while leaving
                participant.left_at = self.clock()
                if self.listener is not None:
                    await self.listener.left(self, participant)
        await self.router.close()

    async def broadcast(self, message: dict[str, Any], exclude: Participant | None = None) -> None:
        for participant in self.connected():
            if participant is not exclude and participant.connection is not None:
                await participant.connection.send(message)

    # --- media negotiation -----------------------------------------------------------------------

    async def handle_offer(self, participant: Participant, offer: Offer) -> dict[str, Any]:
        peer = self._peer(participant)
        try:
            answer = await peer.handle_publish_offer(offer.sdp, offer.sources)
        except RelayError as exc:
            raise SignalingError(str(exc), code=exc.code) from exc
        await self.presence.state_changed(participant)
        return {"type": "answer", "pc": "publish", "sdp": answer}

    async def handle_track_state(self, participant: Participant, message: TrackState) -> None:
        if message.enabled:
            participant.muted.discard(message.source)
        else:
            participant.muted.add(message.source)
        await self.presence.state_changed(participant)

    async def handle_answer(self, participant: Participant, answer: Answer) -> None:
        peer = self._peer(participant)
        try:
            await peer.handle_subscribe_answer(answer.sdp)
        except RelayError as exc:
            raise SignalingError(str(exc), code=exc.code) from exc

    def handle_candidate(self, participant: Participant, message: Candidate) -> None:
        """A candidate the page trickled for one of its legs (stale ones are dropped)."""
        peer = self._peer(participant)
        try:
            peer.add_candidate(message.pc, message.candidate, message.ufrag)
        except RelayError as exc:
            raise SignalingError(str(exc), code=exc.code) from exc

    def handle_reconnect(self, participant: Participant, leg: Leg) -> None:
        """The page found one of its legs dead: rebuild it as if the relay had (in a task of its
        own: the page's fresh offer must get through meanwhile)."""
        peer, connection = self._peer(participant), participant.connection
        if connection is None or peer.rebuilding(leg) or leg in participant.announcing:
            return  # already under way (the relay noticed first)
        asyncio.ensure_future(self._leg_failed(participant, connection, peer, leg, asked=True))

    def media_status(self, participant: Participant) -> dict[str, Any]:
        """The answer to ``media_check``: packets the relay has sent so far on the
        participant's current subscribe leg (the sum over its consumers; a rebuilt leg starts
        again at 0) and whether that leg is connected as the relay sees it."""
        peer = self._peer(participant)
        leg = peer.subscribe
        return {
            "type": "media_status",
            "sent": sum(consumer.packets for consumer in leg.consumers.values()),
            "connected": not leg.closed and leg.pc.connectionState == "connected",
        }

    async def handle_end(self, participant: Participant) -> None:
        if participant.role != "agent":
            raise Forbidden("only an agent can end the session")
        await self.end("ended_by_agent")

    def _peer(self, participant: Participant) -> Peer:
        if participant.peer is None:
            raise SignalingError("not connected", code="not_joined")
        return participant.peer


class SessionManager:
    """All sessions of this process, and each conversation's history."""

    def __init__(
        self,
        *,
        media: MediaConfig,
        token_secret: bytes,
        token_ttl: int,
        max_participants: int,
        ended_kept: int = 10000,
        clock: Callable[[], float] = time.time,
        resume_grace: float = RESUME_GRACE,
    ) -> None:
        self.media = media
        self.resume_grace = resume_grace
        self.token_secret = token_secret
        self.token_ttl = token_ttl
        self.max_participants = max_participants
        self.ended_kept = ended_kept
        self.clock = clock
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.by_conversation: dict[str, list[str]] = {}
        self.listener: SessionListener | None = None
        """Set by the store (store_journal): sessions then outlive a restart."""

    def create(self, conversation_id: str, max_participants: int | None = None) -> Session:
        now = self.clock()
        session_id = "s_" + secrets.token_hex(8)
        session = Session(
            id=session_id,
            conversation_id=conversation_id,
            created_at=now,
            expires_at=now + self.token_ttl,
            max_participants=max_participants or self.max_participants,
            router=Router(session_id, self.media),
            clock=self.clock,
            listener=self.listener,
            resume_grace=self.resume_grace,
        )
        self.sessions[session_id] = session
        self.by_conversation.setdefault(conversation_id, []).append(session_id)
        logger.info("[%s] session created", session_id)
        self._prune()
        return session

    def invite(self, session: Session, role: str, name: str = "") -> str:
        """A new join token for ``session`` (one participant slot)."""
        if session.ended_at is not None:
            raise SessionEnded("the session has ended")
        token, _ = tokens.mint(
            self.token_secret,
            session_id=session.id,
            role=role,
            name=name,
            now=self.clock(),
            ttl=max(1, int(session.expires_at - self.clock())),
        )
        return token

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id[:64]!r}")
        return session

    def for_conversation(self, conversation_id: str) -> list[Session]:
        return [
            self.sessions[s]
            for s in self.by_conversation.get(conversation_id, [])
            if s in self.sessions
        ]

    def verify(self, token: object) -> tuple[Session, tokens.JoinClaims]:
        claims = tokens.verify(self.token_secret, token, now=self.clock())
        session = self.sessions.get(claims.session_id)
        if session is None:
            raise SessionNotFound("the session of this token no longer exists")
        return session, claims

    async def expire(self) -> None:
        """End sessions past their expiry with nobody connected."""
        now = self.clock()
        for session in list(self.sessions.values()):
            if session.ended_at is None and session.expires_at <= now and not session.connected():
                await session.end("expired")

    def _prune(self) -> None:
        ended = [s for s in self.sessions.values() if s.ended_at is not None]
        for session in ended[: max(0, len(ended) - self.ended_kept)]:
            self.sessions.pop(session.id, None)
            ids = self.by_conversation.get(session.conversation_id, [])
            if session.id in ids:
                ids.remove(session.id)

    def restore(self, session: Session) -> None:
        """Put back a session the store kept across a restart (store_journal)."""
        session.listener = self.listener
        session.resume_grace = self.resume_grace
        self.sessions[session.id] = session
        self.by_conversation.setdefault(session.conversation_id, []).append(session.id)

    async def close(self) -> None:
        open_sessions = [s for s in self.sessions.values() if s.ended_at is None]
        if self.listener is not None:
            await asyncio.gather(*(s.suspend() for s in open_sessions))
            return
        await asyncio.gather(*(s.end("server_shutdown") for s in open_sessions))

    async def shutdown(self) -> None:
        """The process is stopping: close every peer but keep the sessions (not ended), so that
        pages told to reconnect can rejoin a restarted server that kept them."""
        for session in self.sessions.values():
            for participant in session.connected():
                participant.left_at = self.clock()
                if session.listener is not None:
                    await session.listener.left(session, participant)
        await asyncio.gather(
            *(
                session._disconnect(participant)
                for session in self.sessions.values()
                for participant in session.connected()
            ),
            return_exceptions=True,
        )
        for session in self.sessions.values():
            session.presence.close()
        await asyncio.gather(
            *(s.router.close() for s in self.sessions.values()), return_exceptions=True
        )
