"""The bridge between live sessions and the store: a :class:`~signaling.sessions.SessionListener`
that writes every change and emits the webhook events, the restore of open sessions at start-up,
and the application context that starts and stops the store, webhooks and reports."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from parley.relay import Router

from .config import StoreSettings
from .reports import REPORTER, Reporter, TurnLookup, summary_of
from .sessions import Connection, Participant, Session, SessionManager, iso
from .store import Store, database_url, redacted
from .webhooks import Deliverer, Webhooks

logger = logging.getLogger(__name__)


def session_row(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "conversation_id": session.conversation_id,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "started_at": session.started_at,
        "ended_at": session.ended_at,
        "end_reason": session.end_reason,
        "settings": {"max_participants": session.max_participants},
    }


def session_json(row: dict[str, Any], live: Session | None = None) -> dict[str, Any]:
    """A stored session in the shape of ``Session.to_json`` (live state when in memory)."""
    if live is not None:
        return live_json(live)
    return {
        "session_id": row["id"],
        "conversation_id": row["conversation_id"],
        "state": _stored_state(row),
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
        "ended_at": iso(row["ended_at"]),
        "started_at": iso(row["started_at"]),
        "end_reason": row["end_reason"],
        "participants": [
            {
                "participant_id": p["participant_id"],
                "role": p["role"],
                "name": p["name"],
                "joined_at": iso(p["joined_at"]),
                "left_at": iso(p["left_at"]),
            }
            for p in row.get("participants", [])
            if p["joined_at"] is not None
        ],
    }


def _stored_state(row: dict[str, Any]) -> str:
    """A session's state from its row, as ``Session.state`` has it: the process that answers
    need not be the one holding it (another media worker or node), and the row knows who is in."""
    if row["ended_at"] is not None:
        return "ended"
    participants = row.get("participants", [])
    if any(p["joined_at"] is not None and p["left_at"] is None for p in participants):
        return "active"
    return "waiting"


def live_json(session: Session) -> dict[str, Any]:
    return {
        **session.to_json(),
        "started_at": iso(session.started_at),
        "end_reason": session.end_reason,
    }


class Journal:
    """Writes sessions, participants and connections; emits the lifecycle events."""

    def __init__(
        self,
        store: Store,
        webhooks: Webhooks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.clock = clock
        self.connection_ids: dict[tuple[str, str], int] = {}
        """Open ``connections`` rows by (session id, participant id)."""
        self.reporter: Reporter | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[None]] = set()
        """Writes started from synchronous callbacks (network paths)."""
        self._shields: set[asyncio.Future[None]] = set()
        """Membership writes in flight (see _shielded)."""

    async def created(self, session: Session) -> None:
        """A new session (raises: the API must not hand out URLs the store does not know)."""
        await self.store.save_session(session_row(session))
        await self.webhooks.emit("session.created", live_json(session))

    async def joined(
        self, session: Session, participant: Participant, connection: Connection
    ) -> None:
        try:
            await self._shielded(self._joined(session, participant, connection))
        except Exception:
            logger.warning(
                "[%s/%s] store: join not recorded", session.id, participant.id, exc_info=True
            )

    async def left(self, session: Session, participant: Participant) -> None:
        try:
            await self._shielded(self._left(session, participant))
        except Exception:
            logger.warning(
                "[%s/%s] store: leave not recorded", session.id, participant.id, exc_info=True
            )

    async def ended(self, session: Session) -> None:
        try:
            await self._shielded(self._ended(session))
        except Exception:
            logger.warning("[%s] store: end not recorded", session.id, exc_info=True)

    async def _shielded(self, coro: Any) -> None:
        """Run one write under the lock to its end even when the caller is cancelled (a socket
        handler at shutdown); :meth:`drain` waits for it."""

        async def locked() -> None:
            async with self._lock:
                await coro

        task = asyncio.ensure_future(locked())
        self._shields.add(task)
        task.add_done_callback(self._shields.discard)
        await asyncio.shield(task)

    async def _joined(
        self, session: Session, participant: Participant, connection: Connection
    ) -> None:
        now = self.clock()
        first = participant.joins == 1 and not any(
            p.joins for p in session.participants.values() if p is not participant
        )
        await self.store.save_session(session_row(session))
        await self.store.save_participant(_participant_row(session, participant))
        key = (session.id, participant.id)
        replaced = self.connection_ids.pop(key, None)
        if replaced is not None:  # the same link opened again: the old connection ends now
            await self.store.update_connection(replaced, left_at=now)
        self.connection_ids[key] = await self.store.add_connection(
            {
                "session_id": session.id,
                "participant_id": participant.id,
                "joined_at": now,
                "user_agent": str(getattr(connection, "user_agent", "") or "")[:300],
                "signaling": str(getattr(connection, "kind", "websocket")),
            }
        )
        if first and session.started_at is not None and participant.joins == 1:
            await self.webhooks.emit("session.started", live_json(session))
        await self.webhooks.emit(
            "participant.joined",
            live_json(session),
            self.participant_json(session, participant, connection),
        )

    async def _left(self, session: Session, participant: Participant) -> None:
        key = (session.id, participant.id)
        connection_id = self.connection_ids.get(key)
        if connection_id is None:
            return  # recorded already (a shutdown racing the socket's own leave)
        await self.store.update_connection(connection_id, left_at=participant.left_at)
        await self.store.save_participant(_participant_row(session, participant))
        await self.webhooks.emit(
            "participant.left", live_json(session), self.participant_json(session, participant)
        )
        if self.connection_ids.get(key) == connection_id:
            del self.connection_ids[key]

    async def _ended(self, session: Session) -> None:
        await self.store.save_session(session_row(session))
        summary = await self.report_summary(session)
        await self.webhooks.emit("session.ended", live_json(session), data={"report": summary})

    def closing(self, session: Session, participant: Participant) -> None:
        if self.reporter is not None:
            self.reporter.flush(session, participant)

    def network_path(self, session: Session, participant_id: str, path: str, turn: str) -> None:
        """The reporter saw a (new) nominated path for the participant."""
        connection_id = self.connection_ids.get((session.id, participant_id))
        logger.info("[%s/%s] network path %s %s", session.id, participant_id, path, turn)
        task = asyncio.ensure_future(
            self.store.set_network_path(session.id, participant_id, connection_id, path, turn)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, membership: bool = True) -> None:
        """Wait for the writes in flight: samples, network paths and (unless called from one of
        them, which hold the lock) the membership writes."""
        pending = list(self._tasks)
        if membership:
            pending += list(self._shields)
        if self.reporter is not None:
            pending += list(self.reporter.writes)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def report_summary(self, session: Session) -> dict[str, Any]:
        await self.drain(membership=False)
        row = await self.store.get_session(session.id)
        if row is None:
            return {}
        recorded = session.id in await self.store.recorded_sessions([session.id])
        return summary_of(row, await self.store.samples(session.id), recorded=recorded)

    def participant_json(
        self, session: Session, participant: Participant, connection: Connection | None = None
    ) -> dict[str, Any]:
        data = participant.to_json()
        if connection is not None:
            data["user_agent"] = str(getattr(connection, "user_agent", "") or "")[:300]
        return data

    async def restore(self, manager: SessionManager) -> int:
        """Put every session that was waiting or active back into ``manager``."""
        now = self.clock()
        rows = await self.store.open_sessions()
        for row in await self.store.ended_since(now - manager.token_ttl):
            # kept so that their links answer "session ended", not "no such session"
            manager.restore(_restored(row, manager, now))
        for row in rows:
            await self.restore_one(manager, row, now)
        if rows:
            logger.info("store: %d open sessions restored", len(rows))
        return len(rows)

    async def restore_one(
        self, manager: SessionManager, row: dict[str, Any], now: float
    ) -> Session:
        """Put one stored session back into ``manager``; its connections still open in the
        store (left by a stopped or crashed process) are closed (``participant.left``)."""
        session = _restored(row, manager, now)
        manager.restore(session)
        if row["ended_at"] is None:
            for c in await self.store.connections_of(session.id):
                if c["left_at"] is None:  # parley stopped without a clean shutdown
                    await self.store.update_connection(c["id"], left_at=now)
                    participant = session.participants.get(c["participant_id"])
                    if participant is not None:
                        await self.store.save_participant(_participant_row(session, participant))
                        await self.webhooks.emit(
                            "participant.left",
                            live_json(session),
                            self.participant_json(session, participant),
                        )
        return session


def _restored(row: dict[str, Any], manager: SessionManager, now: float) -> Session:
    session = Session(
        id=row["id"],
        conversation_id=row["conversation_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        max_participants=int(row["settings"].get("max_participants", manager.max_participants)),
        router=Router(row["id"], manager.media),
        clock=manager.clock,
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
    )
    for p in row["participants"]:
        session.participants[p["participant_id"]] = Participant(
            id=p["participant_id"],
            role=p["role"],
            name=p["name"],
            joined_at=p["joined_at"],
            left_at=p["left_at"] if p["left_at"] is not None else now,
            joins=1 if p["joined_at"] is not None else 0,
        )
    return session


def _participant_row(session: Session, participant: Participant) -> dict[str, Any]:
    return {
        "session_id": session.id,
        "participant_id": participant.id,
        "role": participant.role,
        "name": participant.name[:80],
        "joined_at": participant.joined_at,
        "left_at": participant.left_at,
    }


STORE = web.AppKey("store", Store)
JOURNAL = web.AppKey("journal", Journal)
WEBHOOKS = web.AppKey("webhooks", Webhooks)
DELIVERER = web.AppKey("deliverer", Deliverer)


def store_url(settings: StoreSettings) -> str:
    return database_url(Path(settings.data_dir or "."), settings.database_url)


async def store_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open and migrate the store, restore sessions, deliver webhooks; registered
    before the sessions context, so it closes after the last participant left."""
    from .keys import CONFIG, SESSIONS

    config = app[CONFIG]
    settings = config.store
    url = store_url(settings)
    store = await Store.open(url)
    logger.info("store: %s", redacted(url))
    webhooks = Webhooks(store, settings)
    deliverer = Deliverer(store, settings, webhooks.wake)
    journal = Journal(store, webhooks)
    manager = app[SESSIONS]
    manager.listener = journal
    app[STORE], app[JOURNAL], app[WEBHOOKS], app[DELIVERER] = store, journal, webhooks, deliverer
    if not config.worker:  # a media worker adopts sessions when placed (signaling/workers.py)
        await journal.restore(manager)
    reporter = Reporter(
        store,
        manager,
        settings.report_interval,
        turn_lookup=lambda: embedded_turn_lookup(app),
        on_path=journal.network_path,
    )
    journal.reporter = reporter
    app[REPORTER] = reporter
    deliverer.start()
    reporter.start()
    try:
        yield
    finally:
        await reporter.close()
        await journal.drain()
        await deliverer.close()
        await store.close()


