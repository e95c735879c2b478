"""Several processes writing one SQLite store at once (``parley serve --workers N``): a join
burst from two processes with busy event loops ends without "database is locked", and every
write is there afterwards; a burst of WebSocket joins through two real media workers too."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
from sqlalchemy import func, select

from parley.signaling import store as store_module
from parley.signaling.store import Store, database_url
from tests.signaling.store_serve import ParleyProcess
from tests.signaling.ws_client import WsParticipant

JOINS_PER_PROCESS = 48


async def count(store: Store, table: object) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)


async def test_a_join_burst_from_two_busy_processes_writes_everything(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    first = await Store.open(database_url(folder))  # the schema once, as the control does
    await first.close()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.signaling.store_writers",
            str(folder),
            str(JOINS_PER_PROCESS),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = []
    async with asyncio.timeout(120):
        for proc in procs:
            out, _ = await proc.communicate()
            outputs.append((proc.returncode, out.decode()))
    assert all(code == 0 for code, _ in outputs), outputs
    store = await Store.open(database_url(folder))
    try:
        joins = 2 * JOINS_PER_PROCESS
        assert await count(store, store_module.participants) == joins
        assert await count(store, store_module.connections) == joins
        assert await count(store, store_module.events) == joins
        assert await count(store, store_module.webhook_deliveries) == joins
        assert await count(store, store_module.quality_samples) == 5 * joins
        assert await count(store, store_module.sessions) == joins // 2
    finally:
        await store.close()


async def test_sixty_websocket_joins_at_once_on_two_workers(tmp_path: Path) -> None:
    # --joins-per-minute 0: all sixty sockets come from one address, above its limit of
    # unjoined sockets (test_workers_limits.py tests that limit)
    server = ParleyProcess(tmp_path / "data", "--workers", "2", "--joins-per-minute", "0")
    await server.start()
    people: list[WsParticipant] = []
    try:
        async with aiohttp.ClientSession() as http:
            sessions = []
            for i in range(30):
                async with http.post(
                    f"{server.base_url}/api/v1/sessions",
                    json={"conversation_id": f"burst-{i}"},
                    headers=server.auth(),
                ) as response:
                    assert response.status == 201, await response.text()
                    sessions.append(await response.json())
        for i, session in enumerate(sessions):
            people.append(WsParticipant(server.base_url, session["agent_url"], f"A{i}"))
            people.append(WsParticipant(server.base_url, session["customer_url"], f"C{i}"))
        welcomes = await asyncio.gather(*(p.join(media=False, timeout=60) for p in people))
        assert [w["type"] for w in welcomes] == ["welcome"] * 60, [
            w for w in welcomes if w["type"] != "welcome"
        ]
        async with aiohttp.ClientSession() as http:
            listed = []
            for session in sessions:
                async with http.get(
                    f"{server.base_url}/api/v1/sessions/{session['session_id']}",
                    headers=server.auth(),
                ) as response:
                    assert response.status == 200
                    listed.append(len((await response.json())["participants"]))
        assert listed == [2] * 30, listed
    finally:
        await asyncio.gather(*(p.close() for p in people))
        await server.stop()
    assert b"database is locked" not in server.output, server.output.decode()[-3000:]
