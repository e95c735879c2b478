"""RTCP through the relay: sender reports carry the publisher's NTP time with translated RTP
timestamps (lip sync), subscribers' PLIs reach the publisher debounced, and the relay's own
reports go out from one shared timer."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
)

from parley.relay import ticker
from parley.relay._aiortc import RTCP_INTERVAL
from tests.media_client import wait_for
from tests.relay.harness import session


async def test_sender_reports_carry_publisher_ntp_and_translated_rtp_timestamps() -> None:
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        bob.capture_rtcp = True
        await ann.publish()

        # what the publisher sends: its sender reports, and the timestamp of each video payload
        published_srs: dict[int, list[tuple[int, int]]] = defaultdict(list)
        sent_ts: dict[bytes, int] = {}
        dtls: Any = ann.client.pub.getTransceivers()[0].sender.transport
        stock_send = dtls._send_rtp

        async def send_rtp(data: bytes) -> None:
            if is_rtcp(data):
                for packet in RtcpPacket.parse(data):
                    if isinstance(packet, RtcpSrPacket):
                        info = packet.sender_info
                        published_srs[packet.ssrc].append((info.ntp_timestamp, info.rtp_timestamp))
            else:
                packet = RtpPacket.parse(data)
                sent_ts[packet.payload] = packet.timestamp
            await stock_send(data)

        dtls._send_rtp = send_rtp
        video, audio = ann.producer("video"), ann.producer("audio")
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= 10, timeout=15)
        bob.client.capture_payloads()

        mids = {t["kind"]: t["mid"] for t in bob.client.offered_tracks}

        def reports(kind: str) -> list[RtcpSrPacket]:
            return [sr for mid, sr in bob.client.sender_reports if mid == mids[kind]]

        assert await wait_for(
            lambda: len(reports("video")) >= 2 and len(reports("audio")) >= 2, timeout=10
        ), bob.client.sender_reports

        for kind, producer in (("video", video), ("audio", audio)):
            consumer = bob.consumer_of(producer)
            rewriter = consumer._rewriter
            assert rewriter is not None
            for sr in reports(kind):
                assert sr.ssrc == rewriter.ssrc
                assert sr.sender_info.packet_count > 0
                # the NTP time is the publisher's, from one of its sender reports for this track
                ntp = sr.sender_info.ntp_timestamp
                mapping = dict(published_srs[producer._media_ssrc])  # type: ignore[index]
                assert ntp in mapping, (kind, ntp, list(mapping)[:3])
                # ... and its RTP time is the publisher's, shifted like the forwarded packets
                assert sr.sender_info.rtp_timestamp == rewriter.out_ts(mapping[ntp])

        # black box for video: every payload arrives shifted by the same timestamp offset
        mid = mids["video"]
        received = bob.client.received_timestamps[mid]
        assert await wait_for(lambda: len(received) >= 20, timeout=5)
        rewriter = bob.consumer_of(video)._rewriter
        assert rewriter is not None
        offsets = {
            (ts - sent_ts[payload]) % (1 << 32) for payload, ts in received if payload in sent_ts
        }
        assert offsets == {rewriter.ts_offset}, offsets


async def test_subscriber_plis_reach_the_publisher_debounced() -> None:
    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        await ann.publish()
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= 10, timeout=15)

        sender: Any = next(t.sender for t in ann.client.pub.getTransceivers() if t.kind == "video")
        stock = sender._handle_rtcp_packet
        plis = 0

        async def count_plis(packet: Any) -> None:
            nonlocal plis
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                plis += 1
            await stock(packet)

        sender._handle_rtcp_packet = count_plis
        producer = ann.producer("video")
        # no request of the start-up pending any more; count only what the burst causes
        interval = router.config.keyframe_request_interval
        assert await wait_for(lambda: not producer._keyframe_pending, timeout=5)
        plis = 0

        consumer = bob.consumer_of(producer)
        assert consumer._rewriter is not None
        receiver: Any = next(
            t.receiver for t in bob.client.sub.getTransceivers() if t.mid == consumer.mid
        )
        burst, spacing = 30, 0.05
        started = asyncio.get_running_loop().time()
        for _ in range(burst):
            await receiver._send_rtcp_pli(consumer._rewriter.ssrc)
            await asyncio.sleep(spacing)
        elapsed = asyncio.get_running_loop().time() - started
        assert await wait_for(lambda: consumer.keyframe_requests >= burst, timeout=10)
        # the trailing request of the last interval goes out with the next packet after it
        assert await wait_for(lambda: not producer._keyframe_pending, timeout=10)
        assert await wait_for(lambda: plis >= 2, timeout=10)
        # one at the start of every debounce interval the burst touched, plus the trailing one
        most = int(elapsed / interval) + 2
        assert 2 <= plis <= most, (plis, most)
        frames = bob.client.frames_from("ann", "video")
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") > frames + 10, 5)


async def test_the_publisher_gets_receiver_reports_from_the_relays_shared_rtcp_tick() -> None:
    """The relay's receivers (publish legs) and senders (subscribe legs) report from the one
    process-wide timer of ``RTCP_INTERVAL`` (relay/ticker.py), not a task each: the publisher
    still gets receiver reports about each of its SSRCs, with the sequence numbers moving on
    and the delay since its last sender report (RTT), and closing everything unregisters."""
    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        await ann.publish()
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= 10, timeout=15)
        # 2 receivers on ann's publish leg, 2 senders on bob's subscribe leg, at least
        assert ticker.registered(RTCP_INTERVAL) >= 4

        reports: dict[int, list[RtcpReceiverInfo]] = defaultdict(list)
        senders: list[Any] = [t.sender for t in ann.client.pub.getTransceivers()]
        for sender in senders:
            stock = sender._handle_rtcp_packet

            async def handle(packet: Any, _stock: Any = stock) -> None:
                if isinstance(packet, RtcpRrPacket):
                    for report in packet.reports:
                        reports[report.ssrc].append(report)
                await _stock(packet)

            sender._handle_rtcp_packet = handle
        ssrcs = {sender._ssrc for sender in senders}
        assert await wait_for(
            lambda: all(len(reports[s]) >= 3 and reports[s][-1].dlsr > 0 for s in ssrcs),
            timeout=10,
        ), {s: len(reports[s]) for s in ssrcs}
        for ssrc in ssrcs:
            seqs = [r.highest_sequence for r in reports[ssrc]]
            assert seqs == sorted(seqs) and seqs[-1] > seqs[0], seqs
            assert reports[ssrc][-1].lsr != 0
    await asyncio.sleep(0)
    assert ticker.registered(RTCP_INTERVAL) == 0
