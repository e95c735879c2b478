"""A participant's network drops in the middle of a call (issue 12). The relay notices when its
consent checks expire (aioice's interval is shortened here so the test takes seconds, not 30 s),
would rebuild the dead legs (``reconnect``, tests/signaling/test_reconnect.py); here no rebuild
is allowed, so it takes its fallback, the full reconnect: it tells the page
(``error`` ``media_failed``, then close 4001 so it reconnects), lists the participant as gone and
tells the others."""

from __future__ import annotations

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from parley.signaling import sessions
from parley.signaling.keys import SESSIONS
from parley.signaling.sessions import CLOSE_MEDIA_FAILED
from tests.signaling.conftest import Service
from tests.signaling.test_media import assert_two_way_media, call


def lose_every_datagram(pc: RTCPeerConnection) -> None:
    """The network drops: this peer connection's datagrams vanish both ways; nothing closes."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            protocol.datagram_received = lambda data, addr: None
            protocol.transport.sendto = lambda *args, **kwargs: None


async def test_a_dead_leg_is_reported_to_the_page_and_the_participant_listed_as_gone(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    # no leg rebuild allowed: straight to the full reconnect (the fallback when rebuilds fail)
    monkeypatch.setattr(sessions, "LEG_REBUILDS_PER_JOIN", 0)
    session = await service.create_session()
    agent, customer = await call(service.base_url, session["agent_url"], session["customer_url"])
    try:
        await assert_two_way_media(agent, customer)
        assert agent.client is not None
        state = service.app[SESSIONS].get(session["session_id"])
        lose_every_datagram(agent.client.pub)
        lose_every_datagram(agent.client.sub)
        failed = await agent.wait_message(lambda m: m.get("code") == "media_failed", timeout=12)
        assert "reconnect" in failed["message"]
        await customer.wait_message(
            lambda m: m["type"] == "participant_left" and m["participant_id"] == agent.id,
            timeout=10,
        )
        assert [p.id for p in state.connected()] == [customer.id]
        await agent.closed.wait()
        assert agent.close_code == CLOSE_MEDIA_FAILED
    finally:
        await agent.close()
        await customer.close()
