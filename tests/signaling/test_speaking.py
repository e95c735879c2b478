"""Speaking from the server: a real aiortc participant sends a loud tone for 3 s, then silence,
with the RFC 6464 audio-level header extension; the others are told within 300 ms of the start
and within 1 s of the end, and nobody is flooded with messages."""

from __future__ import annotations

import asyncio
import time

from parley.signaling.keys import SESSIONS
from tests.media_client import wait_for
from tests.signaling.conftest import ServiceFactory
from tests.signaling.test_reports import ScheduledVoice
from tests.signaling.ws_client import WsParticipant

LOUD = 3.0


async def test_speaking_follows_the_audio_levels(service_factory: ServiceFactory) -> None:
    service = await service_factory()
    session = await service.create_session("chat-speaking")
    agent = WsParticipant(service.base_url, session["agent_url"], "Ann", video=False)
    customer = WsParticipant(service.base_url, session["customer_url"], "Carl", video=False)
    voice = ScheduledVoice([(0.0, LOUD)])
    try:
        for p in (agent, customer):
            assert (await p.join())["type"] == "welcome"
        assert agent.client is not None and customer.client is not None
        agent.client.tracks[0] = voice
        await agent.publish()
        await customer.publish()
        c = customer.client
        assert await wait_for(lambda: c.frames_from(agent.id, "audio") >= 25, timeout=20)
        # silence so far: nobody was said to speak
        assert not [m for m in customer.messages if m.get("type") == "speaking"]

        seen = len(customer.messages)
        voice.start_at = start = time.monotonic()
        await customer.wait_message(
            lambda m: m.get("type") == "speaking" and agent.id in m["participant_ids"],
            after=seen,
            timeout=5,
        )
        started = time.monotonic() - start
        seen = len(customer.messages)
        stopped_msg = await customer.wait_message(
            lambda m: m.get("type") == "speaking" and agent.id not in m["participant_ids"],
            after=seen,
            timeout=LOUD + 5,
        )
        stopped = time.monotonic() - start - LOUD
        print(
            f"speaking after {started * 1000:.0f} ms, stopped {stopped * 1000:.0f} ms after the end"
        )
        assert started < 0.3, started
        assert 0 <= stopped < 1.0, stopped
        assert stopped_msg["participant_ids"] == []

        # debounced: the 3 s spurt was one start and one stop, not a flicker
        await asyncio.sleep(0.5)
        speaking = [m for m in customer.messages if m.get("type") == "speaking"]
        assert len(speaking) == 2, speaking
        # the talk spurt is also what the reports' talk time adds up
        (producer,) = [
            pr
            for s in service.app[SESSIONS].sessions.values()
            for pr in s.router.producers()
            if pr.peer_id == agent.id and pr.kind == "audio"
        ]
        assert producer.quality.speech is not None
        spoken = producer.quality.speech.take(time.monotonic(), time.time())
        assert abs(sum(b - a for a, b in spoken) - LOUD) < 0.5, spoken
    finally:
        for p in (agent, customer):
            await p.close()


def test_the_tracker_says_speaking_from_the_first_loud_packet_until_the_hangover() -> None:
    from parley.relay.speech import HANGOVER, SpeechTracker

    tracker = SpeechTracker(48000)
    assert not tracker.speaking(0.0)
    tracker.on_level(127, 0, 0.0)  # silence
    assert not tracker.speaking(0.0)
    for n in range(1, 51):  # 1 s of speech, 20 ms packets
        tracker.on_level(20, n * 960, n * 0.02)
        assert tracker.speaking(n * 0.02)
    tracker.on_level(127, 51 * 960, 1.02)
    assert tracker.speaking(1.02 + HANGOVER - 0.01)
    assert not tracker.speaking(1.02 + HANGOVER + 0.01)
    # the same spurt is the talk time the reports add up
    (spurt,) = tracker.take(2.0, 1000.0)
    assert abs((spurt[1] - spurt[0]) - 1.0) < 0.05
