"""The persistent store: sessions, participants and their connections, quality samples, events
and the webhook outbox.

SQLAlchemy 2 Core on an async driver: aiosqlite (the default, a file in the data directory; the
driver runs SQLite in its own thread) or asyncpg (``--database-url postgresql://...``). Same
tables, same queries, same code path. Nothing here blocks the event loop.

Migrations are a small versioned table (``schema_version``) and an ordered list of steps, each
run once in its own transaction (PostgreSQL: under an advisory lock, so several machines
starting together migrate once). Alembic would add a script directory, an ``env.py`` and Mako to
the installed package for what is, so far, one ``CREATE TABLE`` step; when the schema starts to
change often, the steps below translate one to one into Alembic revisions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

logger = logging.getLogger(__name__)

DATABASE_FILE = "parley.db"

SQLITE_BUSY_TIMEOUT_MS = 10000
"""How long an SQLite write waits for another process's write lock (each holds it for a few
milliseconds: the whole transaction runs in the writer thread, never across event loop turns)."""
SQLITE_BUSY_RETRIES = 3
"""Further attempts of a write that still found the database locked (after a short random
delay), before the error is raised."""

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("conversation_id", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("end_reason", String(40)),
    Column("settings", JSON, nullable=False),
    Index("ix_sessions_conversation", "conversation_id", "created_at"),
    Index("ix_sessions_created", "created_at"),
)

participants = Table(
    "participants",
    metadata,
    Column("session_id", String(40), ForeignKey("sessions.id"), primary_key=True),
    Column("participant_id", String(40), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("name", String(80), nullable=False),
    Column("joined_at", Float),
    Column("left_at", Float),
    Column("network_path", String(20)),
    # host-udp, turn-udp, turn-tcp, turn-tls (from the nominated candidate pair).
    Column("turn_server", String(20)),
    # embedded or external (when the path is TURN).
)

connections = Table(
    "connections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("participant_id", String(40), nullable=False),
    Column("joined_at", Float, nullable=False),
    Column("left_at", Float),
    Column("user_agent", String(300), nullable=False),
    Column("signaling", String(20), nullable=False),
    # How the participant connected: "websocket" today.
    Column("network_path", String(20)),
    Column("turn_server", String(20)),
    Index("ix_connections_session", "session_id", "joined_at"),
)

quality_samples = Table(
    "quality_samples",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("participant_id", String(40), nullable=False),
    # Whose track (the publisher).
    Column("track_id", String(40), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("leg", String(60), nullable=False),
    # "up" (publisher -> relay) or the subscriber's participant id (relay -> subscriber).
    Column("at", Float, nullable=False),
    Column("score", Float),
    Column("data", JSON, nullable=False),
    Index("ix_samples_session", "session_id", "at"),
)

events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("session_id", String(40), nullable=False),
    Column("type", String(40), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("payload", JSON, nullable=False),
    Index("ix_events_session", "session_id", "seq"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_seq", Integer, ForeignKey("events.seq"), nullable=False),
    Column("session_id", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("delivered_at", Float),
    Column("abandoned_at", Float),
    # Set when the retry window passed without a 2xx (the session's next events go on).
    Column("last_status", Integer),
    Column("last_error", String(300)),
    Index("ix_deliveries_pending", "delivered_at", "abandoned_at", "url", "session_id", "id"),
)


# --- migrations ------------------------------------------------------------------------------


def _v1_initial(conn: Connection) -> None:
    # the first schema; later steps ALTER what exists (never edit this one once released)
    metadata.create_all(conn, tables=[t for t in metadata.sorted_tables if t is not schema_version])


MIGRATIONS: list[Callable[[Connection], None]] = [_v1_initial]
"""Schema steps in order; step i brings the schema to version i + 1."""


def database_url(data_dir: str | os.PathLike[str], url: str = "") -> str:
    """The SQLAlchemy async URL: ``url`` (postgresql://, sqlite://) or SQLite in ``data_dir``."""
    if not url:
        return f"sqlite+aiosqlite:///{Path(data_dir).resolve() / DATABASE_FILE}"
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r} (postgresql or sqlite)"
    )


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


Transaction = Callable[[Connection], Any]
"""The body of one write transaction, run on a synchronous connection."""


