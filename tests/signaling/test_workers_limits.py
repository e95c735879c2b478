"""The rate limits hold for the whole machine (issues 11 and 12): ``parley serve --workers 2``
allows what one process allows, not twice as much, since the control process, which sees every
request and WebSocket, applies them (the workers apply none). The same run with ``--workers 1``
shows the single process's figures."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parley.bench.signaling_client import ws_url
from tests.signaling.store_serve import ParleyProcess
from tests.signaling.ws_client import WsParticipant

SESSIONS = 4
JOINS = 4


def rate_limited_counts(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "parley_rate_limited":
            return {s.labels["limit"]: s.value for s in family.samples if s.name.endswith("_total")}
    return {}


async def sessions_per_worker(http: aiohttp.ClientSession, server: ParleyProcess) -> list[int]:
    """Open sessions on each worker once the control process has polled them all."""
    deadline = time.monotonic() + 10
    while True:
        async with http.get(f"{server.base_url}/healthz") as response:
            data = await response.json()
        counts = [w["sessions"] for w in data.get("workers", [])]
        if sum(counts) == SESSIONS or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.2)


def bound(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (another bucket of the per-address
    limits: every 127.0.0.0/8 address is the loopback)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_rate_limits_are_the_same_with_one_worker_and_two(
    tmp_path: Path, workers: str
) -> None:
    server = ParleyProcess(
        tmp_path / "data",
        "--workers",
        workers,
        "--sessions-per-minute",
        str(SESSIONS),
        "--joins-per-minute",
        str(JOINS),
        "--messages-per-second",
        "2",
    )
    await server.start()
    people: list[WsParticipant] = []
    try:
        async with aiohttp.ClientSession() as http:
            # session creation per API key: SESSIONS, then 429 + Retry-After
            created: list[dict[str, Any]] = []
            for i in range(SESSIONS):
                async with http.post(
                    f"{server.base_url}/api/v1/sessions",
                    json={"conversation_id": f"chat-{i}"},
                    headers=server.auth(),
                ) as response:
                    assert response.status == 201, await response.text()
                    created.append(await response.json())
            async with http.post(
                f"{server.base_url}/api/v1/sessions",
                json={"conversation_id": "one-too-many"},
                headers=server.auth(),
            ) as response:
                assert response.status == 429, (workers, await response.text())
                assert 1 <= int(response.headers["Retry-After"]) <= 60
                assert (await response.json())["error"]["code"] == "rate_limited"
            if workers == "2":
                # both workers hold sessions: limits kept per worker would allow twice as much
                assert await sessions_per_worker(http, server) == [2, 2]

            # join attempts per client address: JOINS (spread over both workers), then
            # rate_limited with retry_after; the socket stays and may try again later
            for session in created:
                p = WsParticipant(server.base_url, session["agent_url"], "Ann")
                people.append(p)
                assert (await p.join(media=False))["type"] == "welcome"
            late = WsParticipant(server.base_url, created[0]["customer_url"], "Carl")
            people.append(late)
            refused = await late.join(media=False)
            assert refused["type"] == "error" and refused["code"] == "rate_limited", refused
            assert refused["retry_after"] > 0
            assert not late.closed.is_set()

            # WebSocket messages per participant: the burst (10) answered, then rate_limited
            flooder = people[0]
            for _ in range(200):
                await flooder.send({"type": "dance"})
            limited = await flooder.wait_message(lambda m: m.get("code") == "rate_limited")
            assert limited["retry_after"] > 0
            await asyncio.sleep(0.2)
            assert len(flooder.errors()) <= 13, flooder.errors()
            assert not flooder.closed.is_set()

        # wrong API keys per client address: 30 answered 401 (on both workers), then 429
        async with bound("127.0.0.3") as guesser:
            statuses = []
            for i in range(31):
                sid = created[i % SESSIONS]["session_id"]
                async with guesser.get(
                    f"{server.base_url}/api/v1/sessions/{sid}",
                    headers={"Authorization": "Bearer pk_wrong"},
                ) as response:
                    statuses.append(response.status)
                    retry_after = response.headers.get("Retry-After")
            assert statuses == [401] * 30 + [429], statuses
            assert retry_after is not None and int(retry_after) >= 1

        # sockets that have not joined, per client address: 20, then 429
        async with bound("127.0.0.4") as idle:
            sockets = [await idle.ws_connect(ws_url(server.base_url)) for _ in range(20)]
            try:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused_socket:
                    await idle.ws_connect(ws_url(server.base_url))
                assert refused_socket.value.status == 429
            finally:
                for ws in sockets:
                    await ws.close()

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}/metrics") as response:
                counts = rate_limited_counts(await response.text())
        assert counts["sessions"] == 1, counts
        assert counts["joins"] == 1, counts
        assert counts["auth_failures"] == 1, counts
        assert counts["unjoined_sockets"] == 1, counts
        assert counts["messages"] >= 1, counts
    finally:
        for p in people:
            await p.close()
        await server.stop()
