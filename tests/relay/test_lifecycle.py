"""Participants leave and rejoin; a publisher adds and removes a screen share by re-offering."""

from __future__ import annotations

from tests.media_client import MediaClient, PatternVideoTrack, wait_for
from tests.relay.harness import RouterParticipant, directions, session


def decodes(viewer: RouterParticipant, publisher: str, frames: int = 10) -> bool:
    return all(viewer.client.frames_from(publisher, k) >= frames for k in ("audio", "video"))


async def test_leaving_participant_is_removed_and_a_rejoin_flows_both_ways() -> None:
    async with session("ann", "bob", "carol") as (router, p):
        names = ("ann", "bob", "carol")
        for name in names:
            await p[name].publish()
        ok = await wait_for(
            lambda: all(decodes(p[a], b) for a in names for b in names if a != b), timeout=20
        )
        assert ok, {n: dict(p[n].client.frames) for n in names}
        carol_mids = {
            n: {t["mid"] for t in p[n].client.offered_tracks if t["participant_id"] == "carol"}
            for n in ("ann", "bob")
        }
        offers = {n: p[n].offers for n in ("ann", "bob")}

        await p["carol"].close()
        assert "carol" not in router.peers
        assert all(producer.peer_id != "carol" for producer in router.producers())
        for name in ("ann", "bob"):
            person = p[name]
            assert await wait_for(lambda person=person, n=name: person.offers > offers[n], 10)
            tracks = person.offered[-1]
            assert len(tracks) == 2 and {t["participant_id"] for t in tracks} == {
                "ann",
                "bob",
            } - {name}
            lines = directions(person.offer_sdps[-1])
            assert all(lines[mid] == "inactive" for mid in carol_mids[name]), lines
            assert len(person.peer.subscribe.consumers) == 2

        # carol comes back as a new peer with the same id
        p["carol"] = carol = RouterParticipant(router, MediaClient("carol"))
        await carol.publish()
        ok = await wait_for(
            lambda: all(decodes(p[a], b) for a in names for b in names if a != b), timeout=20
        )
        assert ok, {n: dict(p[n].client.frames) for n in names}


async def test_screen_share_added_then_removed_by_publisher_re_offers() -> None:
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        await ann.publish()
        assert await wait_for(lambda: decodes(bob, "ann"), timeout=15)

        screen = PatternVideoTrack(width=640, height=360)
        ann.client.add_track(screen, "screen")
        await ann.publish()
        share = ann.producer("video", "screen")
        assert ann.producer("video", "camera") is not share

        def screen_track() -> dict[str, str] | None:
            return next((t for t in bob.client.offered_tracks if t["source"] == "screen"), None)

        assert await wait_for(lambda: screen_track() is not None, timeout=10)
        track = screen_track()
        assert track is not None
        assert track["participant_id"] == "ann" and track["kind"] == "video"
        mid = track["mid"]
        assert await wait_for(lambda: bob.client.frames[mid] >= 10, timeout=15), dict(
            bob.client.frames
        )

        offers = bob.offers
        ann.client.remove_track(screen)
        await ann.publish()
        assert share.closed and not ann.producer("video", "camera").closed
        assert await wait_for(lambda: bob.offers > offers, timeout=10)
        assert screen_track() is None
        assert directions(bob.offer_sdps[-1])[mid] == "inactive"
        # the camera keeps flowing
        camera = bob.client.frames_from("ann", "video")
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= camera + 15, 10)


