"""SIGTERM during a call (issue 12): a real ``parley serve`` with a real two-party call stops
accepting sessions (503), closes every WebSocket with 1001 GOING_AWAY (the page reconnects),
closes the peers and exits within 10 s."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp

from parley.signaling.app import shutdown
from parley.signaling.keys import SESSIONS
from tests.signaling.conftest import Service
from tests.signaling.test_cli import free_port
from tests.signaling.test_media import assert_two_way_media, call
from tests.signaling.ws_client import WsParticipant

API_KEY = "shutdown-test-key"


async def start_serve(*extra: str) -> tuple[asyncio.subprocess.Process, str, bytearray]:
    port, turn_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.signaling", "serve",
        "--port", str(port), "--turn-port", str(turn_port), f"--api-key={API_KEY}", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    output = bytearray()
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while b"create a session" not in output:
            line = await proc.stdout.readline()
            assert line, output.decode()
            output += line
    return proc, f"http://127.0.0.1:{port}", output


async def test_sigterm_during_a_call_tells_pages_to_reconnect_and_exits_in_time() -> None:
    # no TURN: the aiortc test clients would spend a minute deallocating from a stopped server
    proc, base, output = await start_serve("--turn-port", "0")
    assert proc.stdout is not None
    reader = None
    try:
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            async with http.post(
                f"{base}/api/v1/sessions", json={"conversation_id": "sigterm"}, headers=auth
            ) as response:
                assert response.status == 201
                session = await response.json()
            agent, customer = await call(base, session["agent_url"], session["customer_url"])
            try:
                await assert_two_way_media(agent, customer)

                async def collect() -> None:
                    while line := await proc.stdout.readline():  # type: ignore[union-attr]
                        output.extend(line)

                reader = asyncio.ensure_future(collect())
                proc.send_signal(signal.SIGTERM)
                started = time.monotonic()
                for p in (agent, customer):
                    await asyncio.wait_for(p.closed.wait(), 10)
                    assert p.close_code == 1001, p.close_code  # GOING_AWAY: reconnect
                async with asyncio.timeout(10):
                    returncode = await proc.wait()
                elapsed = time.monotonic() - started
                # nothing is accepted any more
                try:
                    async with http.post(
                        f"{base}/api/v1/sessions", json={"conversation_id": "late"}, headers=auth
                    ) as response:
                        raise AssertionError(f"answered {response.status} after exiting")
                except aiohttp.ClientConnectionError:
                    pass
            finally:
                await agent.close()
                await customer.close()
        await asyncio.wait_for(reader, 5)
        log = output.decode(errors="replace")
        assert returncode == 0, log
        assert elapsed < 10, (elapsed, log)
        assert "Traceback" not in log, log
        assert "telling 2 connected pages to reconnect" in log, log
        assert log.rstrip().endswith("stopped"), log[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if reader is not None:
            reader.cancel()


async def test_draining_service_refuses_sessions_and_joins_with_503(service: Service) -> None:
    session = await service.create_session()
    agent = WsParticipant(service.base_url, session["agent_url"], "Ann")
    assert (await agent.join(media=False))["type"] == "welcome"
    pending = WsParticipant(service.base_url, session["customer_url"], "Carl")
    await pending.connect()
    try:
        await shutdown(service.app)
        for p in (agent, pending):
            await asyncio.wait_for(p.closed.wait(), 10)
            assert p.close_code == 1001
        async with service.http.post(
            f"{service.base_url}/api/v1/sessions",
            json={"conversation_id": "late"},
            headers=service.auth(),
        ) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
            assert (await response.json())["error"]["code"] == "shutting_down"
        async with service.http.get(f"{service.base_url}/api/v1/ws") as response:
            assert response.status == 503
        # the session is not ended: a restarted server that kept it lets the pages back in
        state = service.app[SESSIONS].get(session["session_id"])
        assert state.ended_at is None and not state.connected()
    finally:
        await agent.close()
        await pending.close()
