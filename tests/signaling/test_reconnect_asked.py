"""A page's own ``reconnect`` for a leg whose rebuild is already under way is that rebuild, not a
second one (issue 12). A page that resumed after an address change asks for the legs it found
dead while the relay restarts those it had noticed: before, both rebuilt the leg, the second
rebuild killed the first one's new connection, and after 5 rebuilds in a row the relay fell
back to the full reconnect (seen with a relay-only page through TURN over TCP)."""

from __future__ import annotations

import asyncio

from parley.signaling.keys import SESSIONS
from tests.signaling.conftest import Service
from tests.signaling.test_reconnect import three_party_call, video_grows


async def test_the_same_reconnect_asked_twice_at_once_rebuilds_the_leg_once(
    service: Service,
) -> None:
    agent, customer, third = await three_party_call(service)
    try:
        assert agent.client is not None
        session = service.app[SESSIONS].get(agent.welcome["session_id"])  # type: ignore[index]
        peer = session.participants[agent.id].peer
        rebuilds = peer.rebuilds
        count = agent.client.frames_from(customer.id, "video")
        after = len(agent.messages)
        # both in one go: the second is read before the first one's rebuild has started
        await agent.send({"type": "reconnect", "pc": "subscribe"})
        await agent.send({"type": "reconnect", "pc": "subscribe"})
        await agent.wait_message(lambda m: m["type"] == "reconnect", after=after)
        assert await video_grows(agent, customer, count), "no video on the rebuilt subscribe leg"
        await asyncio.sleep(0.5)  # a second rebuild would have been announced by now
        asked = [m for m in agent.messages[after:] if m["type"] == "reconnect"]
        assert asked == [{"type": "reconnect", "pc": "subscribe"}]
        assert peer.rebuilds == rebuilds + 1
        assert agent.rebuilt == ["subscribe"]
    finally:
        for p in (agent, customer, third):
            await p.close()
