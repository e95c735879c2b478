"""The relay's ICE host candidates use the configured address and UDP port range."""

from __future__ import annotations

from tests.media_client import MediaClient, wait_for
from tests.relay.harness import RouterParticipant, make_router

LOW, HIGH = 47100, 47199


async def test_media_sockets_bind_inside_the_configured_port_range() -> None:
    router = make_router(port_range=(LOW, HIGH))
    ann = RouterParticipant(router, MediaClient("ann"))
    bob = RouterParticipant(router, MediaClient("bob", audio=True, video=False))
    try:
        await ann.publish()
        await bob.publish()
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= 5, timeout=15)
        for participant in (ann, bob):
            for pc in (participant.peer.publish.pc, participant.peer.subscribe.pc):
                candidates = [
                    c
                    for t in pc.getTransceivers()
                    for c in t.receiver.transport.transport.iceGatherer.getLocalCandidates()
                ]
                assert candidates
                for candidate in candidates:
                    assert candidate.ip == "127.0.0.1"
                    assert LOW <= candidate.port <= HIGH, candidate
    finally:
        await ann.close()
        await bob.close()
        await router.close()
