"""No secret in any log (issue 12): a full relay-only call through the embedded TURN server with
DEBUG logging everywhere; the output never holds the API key, the token-signing key, a join
token (or its signature), the TURN shared secret or a TURN password."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.signaling.test_hardening_shutdown import API_KEY, start_serve
from tests.signaling.test_media import assert_two_way_media, call

TOKEN_SECRET = "token-signing-key-0123456789abcdef"
TURN_SECRET = "turn-shared-secret-0123456789"


async def test_a_full_call_with_debug_logging_leaks_no_secret() -> None:
    proc, base, output = await start_serve(
        "--log-level", "DEBUG",
        f"--token-secret={TOKEN_SECRET}",
        f"--turn-secret={TURN_SECRET}",
        "--ice-transport-policy", "relay",
    )  # fmt: skip
    assert proc.stdout is not None

    async def collect() -> None:
        while line := await proc.stdout.readline():  # type: ignore[union-attr]
            output.extend(line)

    reader = asyncio.ensure_future(collect())
    secrets: dict[str, str] = {
        "api key": API_KEY,
        "token secret": TOKEN_SECRET,
        "turn secret": TURN_SECRET,
    }
    try:
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            async with http.post(
                f"{base}/api/v1/sessions", json={"conversation_id": "secrets"}, headers=auth
            ) as response:
                assert response.status == 201
                session = await response.json()
            async with http.get(session["agent_url"]) as page:
                assert page.status == 200
            agent, customer = await call(base, session["agent_url"], session["customer_url"])
            try:
                await assert_two_way_media(agent, customer)
                for name, url in (
                    ("agent", session["agent_url"]),
                    ("customer", session["customer_url"]),
                ):
                    token = url.rsplit("/", 1)[1]
                    secrets[f"{name} join token"] = token
                    secrets[f"{name} token signature"] = token.rsplit(".", 1)[1]
                for p in (agent, customer):
                    assert p.welcome is not None
                    for server in p.welcome["ice_servers"]:
                        secrets[f"TURN password of {p.name}"] = server["credential"]
                        assert server["credential"]
            finally:
                await agent.close()
                await customer.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                await proc.wait()
        await asyncio.wait_for(reader, 5)
    log = output.decode(errors="replace")
    assert "DEBUG" in log and "TURN" in log and len(log) > 10000  # it did log, at DEBUG
    leaked = [name for name, secret in secrets.items() if secret in log]
    assert not leaked, leaked