def embedded_turn_lookup(app: web.Application) -> TurnLookup | None:
    """Which transport a client uses to our TURN server, by the relayed address it got."""
    from .keys import TURN_SERVER

    server = app.get(TURN_SERVER)
    if server is None:
        from .keys import RELAYED_TRANSPORTS

        relayed = app.get(RELAYED_TRANSPORTS)  # a media worker: the control process's table
        return None if relayed is None else (lambda host, port: relayed.get((host, port)))
    table = server.handler.allocations

    def lookup(host: str, port: int) -> str | None:
        allocation = table.by_relay.get((host, port))
        if allocation is None:
            allocation = next((a for a in table if tuple(a.advertised)[:2] == (host, port)), None)
        return allocation.five_tuple.transport if allocation is not None else None

    return lookup


# --- used by the HTTP API (api.py) -----------------------------------------------------------


async def created(app: web.Application, session: Session) -> None:
    journal = app.get(JOURNAL)
    if journal is not None:
        await journal.created(session)


async def history(app: web.Application, conversation_id: str) -> list[dict[str, Any]] | None:
    """A conversation's sessions from the store (None without a store)."""
    from .keys import SESSIONS

    store = app.get(STORE)
    if store is None:
        return None
    live = app[SESSIONS].sessions
    rows = await store.conversation_sessions(conversation_id)
    return [session_json(row, live.get(row["id"])) for row in rows]


async def stored_session(app: web.Application, session_id: str) -> dict[str, Any] | None:
    """An ended session no longer in memory (None when live, unknown or without a store)."""
    from .keys import SESSIONS

    store = app.get(STORE)
    if store is None or session_id in app[SESSIONS].sessions or len(session_id) > 40:
        return None
    row = await store.get_session(session_id)
    return session_json(row) if row is not None else None


async def recording_event(
    app: web.Application, type: str, session: Session, recording: dict[str, Any]
) -> None:
    """For the recording feature: ``recording.started`` / ``recording.ready`` with a
    ``recording`` object (id, format, size, duration, url...). No-op without a store."""
    if type not in ("recording.started", "recording.ready"):
        raise ValueError(f"not a recording event: {type!r}")
    webhooks = app.get(WEBHOOKS)
    if webhooks is not None:
        await webhooks.emit(type, live_json(session), data={"recording": recording})
