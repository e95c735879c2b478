"""With ``--workers 2`` recording, reports (the network path through the control process's TURN
server included), webhooks and the metrics work as with one process, through the control
process's port."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from parley.signaling.webhooks import new_secret
from tests.media_client import wait_for
from tests.signaling.store_serve import ParleyProcess
from tests.signaling.test_reports import RelayOnlyParticipant
from tests.signaling.webhook_receiver import webhook_receiver
from tests.signaling.ws_client import WsParticipant


async def get(http: aiohttp.ClientSession, server: ParleyProcess, path: str) -> Any:
    async with http.get(f"{server.base_url}{path}", headers=server.auth()) as response:
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()


async def test_recording_reports_webhooks_and_metrics_with_two_workers(tmp_path: Path) -> None:
    secret = new_secret()
    async with webhook_receiver(secret, fail_for=0.0) as receiver:
        server = ParleyProcess(
            tmp_path / "data",
            "--workers",
            "2",
            "--webhook-url",
            receiver.url,
            "--webhook-secret",
            secret,
            "--report-interval",
            "0.5",
        )
        await server.start()
        people: list[WsParticipant] = []
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{server.base_url}/api/v1/sessions",
                    json={"conversation_id": "chat-w", "record": True},
                    headers=server.auth(),
                ) as response:
                    assert response.status == 201
                    session = await response.json()
                sid = session["session_id"]
                probe = WsParticipant(server.base_url, session["agent_url"], "probe")
                welcome = await probe.join(media=False)
                await probe.close()
                assert welcome["recording"] == "recording"
                tcp_url = next(
                    u for u in welcome["ice_servers"][0]["urls"] if u.endswith("transport=tcp")
                )
                agent = RelayOnlyParticipant(
                    server.base_url, session["agent_url"], "Ann", turn_urls=[tcp_url]
                )
                customer = WsParticipant(server.base_url, session["customer_url"], "Carl")
                people = [agent, customer]
                for p in people:
                    assert (await p.join())["type"] == "welcome"
                    await p.publish()
                a, c = agent.client, customer.client
                assert a is not None and c is not None
                assert await wait_for(
                    lambda: (
                        a.frames_from(customer.id, "video") >= 30
                        and c.frames_from(agent.id, "video") >= 30
                    ),
                    timeout=30,
                )
                listing = await get(http, server, f"/api/v1/sessions/{sid}/recordings")
                assert {r["state"] for r in listing["recordings"]} == {"recording"}
                async with http.get(f"{server.base_url}/metrics") as response:
                    text = await response.text()
                assert 'parley_sessions{state="active"} 1' in text
                assert "parley_participants 2" in text
                assert "turn_total_allocations" in text  # the control process's TURN server
                await asyncio.sleep(2.0)  # report samples of the call (every 0.5 s)
                async with http.delete(
                    f"{server.base_url}/api/v1/sessions/{sid}", headers=server.auth()
                ) as response:
                    assert response.status == 204

                async def recordings_ready() -> bool:
                    data = await get(http, server, f"/api/v1/sessions/{sid}/recordings")
                    return len(data["recordings"]) == 2 and all(
                        r["state"] == "ready" for r in data["recordings"]
                    )

                for _ in range(120):
                    if await recordings_ready():
                        break
                    await asyncio.sleep(0.5)
                assert await recordings_ready()
                data = await get(http, server, f"/api/v1/sessions/{sid}/recordings")
                async with http.get(data["recordings"][0]["url"], headers=server.auth()) as r:
                    assert r.status == 200 and len(await r.read()) > 1000

                report = await get(http, server, f"/api/v1/sessions/{sid}/report")
                paths = {
                    p["name"]: (p["network_path"], p["turn_server"]) for p in report["participants"]
                }
                assert paths == {"Ann": ("turn-tcp", "embedded"), "Carl": ("host-udp", None)}
                listed = await get(http, server, "/api/v1/reports")
                assert sid in str(listed)

                expected = ["session.created", "session.ended"]  # (the probe's join: no "started")
                assert await wait_for(
                    lambda: all(t in receiver.by_session().get(sid, []) for t in expected),
                    timeout=20,
                ), receiver.by_session()[sid]
                events = receiver.by_session()[sid]
                assert events.count("session.created") == 1  # once, not once per worker
                assert events.count("participant.joined") == 3  # probe, Ann, Carl
                assert events.count("session.ended") == 1
        finally:
            for p in people:
                await p.close()
            await server.stop()
