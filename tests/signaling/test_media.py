"""Media end to end through the signaling service: real aiortc clients, real DTLS/SRTP, the
relay, and TURN over TCP (our embedded server, and a real coturn)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.signaling.config import TurnSettings
from parley.signaling.keys import TURN_SERVER
from tests.media_client import wait_for
from tests.signaling.conftest import ServiceFactory
from tests.signaling.ws_client import WsParticipant


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def call(
    base_url: str, agent_url: str, customer_url: str, **media: object
) -> tuple[WsParticipant, WsParticipant]:
    agent = WsParticipant(base_url, agent_url, "Ann", **media)
    customer = WsParticipant(base_url, customer_url, "Carl", **media)
    for p in (agent, customer):
        welcome = await p.join()
        assert welcome["type"] == "welcome", welcome
    await agent.publish()
    await customer.publish()
    return agent, customer


async def assert_two_way_media(agent: WsParticipant, customer: WsParticipant) -> None:
    a, c = agent.client, customer.client
    assert a is not None and c is not None
    ok = await wait_for(
        lambda: (
            a.frames_from(customer.id, "video") >= 15
            and c.frames_from(agent.id, "video") >= 15
            and a.frames_from(customer.id, "audio") >= 15
            and c.frames_from(agent.id, "audio") >= 15
        ),
        timeout=60,
    )
    assert ok, (dict(a.frames), dict(c.frames), a.offered_tracks, c.offered_tracks)


async def test_two_clients_talk_through_the_service(service_factory: ServiceFactory) -> None:
    service = await service_factory()
    session = await service.create_session()
    agent, customer = await call(service.base_url, session["agent_url"], session["customer_url"])
    try:
        await assert_two_way_media(agent, customer)
        async with service.http.get(
            f"{service.base_url}/api/v1/sessions/{session['session_id']}", headers=service.auth()
        ) as response:
            assert (await response.json())["state"] == "active"
    finally:
        await agent.close()
        await customer.close()


def selected_local_candidate_type(participant: WsParticipant) -> set[str]:
    """Types of the local candidates aiortc's ICE nominated on both peer connections."""
    assert participant.client is not None
    kinds = set()
    for pc in (participant.client.pub, participant.client.sub):
        for transceiver in pc.getTransceivers():
            connection = transceiver.receiver.transport.transport._connection
            pair = connection._nominated.get(1)
            if pair is not None:
                kinds.add(pair.local_candidate.type)
    return kinds


async def test_relay_only_clients_reach_the_relay_through_embedded_turn_over_tcp(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(ice_transport_policy="relay")
    session = await service.create_session()
    agent_url, customer_url = session["agent_url"], session["customer_url"]
    probe = WsParticipant(service.base_url, agent_url, "probe")
    welcome = await probe.join(media=False)
    await probe.close()
    assert welcome["ice_transport_policy"] == "relay"
    tcp_url = next(u for u in welcome["ice_servers"][0]["urls"] if u.endswith("transport=tcp"))
    agent, customer = await call(service.base_url, agent_url, customer_url, turn_urls=[tcp_url])
    try:
        await assert_two_way_media(agent, customer)
        assert selected_local_candidate_type(agent) == {"relay"}
        assert selected_local_candidate_type(customer) == {"relay"}
        stats = service.app[TURN_SERVER].stats()
        assert stats.get("turn_total_allocations", 0) >= 4, stats
    finally:
        await agent.close()
        await customer.close()


@contextlib.asynccontextmanager
async def coturn(secret: str) -> AsyncIterator[int]:
    """A real coturn with ``use-auth-secret``, TCP (and UDP) on loopback."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn (turnserver) is not installed; scripts/setup.sh test installs it")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "turnserver.conf")
        with open(conf, "w") as f:
            f.write(
                "\n".join(
                    [
                        "listening-ip=127.0.0.1",
                        "relay-ip=127.0.0.1",
                        f"listening-port={port}",
                        f"alt-listening-port={free_port()}",
                        "min-port=56000",
                        "max-port=56999",
                        "use-auth-secret",
                        f"static-auth-secret={secret}",
                        "realm=parley",
                        "allow-loopback-peers",
                        "no-tls",
                        "no-dtls",
                        "no-cli",
                        "no-rfc5780",
                        "fingerprint",
                        f"userdb={tmp}/turndb",
                        f"pidfile={tmp}/turn.pid",
                        f"log-file={tmp}/turn.log",
                        "simple-log",
                    ]
                )
                + "\n"
            )
        proc = subprocess.Popen(
            [binary, "-c", conf, "--no-stdout-log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(400):  # until coturn accepts TCP connections, at most ~20 s
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"coturn exited with {proc.returncode}")
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("coturn did not accept connections in 20 s")
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_relay_only_clients_through_a_real_coturn_with_the_same_secret(
    service_factory: ServiceFactory,
) -> None:
    secret = "shared-coturn-secret"
    async with coturn(secret) as port:
        tcp_url = f"turn:127.0.0.1:{port}?transport=tcp"
        service = await service_factory(
            ice_transport_policy="relay",
            turn=TurnSettings(port=0, secret=secret, external_urls=(tcp_url,)),
        )
        session = await service.create_session()
        agent, customer = await call(
            service.base_url, session["agent_url"], session["customer_url"]
        )
        try:
            assert agent.welcome is not None
            assert agent.welcome["ice_servers"][0]["urls"] == [tcp_url]
            await assert_two_way_media(agent, customer)
            assert selected_local_candidate_type(agent) == {"relay"}
        finally:
            await agent.close()
            await customer.close()


async def test_relay_only_clients_through_embedded_turn_over_tls(
    service_factory: ServiceFactory,
    tls_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = tls_files
    # aioice verifies the TURN server's certificate with the default context: trust ours
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    service = await service_factory(
        ice_transport_policy="relay",
        turn=TurnSettings(
            port=0, tls_port=0, secret="turn-test-secret", tls_cert=str(cert), tls_key=str(key)
        ),
    )
    session = await service.create_session()
    probe = WsParticipant(service.base_url, session["agent_url"], "probe")
    welcome = await probe.join(media=False)
    await probe.close()
    urls = welcome["ice_servers"][0]["urls"]
    tls_url = next(u for u in urls if u.startswith("turns:"))
    assert tls_url.endswith("?transport=tcp")
    agent, customer = await call(
        service.base_url, session["agent_url"], session["customer_url"], turn_urls=[tls_url]
    )
    try:
        await assert_two_way_media(agent, customer)
        assert selected_local_candidate_type(agent) == {"relay"}
        assert selected_local_candidate_type(customer) == {"relay"}
    finally:
        await agent.close()
        await customer.close()
