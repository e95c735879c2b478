"""The store on SQLite and on a real PostgreSQL: migrations, sessions, the outbox queues."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from parley.signaling import keyfile
from parley.signaling.store import MIGRATIONS, Store, database_url
from tests.signaling.postgres_server import database, postgres_server  # noqa: F401


def session_row(sid: str, conversation: str, created: float, **extra: object) -> dict[str, object]:
    return {
        "id": sid,
        "conversation_id": conversation,
        "created_at": created,
        "expires_at": created + 3600,
        "started_at": None,
        "ended_at": None,
        "end_reason": None,
        "settings": {"max_participants": 4},
        **extra,
    }


async def test_store_migrates_once_and_reopens(database: str) -> None:  # noqa: F811
    store = await Store.open(database_url("", database))
    if database.startswith("sqlite:///"):
        assert stat.S_IMODE(os.stat(database[len("sqlite:///") :]).st_mode) == 0o600
    try:
        assert await store.migrate() == len(MIGRATIONS)
        await store.save_session(session_row("s_1", "chat-1", 100.0))
    finally:
        await store.close()
    again = await Store.open(database_url("", database))
    try:
        row = await again.get_session("s_1")
        assert row is not None and row["conversation_id"] == "chat-1"
        assert row["settings"] == {"max_participants": 4}
    finally:
        await again.close()


async def test_sessions_participants_and_history(database: str) -> None:  # noqa: F811
    store = await Store.open(database_url("", database))
    try:
        for i in range(5):
            await store.save_session(
                session_row(f"s_{i}", "chat-1" if i % 2 else "chat-2", 100.0 + i)
            )
        await store.save_session(
            session_row("s_1", "chat-1", 101.0, ended_at=150.0, end_reason="ended_by_api")
        )
        await store.save_participant(
            {
                "session_id": "s_3",
                "participant_id": "p_a",
                "role": "agent",
                "name": "Ann",
                "joined_at": 110.0,
                "left_at": None,
            }
        )
        cid = await store.add_connection(
            {
                "session_id": "s_3",
                "participant_id": "p_a",
                "joined_at": 110.0,
                "user_agent": "test/1",
                "signaling": "websocket",
            }
        )
        await store.update_connection(cid, left_at=120.0)
        await store.set_network_path("s_3", "p_a", cid, "turn-tcp", "embedded")

        history = await store.conversation_sessions("chat-1")
        assert [r["id"] for r in history] == ["s_1", "s_3"]
        assert history[0]["ended_at"] == 150.0 and history[0]["end_reason"] == "ended_by_api"
        assert history[1]["participants"][0]["network_path"] == "turn-tcp"
        assert {r["id"] for r in await store.open_sessions()} == {"s_0", "s_2", "s_3", "s_4"}
        (conn,) = await store.connections_of("s_3")
        assert conn["left_at"] == 120.0 and conn["user_agent"] == "test/1"

        # newest first, two per page, cursor = (created_at, id) of the last row
        page1 = await store.list_sessions(limit=2)
        assert [r["id"] for r in page1] == ["s_4", "s_3"]
        last = page1[-1]
        page2 = await store.list_sessions(limit=2, after=(last["created_at"], last["id"]))
        assert [r["id"] for r in page2] == ["s_2", "s_1"]
        ranged = await store.list_sessions(start=101.0, end=103.0, conversation_id="chat-1")
        assert [r["id"] for r in ranged] == ["s_1"]
    finally:
        await store.close()


async def test_samples_and_events_keep_their_json(database: str) -> None:  # noqa: F811
    store = await Store.open(database_url("", database))
    try:
        await store.save_session(session_row("s_q", "chat-q", 100.0))
        rows = [
            {"session_id": "s_q", "participant_id": "p_a", "track_id": "t1", "kind": "audio",
             "leg": leg, "at": 100.0 + n, "score": score,
             "data": {"loss": 1.5, "speech": [[100.0, 100.5]], "rtt_ms": None}}
            for n, (leg, score) in enumerate([("up", 4.5), ("p_b", 3.1), ("p_b", None)])
        ]  # fmt: skip
        await store.add_samples(rows)
        got = await store.samples("s_q")
        assert [(r["leg"], r["score"]) for r in got] == [("up", 4.5), ("p_b", 3.1), ("p_b", None)]
        assert got[0]["data"] == {"loss": 1.5, "speech": [[100.0, 100.5]], "rtt_ms": None}
        worst, mean = (await store.score_summaries(["s_q", "s_none"]))["s_q"]
        assert worst == 3.1 and abs(mean - 3.8) < 1e-9
        await store.add_event(
            {"id": "evt_q", "session_id": "s_q", "type": "session.created", "created_at": 100.0,
             "payload": {"id": "evt_q", "session": {"session_id": "s_q"}}},
            [],
            100.0,
        )  # fmt: skip
        (event,) = await store.events_of("s_q")
        assert event["payload"]["session"] == {"session_id": "s_q"}
        assert await store.deliveries() == []  # no webhook URL, no outbox row
    finally:
        await store.close()


async def test_outbox_sends_a_session_in_order(database: str) -> None:  # noqa: F811
    store = await Store.open(database_url("", database))
    try:
        urls = ["http://a.test/hook", "http://b.test/hook"]
        for n, sid in enumerate(["s_x", "s_y", "s_x"]):
            await store.add_event(
                {
                    "id": f"evt_{n}",
                    "session_id": sid,
                    "type": "session.created",
                    "created_at": 10.0 + n,
                    "payload": {"n": n},
                },
                urls,
                10.0 + n,
            )
        due = await store.due_deliveries(now=100.0)
        # the head of each (url, session): evt_0 and evt_1 for both URLs, not evt_2 yet
        assert sorted((d["url"], d["event_id"]) for d in due) == [
            ("http://a.test/hook", "evt_0"),
            ("http://a.test/hook", "evt_1"),
            ("http://b.test/hook", "evt_0"),
            ("http://b.test/hook", "evt_1"),
        ]
        # two senders (machines) claim the same rows: each row goes to one of them
        won = await store.claim(due[:2], until=130.0)
        assert won == due[:2] and await store.claim(due[:2], until=140.0) == []
        assert {d["event_id"] for d in won} == {"evt_0"}
        assert {d["event_id"] for d in await store.due_deliveries(now=100.0)} == {"evt_1"}
        assert len(await store.due_deliveries(now=135.0)) == 4  # the lease ran out
        first_a = next(d for d in due if d["url"] == urls[0] and d["event_id"] == "evt_0")
        await store.delivery_failed(
            first_a["id"], next_attempt_at=200.0, status=503, error="HTTP 503"
        )
        assert all(
            d["event_id"] != "evt_2" or d["url"] != urls[0]
            for d in await store.due_deliveries(150.0)
        )
        assert await store.next_delivery_at() == 11.0  # evt_1; the evt_0 rows are leased
        for d in due:
            if d is not first_a:
                await store.delivery_done(d["id"], 101.0, 204)
        heads = await store.due_deliveries(now=150.0)
        assert [(d["url"], d["event_id"]) for d in heads] == [("http://b.test/hook", "evt_2")]
        assert sorted((d["url"], d["event_id"]) for d in await store.due_deliveries(now=250.0)) == [
            ("http://a.test/hook", "evt_0"),
            ("http://b.test/hook", "evt_2"),
        ]
    finally:
        await store.close()


def test_secrets_are_kept_private_and_reused(tmp_path: Path) -> None:
    value, made = keyfile.load_or_create(tmp_path / "data", "api-key", "pk_one")
    assert (value, made) == ("pk_one", True)
    path = tmp_path / "data" / "api-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyfile.load_or_create(tmp_path / "data", "api-key", "pk_two") == ("pk_one", False)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        keyfile.load_or_create(tmp_path / "data", "api-key", "pk_two")


def test_database_url_picks_the_async_driver(tmp_path: Path) -> None:
    assert database_url(tmp_path) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/parley.db"
    assert database_url("", "postgresql://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    with pytest.raises(ValueError, match="unsupported"):
        database_url("", "mysql://h/db")


def test_a_stored_session_answers_the_state_its_participants_give() -> None:
    """Another media worker (or node) answers from the row: someone in is 'active'."""
    from parley.signaling.store_journal import session_json

    def person(joined: float | None, left: float | None) -> dict[str, object]:
        return {"participant_id": "p_a", "role": "agent", "name": "Ann",
                "joined_at": joined, "left_at": left}  # fmt: skip

    row = {**session_row("s_w", "chat-w", 100.0), "participants": [person(None, None)]}
    assert session_json(row)["state"] == "waiting"
    row["participants"] = [person(110.0, None)]
    assert session_json(row)["state"] == "active"
    row["participants"] = [person(110.0, 120.0)]
    assert session_json(row)["state"] == "waiting"
    row.update(ended_at=130.0, participants=[person(110.0, None)])
    assert session_json(row)["state"] == "ended"
