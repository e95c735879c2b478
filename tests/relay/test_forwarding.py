"""Real aiortc participants exchange real media through the packet-forwarding relay."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pylibsrtp import Policy, Session

from parley.relay import _aiortc, udp
from tests.media_client import MediaClient, wait_for
from tests.relay.harness import RouterParticipant, directions, session


async def test_two_participants_receive_and_decode_each_others_audio_and_video() -> None:
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        await ann.publish()
        await bob.publish()
        ok = await wait_for(
            lambda: (
                ann.client.frames_from("bob", "video") >= 20
                and bob.client.frames_from("ann", "video") >= 20
                and ann.client.frames_from("bob", "audio") >= 20
                and bob.client.frames_from("ann", "audio") >= 20
            ),
            timeout=15,
        )
        assert ok, (dict(ann.client.frames), dict(bob.client.frames))
        for person in (ann, bob):
            for _, connection in _aiortc._connections(person.peer.publish.pc):
                fast = connection.__dict__["_parley_fast"]
                if not _aiortc.FAST_IN or not udp.AVAILABLE:
                    assert fast.taker is None or fast.taker.taken == 0
                    continue
                # the compiled path took the publisher's RTP straight from the socket's reader;
                # only the first packets (before the SRTP context existed) went through Python
                assert fast.taker.taken >= 40 and fast.taker.unprotect_errors == 0
                assert fast.taker.routed <= 4  # first packet of each SSRC, learned by route_rtp
                assert _aiortc.datagrams_received(person.peer.publish.pc) >= fast.taker.taken


async def test_three_participants_each_decode_both_others_audio_and_video() -> None:
    async with session("ann", "bob") as (router, p):
        await asyncio.gather(p["ann"].publish(), p["bob"].publish())
        # carol's first subscribe offer carries ann's and bob's video (and audio) at once:
        # the two-new-videos-in-one-offer BUNDLE pitfall
        p["carol"] = carol = RouterParticipant(router, MediaClient("carol"))
        await carol.publish()
        names = ("ann", "bob", "carol")

        def everyone_decodes() -> bool:
            return all(
                p[me].client.frames_from(other, kind) >= 20
                for me in names
                for other in names
                if other != me
                for kind in ("audio", "video")
            )

        ok = await wait_for(everyone_decodes, timeout=20)
        assert ok, {n: dict(p[n].client.frames) for n in names}
        first = carol.offered[0]
        videos = [t for t in first if t["kind"] == "video"]
        assert {t["participant_id"] for t in videos} == {"ann", "bob"}
        assert carol.offer_sdps[0].count("m=video") == 2


async def test_forwarded_payloads_are_the_publishers_bytes() -> None:
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        ann.client.capture_payloads()
        bob.client.capture_payloads()
        await ann.publish()
        ann.client.capture_payloads()  # the publish transport exists now
        await bob.publish()
        ok = await wait_for(
            lambda: (
                bob.client.frames_from("ann", "video") >= 60
                and bob.client.frames_from("ann", "audio") >= 60
            ),
            timeout=15,
        )
        assert ok, dict(bob.client.frames)
        sent = ann.client.sent_payloads
        for track in bob.client.offered_tracks:
            received = bob.client.received_payloads[track["mid"]]
            assert len(received) >= 50, (track, len(received))
            foreign = [r for r in received if r not in sent]
            assert not foreign, (track["kind"], len(foreign), len(received))


async def test_late_joiner_decodes_video_from_the_keyframe_it_asked_for() -> None:
    async with session("ann") as (router, p):
        await p["ann"].publish()
        video = p["ann"].producer("video")
        # well past the encoder's first keyframe: aiortc's VP8 encoder sends no other unless asked
        assert await wait_for(lambda: video.packets >= 200, timeout=20), video.packets
        requests = video.keyframe_requests
        p["zoe"] = zoe = RouterParticipant(router, MediaClient("zoe", audio=False, video=False))
        ok = await wait_for(lambda: zoe.client.frames_from("ann", "video") >= 1, timeout=15)
        assert ok, dict(zoe.client.frames)
        assert video.keyframe_requests > requests
        assert video.waiting_consumers == 0
        consumer = zoe.consumer_of(video)
        assert consumer._synced


async def test_one_broken_subscriber_is_dropped_and_the_others_go_on() -> None:
    async with session("ann", "bob", "carol") as (router, p):
        ann, bob, carol = p["ann"], p["bob"], p["carol"]
        await ann.publish()
        ok = await wait_for(
            lambda: all(p[n].client.frames_from("ann", "video") >= 10 for n in ("bob", "carol")),
            timeout=15,
        )
        assert ok
        video, audio = ann.producer("video"), ann.producer("audio")
        carol_consumers = [carol.consumer_of(video), carol.consumer_of(audio)]
        carol_mids = {c.mid for c in carol_consumers}
        offers = carol.offers

        # carol's relay-side transport breaks where the fast path sends: its SRTP session is
        # swapped for a real one that has no context for her streams, so protect() raises
        dtls: Any = carol_consumers[0].transceiver.sender.transport
        dtls._tx_srtp = Session(
            policy=Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_SPECIFIC, ssrc_value=1)
        )

        # dropped: out of the router's table, closed, and inactive in carol's next offer
        assert await wait_for(lambda: all(c.closed for c in carol_consumers), timeout=10)
        assert dict(carol.peer.subscribe.consumers) == {}
        assert not router.fanout.consumed_by("carol")
        assert all(c.peer_id != "carol" for c in video.consumers + audio.consumers)
        assert await wait_for(lambda: carol.offers > offers, timeout=10)
        assert carol.offered[-1] == []
        lines = directions(carol.offer_sdps[-1])
        assert all(lines[mid] == "inactive" for mid in carol_mids), lines

        # bob goes on
        before = {k: bob.client.frames_from("ann", k) for k in ("audio", "video")}
        ok = await wait_for(
            lambda: all(bob.client.frames_from("ann", k) >= before[k] + 30 for k in before),
            timeout=15,
        )
        assert ok, dict(bob.client.frames)
        assert {c.peer_id for c in video.consumers} == {"bob"}
        # the publisher is untouched
        assert not ann.peer.closed and not video.closed and not audio.closed
        assert ann.peer.publish.pc.connectionState == "connected"
        assert ann.failures == bob.failures == 0


async def test_h264_publisher_is_forwarded_and_decoded() -> None:
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        ann.client.video_codec = "video/H264"
        await ann.publish()
        await bob.publish()
        assert ann.producer("video").codec.mimeType.lower() == "video/h264"
        ok = await wait_for(
            lambda: (
                bob.client.frames_from("ann", "video") >= 20
                and ann.client.frames_from("bob", "video") >= 20
            ),
            timeout=20,
        )
        assert ok, (dict(ann.client.frames), dict(bob.client.frames))
