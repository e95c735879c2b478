"""A restart of a real ``parley serve`` during a two-party call loses nothing: the history,
the session and its join URLs survive, and both participants are back in the call by
themselves within 10 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.media_client import wait_for
from tests.signaling.postgres_server import create_database, postgres_server  # noqa: F401
from tests.signaling.store_serve import ParleyProcess, RejoiningParticipant
from tests.signaling.ws_client import WsParticipant


def in_call(a: RejoiningParticipant, b: RejoiningParticipant, frames: int = 10) -> bool:
    return all(
        x.frames_from(y, kind) >= frames for x, y in ((a, b), (b, a)) for kind in ("audio", "video")
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request: pytest.FixtureRequest) -> list[str]:
    """No flag (SQLite in the data directory, the default), or a real PostgreSQL."""
    if request.param == "sqlite":
        return []
    return ["--database-url", create_database(request.getfixturevalue("postgres_server"))]


async def test_restart_during_a_call_keeps_session_urls_and_history(
    tmp_path: Path, store_args: list[str]
) -> None:
    server = ParleyProcess(tmp_path / "data", *store_args)
    await server.start()
    agent = customer = None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{server.base_url}/api/v1/sessions",
                json={"conversation_id": "chat-restart"},
                headers=server.auth(),
            ) as response:
                assert response.status == 201
                session = await response.json()
            sid = session["session_id"]
            agent = RejoiningParticipant(server.base_url, session["agent_url"], "Ann")
            customer = RejoiningParticipant(server.base_url, session["customer_url"], "Carl")
            agent.start()
            customer.start()
            assert await wait_for(lambda: in_call(agent, customer), timeout=30)
            api_key = server.api_key

            await server.stop()
            stopped_at = time.monotonic()
            await server.start()
            restarted_at = time.monotonic()
            assert server.api_key == api_key  # kept in the data directory

            # nobody clicks: both rejoin with the same tokens and media flows again
            assert await wait_for(
                lambda: agent.joins >= 2 and customer.joins >= 2 and in_call(agent, customer),
                timeout=10,
            ), (agent.joins, customer.joins, server.output.decode()[-3000:])
            back_after = time.monotonic() - restarted_at
            print(
                f"server down {restarted_at - stopped_at:.1f} s; both back in the call "
                f"{back_after:.1f} s after the restart"
            )

            async with http.get(
                f"{server.base_url}/api/v1/sessions/{sid}", headers=server.auth()
            ) as r:
                state = await r.json()
            assert state["state"] == "active"
            assert {p["name"] for p in state["participants"]} == {"Ann", "Carl"}
            async with http.get(
                f"{server.base_url}/api/v1/conversations/chat-restart/sessions",
                headers=server.auth(),
            ) as r:
                history = (await r.json())["sessions"]
            assert [s["session_id"] for s in history] == [sid]
            async with http.get(session["customer_url"]) as page:
                assert page.status == 200
            # the shutdown recorded both leaves before the rejoins
            async with http.get(
                f"{server.base_url}/api/v1/sessions/{sid}/report", headers=server.auth()
            ) as r:
                types = [e["type"] for e in (await r.json())["timeline"]]
            members = [t for t in types if t.startswith("participant.")]
            assert members[2:4] == ["participant.left"] * 2, types
            assert members.count("participant.joined") >= 4, types

            # the history of ended sessions survives a restart too
            async with http.delete(
                f"{server.base_url}/api/v1/sessions/{sid}", headers=server.auth()
            ) as r:
                assert r.status == 204
            await asyncio.sleep(0)
            await server.stop()
            await server.start()
            async with http.get(
                f"{server.base_url}/api/v1/conversations/chat-restart/sessions",
                headers=server.auth(),
            ) as r:
                (ended,) = (await r.json())["sessions"]
            assert ended["session_id"] == sid and ended["state"] == "ended"
            assert ended["end_reason"] == "ended_by_api"
            async with http.get(
                f"{server.base_url}/api/v1/sessions/{sid}", headers=server.auth()
            ) as r:
                assert (await r.json())["state"] == "ended"
            late = WsParticipant(server.base_url, session["agent_url"], "Ann")
            try:  # its link still answers, with "ended" rather than "no such session"
                reply = await late.join(media=False)
                assert reply["type"] == "error" and reply["code"] == "session_ended", reply
            finally:
                await late.close()
    finally:
        for p in (agent, customer):
            if p is not None:
                await p.close()
        await server.stop()
    # join tokens are secrets: never in the output
    for url in (session["agent_url"], session["customer_url"]):
        assert url.rsplit("/", 1)[-1].encode() not in server.output


async def test_a_killed_parley_comes_back_with_its_waiting_session(tmp_path: Path) -> None:
    """No clean shutdown (SIGKILL): the session and its URLs are still there."""
    import signal

    server = ParleyProcess(tmp_path / "data")
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{server.base_url}/api/v1/sessions",
                json={"conversation_id": "chat-kill"},
                headers=server.auth(),
            ) as response:
                session = await response.json()
            first = WsParticipant(server.base_url, session["agent_url"], "Ann")
            assert (await first.join(media=False))["type"] == "welcome"
            await server.stop(signal.SIGKILL)
            await first.close()
            await server.start()
            again = WsParticipant(server.base_url, session["agent_url"], "Ann")
            try:
                welcome = await again.join(media=False)
                assert (
                    welcome["type"] == "welcome" and welcome["session_id"] == session["session_id"]
                )
                assert welcome["participant_id"] == first.id
            finally:
                await again.close()
            async with http.get(
                f"{server.base_url}/api/v1/conversations/chat-kill/sessions", headers=server.auth()
            ) as r:
                (listed,) = (await r.json())["sessions"]
            assert listed["session_id"] == session["session_id"]
    finally:
        await server.stop()
