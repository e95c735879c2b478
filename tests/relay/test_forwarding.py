"""Real aiortc participants exchange real media through the packet-forwarding relay."""

from __future__ import annotations

from tests.media_client import MediaClient, wait_for
from tests.relay.harness import RouterParticipant, make_router


async def test_two_participants_receive_and_decode_each_others_audio_and_video() -> None:
    router = make_router()
    ann = RouterParticipant(router, MediaClient("ann"))
    bob = RouterParticipant(router, MediaClient("bob"))
    try:
        await ann.publish()
        await bob.publish()
        ok = await wait_for(
            lambda: ann.client.frames_from("bob", "video") >= 20
            and bob.client.frames_from("ann", "video") >= 20
            and ann.client.frames_from("bob", "audio") >= 20
            and bob.client.frames_from("ann", "audio") >= 20,
            timeout=15,
        )
        assert ok, (dict(ann.client.frames), dict(bob.client.frames))
    finally:
        await ann.close()
        await bob.close()
        await router.close()
