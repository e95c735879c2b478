"""A media leg that ends under the relay, or an empty datagram to its media ports, through the
whole service (issue 12): the participant is reported gone instead of listed as connected, and
one datagram cuts nobody's call."""

from __future__ import annotations

import socket

import pytest

from parley.signaling import sessions
from parley.signaling.keys import SESSIONS
from tests.media_client import wait_for
from tests.signaling.conftest import ServiceFactory
from tests.signaling.test_media import assert_two_way_media, call


async def test_a_leg_closed_under_the_relay_ends_that_participant_visibly(
    service_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no leg rebuild allowed (tests/signaling/test_reconnect.py has those): the fallback
    monkeypatch.setattr(sessions, "LEG_REBUILDS_PER_JOIN", 0)
    service = await service_factory()
    session = await service.create_session()
    agent, customer = await call(service.base_url, session["agent_url"], session["customer_url"])
    try:
        await assert_two_way_media(agent, customer)
        assert customer.client is not None
        # the customer's side ends its subscribe DTLS session; the relay's leg closes
        await customer.client.sub.close()

        left = await agent.wait_message(
            lambda m: m["type"] == "participant_left" and m["participant_id"] == customer.id,
            timeout=15,
        )
        assert left
        assert await wait_for(lambda: customer.closed.is_set(), timeout=5)
        assert customer.close_code == 4001  # media failed
        async with service.http.get(
            f"{service.base_url}/api/v1/sessions/{session['session_id']}", headers=service.auth()
        ) as response:
            body = await response.json()
        listed = {p["participant_id"]: p for p in body["participants"]}
        assert listed[customer.id]["left_at"] is not None
        assert listed[agent.id]["left_at"] is None
    finally:
        await agent.close()
        await customer.close()


async def test_empty_datagrams_to_every_media_port_of_a_call_cut_nothing(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory()
    session = await service.create_session()
    agent, customer = await call(service.base_url, session["agent_url"], session["customer_url"])
    try:
        await assert_two_way_media(agent, customer)
        router = service.app[SESSIONS].sessions[session["session_id"]].router
        ports = set()
        for peer in router.peers.values():
            for pc in (peer.publish.pc, peer.subscribe.pc):
                for transceiver in pc.getTransceivers():
                    gatherer = transceiver.receiver.transport.transport.iceGatherer
                    ports.update((c.ip, c.port) for c in gatherer.getLocalCandidates())
        assert len(ports) == 4
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for port in sorted(ports):
                sock.sendto(b"", port)
        await assert_two_way_media(agent, customer)
        assert not agent.closed.is_set() and not customer.closed.is_set()
    finally:
        await agent.close()
        await customer.close()