async def test_fifty_screen_share_toggles_recycle_one_subscribe_m_line() -> None:
    """The publisher re-uses its screen m-line (as the join page does); the relay re-uses the
    subscriber's inactive m-line for each new screen producer instead of adding one."""
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        await ann.publish()
        assert await wait_for(lambda: decodes(bob, "ann"), timeout=15)
        baseline = len(bob.peer.subscribe.pc.getTransceivers())
        assert baseline == 2

        def screen_track() -> dict[str, str] | None:
            return next((t for t in bob.client.offered_tracks if t["source"] == "screen"), None)

        mids: set[str] = set()
        sender = None
        toggles = 50
        for toggle in range(toggles):
            track = PatternVideoTrack(width=160, height=120)
            if sender is None:
                ann.client.add_track(track, "screen")
                await ann.publish()
                ann.client.tracks.remove(track)  # the screen sender is re-used below
                sender = next(
                    t for t in ann.client.pub.getTransceivers() if t.sender.track is track
                )
            else:
                sender.sender.replaceTrack(track)
                sender.direction = "sendonly"
                await ann.publish()
            assert await wait_for(lambda: screen_track() is not None, timeout=10), toggle
            shared = screen_track()
            assert shared is not None
            mids.add(shared["mid"])
            if toggle in (0, 1, toggles - 1):  # the first, the first recycled, the last
                mid = shared["mid"]
                frames = bob.client.frames[mid]
                ok = await wait_for(
                    lambda mid=mid, frames=frames: bob.client.frames[mid] >= frames + 5, 15
                )
                assert ok, (toggle, dict(bob.client.frames))

            # replaceTrack(None) without stopping the track: aiortc's sender loop ends for good
            # when its track stops, a browser's does not
            sender.sender.replaceTrack(None)
            sender.direction = "inactive"
            offers = bob.offers
            await ann.publish()
            assert await wait_for(
                lambda offers=offers: bob.offers > offers and screen_track() is None, 10
            )
            # the removal is answered (the m-line is free) before the next share starts
            assert await wait_for(lambda: bob.peer.subscribe.pc.signalingState == "stable", 10)

        assert mids == {next(iter(mids))}, mids
        assert bob.peer.subscribe.recycled == toggles - 1
        assert len(bob.peer.subscribe.pc.getTransceivers()) == baseline + 1
        assert all(sdp.count("m=") <= baseline + 1 for sdp in bob.offer_sdps)
        assert len(ann.peer.producers) == 2  # camera and microphone; every screen closed
        # the camera kept flowing
        camera = bob.client.frames_from("ann", "video")
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= camera + 15, 10)


async def test_a_free_m_line_is_recycled_only_for_a_track_of_the_same_codec() -> None:
    async with session("ann", "bob") as (router, p):
        bob = p["bob"]
        bob.client.tracks.clear()
        await p["ann"].publish()
        assert await wait_for(lambda: decodes(bob, "ann"), timeout=15)

        async def join(name: str, codec: str) -> RouterParticipant:
            person = RouterParticipant(router, MediaClient(name, audio=False))
            person.client.video_codec = codec
            p[name] = person
            await person.publish()
            ok = await wait_for(lambda: bob.client.frames_from(name, "video") >= 5, timeout=20)
            assert ok, (name, dict(bob.client.frames))
            return person

        def mid_of(name: str) -> str:
            return next(t["mid"] for t in bob.client.offered_tracks if t["participant_id"] == name)

        carol = await join("carol", "video/H264")
        h264_mid = mid_of("carol")
        offers = bob.offers
        await carol.close()
        del p["carol"]
        assert await wait_for(lambda: bob.offers > offers, timeout=10)
        assert await wait_for(lambda: bob.peer.subscribe.pc.signalingState == "stable", 10)
        count = len(bob.peer.subscribe.pc.getTransceivers())

        await join("dave", "video/VP8")  # a VP8 track does not take the free H.264 m-line
        assert mid_of("dave") != h264_mid
        assert len(bob.peer.subscribe.pc.getTransceivers()) == count + 1

        await join("erin", "video/H264")  # an H.264 track does, and is decoded there
        assert mid_of("erin") == h264_mid
        assert len(bob.peer.subscribe.pc.getTransceivers()) == count + 1
        assert bob.peer.subscribe.recycled == 1
