"""Participants leave and rejoin; a publisher adds and removes a screen share by re-offering."""

from __future__ import annotations

from aiortc import sdp as aiortc_sdp

from tests.media_client import MediaClient, PatternVideoTrack, wait_for
from tests.relay.harness import RouterParticipant, session


def directions(offer_sdp: str) -> dict[str, str]:
    """Direction of every m-line of an offer, by mid."""
    parsed = aiortc_sdp.SessionDescription.parse(offer_sdp)
    return {m.rtp.muxId: m.direction for m in parsed.media}


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