class Store:
    """One database; every method is a coroutine running one short transaction.

    Writes to SQLite run whole in one writer thread per process, on the standard library
    driver, under ``BEGIN IMMEDIATE``: the database's single write lock is held only while the
    statements run, never while an await waits for a busy event loop (with aiosqlite each
    statement is a round trip through the loop, and several media workers' joins on a loaded
    machine then wait past any busy timeout: "database is locked"). Reads stay on aiosqlite;
    in WAL mode they never wait for the writer. PostgreSQL runs everything on asyncpg."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        options: dict[str, Any] = {}
        if self.dialect == "postgresql":
            options = {"pool_size": 5, "max_overflow": 5, "pool_pre_ping": True}
        self.engine: AsyncEngine = create_async_engine(url, **options)
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._write_engine: Engine | None = None
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        if self.dialect == "sqlite" and make_url(url).database not in (None, "", ":memory:"):
            self._writer = concurrent.futures.ThreadPoolExecutor(1, "parley-store-writer")
            self._write_engine = create_engine(
                make_url(url).set(drivername="sqlite+pysqlite"), pool_size=1, max_overflow=0
            )
            event.listen(self._write_engine, "connect", _sqlite_writer_connect)
            event.listen(self._write_engine, "begin", _sqlite_begin_immediate)

    async def _write(self, transaction: Transaction) -> Any:
        """Run ``transaction`` in one transaction and return its result."""
        if self._writer is None:
            async with self.engine.begin() as conn:
                return await conn.run_sync(transaction)
        loop = asyncio.get_running_loop()
        for attempt in range(SQLITE_BUSY_RETRIES + 1):
            try:
                return await loop.run_in_executor(self._writer, self._run_sqlite, transaction)
            except OperationalError as exc:
                if attempt == SQLITE_BUSY_RETRIES or not _is_busy(exc):
                    raise
                logger.warning("store: the database was locked; retrying the write")
                await asyncio.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_sqlite(self, transaction: Transaction) -> Any:
        assert self._write_engine is not None
        with self._write_engine.begin() as conn:
            return transaction(conn)

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect and migrate to the latest schema."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            await asyncio.to_thread(_make_private_file, Path(parsed.database))
        store = cls(url)
        try:
            await store.migrate()
        except Exception:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self.engine.dispose()
        if self._writer is not None and self._write_engine is not None:
            # the writer's connection belongs to its thread: closed there
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_engine.dispose
            )
            self._writer.shutdown(wait=False)

    async def migrate(self) -> int:
        """Apply the missing steps; returns the schema version."""
        postgresql = self.dialect == "postgresql"

        def steps(conn: Connection) -> None:
            if postgresql:
                conn.execute(text("SELECT pg_advisory_xact_lock(7263019)"))
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"the database schema (version {current}) is newer than this parley "
                    f"({len(MIGRATIONS)})"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                MIGRATIONS[version - 1](conn)
                conn.execute(insert(schema_version).values(version=version, applied_at=_now()))
                logger.info("store: schema migrated to version %d", version)

        await self._write(steps)
        return len(MIGRATIONS)

    # --- sessions and participants -----------------------------------------------------------

    async def save_session(self, row: dict[str, Any]) -> None:
        """Insert or update one session (``row`` has every column)."""
        await self._write(lambda conn: _upsert(conn, sessions, {"id": row["id"]}, row))

    async def save_participant(self, row: dict[str, Any]) -> None:
        key = {"session_id": row["session_id"], "participant_id": row["participant_id"]}
        await self._write(lambda conn: _upsert(conn, participants, key, row))

    async def add_connection(self, row: dict[str, Any]) -> int:
        def add(conn: Connection) -> int:
            key = conn.execute(insert(connections).values(**row)).inserted_primary_key
            assert key is not None
            return int(key[0])

        return int(await self._write(add))

    async def update_connection(self, connection_id: int, **values: Any) -> None:
        await self._write(
            lambda conn: conn.execute(
                update(connections).where(connections.c.id == connection_id).values(**values)
            )
        )

    async def set_network_path(
        self, session_id: str, participant_id: str, connection_id: int | None, path: str, turn: str
    ) -> None:
        def set_path(conn: Connection) -> None:
            conn.execute(
                update(participants)
                .where(
                    and_(
                        participants.c.session_id == session_id,
                        participants.c.participant_id == participant_id,
                    )
                )
                .values(network_path=path, turn_server=turn or None)
            )
            if connection_id is not None:
                conn.execute(
                    update(connections)
                    .where(connections.c.id == connection_id)
                    .values(network_path=path, turn_server=turn or None)
                )

        await self._write(set_path)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._sessions_where(sessions.c.id == session_id)
        return rows[0] if rows else None

    async def open_sessions(self) -> list[dict[str, Any]]:
        """Sessions not ended (waiting or active when parley stopped), with participants."""
        return await self._sessions_where(sessions.c.ended_at.is_(None))

    async def ended_since(self, since: float) -> list[dict[str, Any]]:
        """Sessions that ended at or after ``since`` (their join tokens may still be valid)."""
        return await self._sessions_where(sessions.c.ended_at >= since)

    async def conversation_sessions(self, conversation_id: str) -> list[dict[str, Any]]:
        return await self._sessions_where(sessions.c.conversation_id == conversation_id)

    async def list_sessions(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        conversation_id: str | None = None,
        limit: int = 50,
        after: tuple[float, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Sessions created in [start, end), newest first, after the cursor ``(created_at, id)``."""
        clauses: list[Any] = []
        if start is not None:
            clauses.append(sessions.c.created_at >= start)
        if end is not None:
            clauses.append(sessions.c.created_at < end)
        if conversation_id is not None:
            clauses.append(sessions.c.conversation_id == conversation_id)
        if after is not None:
            created, sid = after
            clauses.append(
                (sessions.c.created_at < created)
                | and_(sessions.c.created_at == created, sessions.c.id < sid)
            )
        return await self._sessions_where(and_(true(), *clauses), newest_first=True, limit=limit)

    async def _sessions_where(
        self, clause: Any, *, newest_first: bool = False, limit: int | None = None
    ) -> list[dict[str, Any]]:
        order = (
            (sessions.c.created_at.desc(), sessions.c.id.desc())
            if newest_first
            else (sessions.c.created_at, sessions.c.id)
        )
        query = select(sessions).where(clause).order_by(*order)
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            people: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
            for p in await conn.execute(
                select(participants)
                .where(participants.c.session_id.in_(ids))
                .order_by(participants.c.joined_at)
            ):
                people[p.session_id].append(dict(p._mapping))
        for row in rows:
            row["participants"] = people[row["id"]]
        return rows

    async def connections_of(self, session_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(connections)
                .where(connections.c.session_id == session_id)
                .order_by(connections.c.joined_at, connections.c.id)
            )
            return [dict(r._mapping) for r in result]

    # --- quality samples ---------------------------------------------------------------------

    async def add_samples(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        batch = list(rows)
        await self._write(lambda conn: conn.execute(insert(quality_samples), batch))

    async def samples(self, session_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(quality_samples)
                .where(quality_samples.c.session_id == session_id)
                .order_by(quality_samples.c.at, quality_samples.c.id)
            )
            return [dict(r._mapping) for r in result]

    async def score_summaries(self, session_ids: list[str]) -> dict[str, tuple[float, float]]:
        """(worst, mean) sample score of each session that has scored samples."""
        if not session_ids:
            return {}
        c = quality_samples.c
        query = (
            select(c.session_id, func.min(c.score), func.avg(c.score))
            .where(c.session_id.in_(session_ids), c.score.is_not(None))
            .group_by(c.session_id)
        )
        async with self.engine.connect() as conn:
            return {sid: (float(low), float(mean)) for sid, low, mean in await conn.execute(query)}

    # --- events and the webhook outbox -------------------------------------------------------

    async def add_event(self, row: dict[str, Any], urls: Iterable[str], now: float) -> int:
        """Store an event and, in the same transaction, one outbox row per webhook URL."""
        targets = list(urls)

        def add(conn: Connection) -> int:
            key = conn.execute(insert(events).values(**row)).inserted_primary_key
            assert key is not None
            seq = int(key[0])
            deliveries = [
                {
                    "event_seq": seq,
                    "session_id": row["session_id"],
                    "url": url,
                    "created_at": now,
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for url in targets
            ]
            if deliveries:
                conn.execute(insert(webhook_deliveries), deliveries)
            return seq

        return int(await self._write(add))

    async def recorded_sessions(self, session_ids: list[str]) -> set[str]:
        """Those of ``session_ids`` that recorded something (a ``recording.started`` event)."""
        if not session_ids:
            return set()
        query = (
            select(events.c.session_id)
            .where(events.c.session_id.in_(session_ids), events.c.type == "recording.started")
            .distinct()
        )
        async with self.engine.connect() as conn:
            return {sid for (sid,) in await conn.execute(query)}

    async def events_of(self, session_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(events).where(events.c.session_id == session_id).order_by(events.c.seq)
            )
            return [dict(r._mapping) for r in result]

    async def due_deliveries(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """The head of each (URL, session) queue when its next attempt is due: later events of
        a session wait until the one before is delivered (or abandoned)."""
        pending = and_(
            webhook_deliveries.c.delivered_at.is_(None),
            webhook_deliveries.c.abandoned_at.is_(None),
        )
        heads = (
            select(func.min(webhook_deliveries.c.id).label("id"))
            .where(pending)
            .group_by(webhook_deliveries.c.url, webhook_deliveries.c.session_id)
            .subquery()
        )
        query = (
            select(
                webhook_deliveries,
                events.c.id.label("event_id"),
                events.c.type.label("event_type"),
                events.c.created_at.label("event_created_at"),
                events.c.payload,
            )
            .join(heads, heads.c.id == webhook_deliveries.c.id)
            .join(events, events.c.seq == webhook_deliveries.c.event_seq)
            .where(webhook_deliveries.c.next_attempt_at <= now)
            .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def claim(self, rows: list[dict[str, Any]], until: float) -> list[dict[str, Any]]:
        """Take the due rows for this process until ``until`` (a lease: several machines on
        one PostgreSQL never send the same row at once; a crashed sender's rows come back
        when the lease ends). Returns the rows this call won."""

        def take(conn: Connection) -> list[dict[str, Any]]:
            won = []
            for row in rows:
                result = conn.execute(
                    update(webhook_deliveries)
                    .where(
                        and_(
                            webhook_deliveries.c.id == row["id"],
                            webhook_deliveries.c.next_attempt_at == row["next_attempt_at"],
                            webhook_deliveries.c.delivered_at.is_(None),
                        )
                    )
                    .values(next_attempt_at=until)
                )
                if result.rowcount == 1:
                    won.append(row)
            return won

        return list(await self._write(take))

    async def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due (None: nothing pending)."""
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(func.min(webhook_deliveries.c.next_attempt_at)).where(
                        webhook_deliveries.c.delivered_at.is_(None),
                        webhook_deliveries.c.abandoned_at.is_(None),
                    )
                )
            ).scalar()

    async def delivery_done(self, delivery_id: int, at: float, status: int) -> None:
        await self._write(
            lambda conn: conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(
                    delivered_at=at,
                    last_status=status,
                    last_error=None,
                    attempts=webhook_deliveries.c.attempts + 1,
                )
            )
        )

    async def delivery_failed(
        self,
        delivery_id: int,
        *,
        next_attempt_at: float,
        status: int | None,
        error: str,
        abandon_at: float | None = None,
    ) -> None:
        await self._write(
            lambda conn: conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(
                    next_attempt_at=next_attempt_at,
                    last_status=status,
                    last_error=error[:300],
                    abandoned_at=abandon_at,
                    attempts=webhook_deliveries.c.attempts + 1,
                )
            )
        )

    async def deliveries(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(webhook_deliveries).order_by(webhook_deliveries.c.id)
            )
            return [dict(r._mapping) for r in result]


def _upsert(conn: Connection, table: Table, key: dict[str, Any], row: dict[str, Any]) -> None:
    # portable (SQLite and PostgreSQL): update, insert when nothing matched
    clause = and_(*(table.c[name] == value for name, value in key.items()))
    values = {k: v for k, v in row.items() if k not in key}
    result = conn.execute(update(table).where(clause).values(**values))
    if result.rowcount == 0:
        conn.execute(insert(table).values(**row))


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: the next one waits
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_writer_connect(dbapi_connection: Any, record: Any) -> None:
    # no implicit BEGIN from the driver: _sqlite_begin_immediate opens each transaction
    dbapi_connection.isolation_level = None
    _sqlite_pragmas(dbapi_connection, record)


def _sqlite_begin_immediate(conn: Connection) -> None:
    # take the write lock first (a deferred transaction that read before writing gets
    # SQLITE_BUSY at once, without waiting, when another process wrote in between)
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _is_busy(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message


def _make_private_file(path: Path) -> None:
    # the database holds names and user agents: only our user reads it (SQLite gives its
    # -wal and -shm files the database file's mode)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _now() -> float:
    return time.time()
