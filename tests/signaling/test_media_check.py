"""``media_check`` / ``media_status`` (issue 12): a page whose subscribe leg went silent asks the
relay whether it is still sending to it. Real aiortc participants through the real service: the
relay's count (its consumers' ``packets`` on the current subscribe leg) grows while media flows,
and keeps growing after the participant's network swallows every datagram, while the
participant receives nothing; that difference is what tells the page its path is dead."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.signaling.conftest import Service
from tests.signaling.test_reconnect import ReconnectingParticipant, three_party_call
from tests.signaling.ws_client import WsParticipant


async def media_status(p: WsParticipant) -> dict[str, Any]:
    after = len(p.messages)
    await p.send({"type": "media_check"})
    return await p.wait_message(lambda m: m["type"] == "media_status", timeout=10, after=after)


def received(p: WsParticipant) -> int:
    """Packets (frames, for video) the participant's subscribe leg delivered so far."""
    assert p.client is not None
    return sum(p.client.frames.values())


async def test_the_relay_says_it_keeps_sending_to_a_participant_whose_path_went_silent(
    service: Service,
) -> None:
    agent, customer, third = await three_party_call(service)
    try:
        assert agent.client is not None
        first = await media_status(agent)
        assert first["connected"] is True
        assert first["sent"] > 0
        # media flows: the relay's count grows (a counter, waited on, not timed)
        grown: list[dict[str, Any]] = []

        async def sent_grew() -> bool:
            grown.append(await media_status(agent))
            return grown[-1]["sent"] > first["sent"]

        for _ in range(50):  # bounded: about 10 s
            if await sent_grew():
                break
            await asyncio.sleep(0.2)
        assert grown[-1]["sent"] > first["sent"], grown
        # the subscribe leg's datagrams vanish both ways (the WebSocket stays)
        agent.network.down(agent.client.sub)
        await asyncio.sleep(0.5)  # packets already in flight land; not an assertion
        cut = await media_status(agent)
        got = received(agent)
        later = cut
        deadline = time.monotonic() + 10
        while later["sent"] <= cut["sent"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            later = await media_status(agent)
        assert later["sent"] > cut["sent"], (cut, later)
        assert received(agent) == got  # nothing reached the participant meanwhile
        assert later["connected"] is True  # the relay has not noticed yet: only the page can
    finally:
        for p in (agent, customer, third):
            await p.close()


async def test_media_check_needs_a_join_and_counts_a_rebuilt_leg_afresh(service: Service) -> None:
    session = await service.create_session()
    early = ReconnectingParticipant(service.base_url, session["agent_url"], "Ann")
    await early.connect()
    try:
        await early.send({"type": "media_check"})
        error = await early.wait_message(lambda m: m["type"] == "error")
        assert error["code"] == "not_joined"
    finally:
        await early.close()
    agent, customer, third = await three_party_call(service)
    try:
        assert (await media_status(agent))["sent"] > 0
        after = len(agent.messages)
        await agent.send({"type": "reconnect", "pc": "subscribe"})
        await agent.wait_message(lambda m: m["type"] == "reconnect", after=after)
        # the new leg: nothing sent on it before it connects; counted from 0 again
        fresh = await media_status(agent)
        assert fresh["connected"] is False
        assert fresh["sent"] == 0
    finally:
        for p in (agent, customer, third):
            await p.close()


async def test_media_check_is_rate_limited_like_every_message(service: Service) -> None:
    session = await service.create_session()
    page = WsParticipant(service.base_url, session["agent_url"], "Ann")
    try:
        await page.join(media=False)
        after = len(page.messages)
        for _ in range(400):  # far over 50 a second with a 5 s burst
            await page.send({"type": "media_check"})
        await page.wait_message(
            lambda m: m["type"] == "error" and m["code"] == "rate_limited", after=after
        )
        answers = [m for m in page.messages[after:] if m["type"] == "media_status"]
        assert 0 < len(answers) < 400
        assert answers[0] == {"type": "media_status", "sent": 0, "connected": False}
    finally:
        await page.close()
