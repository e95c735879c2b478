"""3 % packet loss on either leg is repaired by NACK/retransmission and video keeps decoding."""

from __future__ import annotations

import random
from typing import Any

from aiortc.rtp import is_rtcp

from tests.media_client import MediaClient, wait_for
from tests.relay.harness import RouterParticipant, session

LOSS = 0.03
FRAMES = 120  # decoded frames watched under loss (4 s of 30 fps video)
TIMEOUT = 60.0  # generous: a loaded machine decodes slowly, it must not fail the test
FRAME_TICKS = 3000  # 90 kHz / 30 fps


def frame_gaps(pts: list[int]) -> int:
    """Frames missing between consecutive decoded frames."""
    return sum(max(0, round((b - a) / FRAME_TICKS) - 1) for a, b in zip(pts, pts[1:], strict=False))


async def watch(viewer: RouterParticipant, publisher: str) -> tuple[int, int]:
    """Decoded frames and frame gaps of ``publisher``'s video at ``viewer`` over the next
    FRAMES decoded frames (waited for, not timed)."""
    mid = next(
        t["mid"]
        for t in viewer.client.offered_tracks
        if t["participant_id"] == publisher and t["kind"] == "video"
    )
    pts = viewer.client.video_pts[mid]
    start = len(pts)
    await wait_for(lambda: len(pts) >= start + FRAMES, timeout=TIMEOUT)
    window = pts[start : start + FRAMES]
    return len(window), frame_gaps(window)


async def test_loss_towards_the_subscriber_is_repaired_from_the_consumers_history() -> None:
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()  # bob only watches
        await ann.publish()
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= 10, timeout=15)
        consumer = bob.consumer_of(ann.producer("video"))
        ssrc = consumer._rewriter.ssrc.to_bytes(4, "big")  # type: ignore[union-attr]
        stock_send = consumer._send
        rng = random.Random(7)
        dropped = 0

        def lossy_send(data: bytes) -> None:
            nonlocal dropped
            # drop original video packets only; retransmissions (on the RTX SSRC) get through
            if not is_rtcp(data) and data[8:12] == ssrc and rng.random() < LOSS:
                dropped += 1
                return
            stock_send(data)

        consumer._send = lossy_send  # the consumer's SRTP-protect-and-send
        # ... on its Python send path: the packet path's own sender (accel.Tx) bypasses it
        consumer._route.tx = None  # type: ignore[union-attr]
        consumer._tx_retry = 1 << 30
        frames, gaps = await watch(bob, "ann")
        assert dropped >= 3, dropped
        assert consumer.nacked >= dropped // 2, (consumer.nacked, dropped)
        assert consumer.retransmitted > 0
        assert frames == FRAMES, frames
        assert gaps <= 2, (gaps, dropped, consumer.retransmitted)


async def test_loss_from_the_publisher_is_nacked_upstream_and_retransmitted() -> None:
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        await ann.publish()
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= 10, timeout=15)
        producer = ann.producer("video")
        receiver: Any = producer._receiver
        rng = random.Random(11)
        dropped = 0

        def lossy_input(packet: Any) -> None:
            nonlocal dropped
            if packet.payload_type == producer.payload_type and rng.random() < LOSS:
                dropped += 1
                return
            producer.forward(packet)

        receiver._parley_forward = lossy_input  # where the fast path delivers
        nacks_before = producer.nacks_sent
        frames, gaps = await watch(bob, "ann")
        assert dropped >= 3, dropped
        assert producer.nacks_sent > nacks_before
        assert producer.retransmissions > 0, (dropped, producer.nacks_sent)
        assert frames == FRAMES, frames
        assert gaps <= 2, (gaps, dropped, producer.retransmissions)


def test_frame_gaps_counts_missing_frames() -> None:
    assert frame_gaps([0, 3000, 6000]) == 0
    assert frame_gaps([0, 3000, 12000, 15000]) == 2
    assert MediaClient  # the helper module is importable without a loop
