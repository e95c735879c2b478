"""The forwarding logic without a loop or a socket: keyframe gating, the NACK ring, sender
report translation and the fan-out table, on real Producer/Consumer objects whose transports
are the shared fakes of bench/fakes.py (real SRTP, no socket)."""

from __future__ import annotations

import asyncio
import os

from aiortc.rtp import (
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)
from pylibsrtp import Policy, Session

from parley.bench.fakes import (
    OPUS,
    PUBLISHER_SSRC,
    VP8,
    VP8_RTX,
    drive,
    make_consumer,
    make_producer,
    video_in,
)
from parley.relay.consumer import Consumer
from parley.relay.fanout import FanOut
from parley.relay.rtp import RtpIn, parse_rtp


def sent_rtp(consumer: Consumer) -> list[RtpIn]:
    dtls = consumer.transceiver.sender.transport
    return [parse_rtp(data, 0, 0) for data in dtls.received() if not 191 < data[1] < 224]


def sent_rtcp(consumer: Consumer) -> list[object]:
    dtls = consumer.transceiver.sender.transport
    return [p for data in dtls.received() if 191 < data[1] < 224 for p in RtcpPacket.parse(data)]


def test_no_running_loop_here() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AssertionError("these tests must run without an event loop")


# --- keyframe gating -------------------------------------------------------------------------


def test_a_video_consumer_waits_for_a_keyframe_and_asks_for_one() -> None:
    fanout = FanOut()
    producer = make_producer(fanout)
    consumer = make_consumer(producer, fanout, keep=True)

    producer.forward(video_in(1))  # the consumer is ready: it waits and asks for a keyframe
    assert producer.waiting_consumers == 1
    assert producer.keyframe_requests == 1
    for seq in range(2, 6):  # delta frames are not forwarded to a waiting consumer
        producer.forward(video_in(seq))
    assert consumer.packets == 0 and sent_rtp(consumer) == []

    producer.forward(video_in(6, keyframe=True))
    producer.forward(video_in(7))
    assert producer.waiting_consumers == 0
    out = sent_rtp(consumer)
    assert len(out) == 2 == consumer.packets
    first, second = out
    assert first.payload == video_in(6, keyframe=True).payload
    assert second.sequence_number == (first.sequence_number + 1) & 0xFFFF
    assert {p.ssrc for p in out} == {consumer.transceiver.sender._ssrc}


def test_keyframe_requests_are_debounced_and_the_last_is_kept_for_later() -> None:
    producer = make_producer()
    producer.forward(video_in(1))  # learns the media SSRC
    producer.request_keyframe()
    producer.request_keyframe()
    producer.request_keyframe()
    assert producer.keyframe_requests == 1
    assert producer._keyframe_pending  # sent when the debounce interval ends


def test_audio_is_never_gated() -> None:
    fanout = FanOut()
    producer = make_producer(fanout, kind="audio")
    consumer = make_consumer(producer, fanout, codecs=[OPUS], keep=True)
    packet = RtpIn(
        payload_type=111,
        marker=0,
        sequence_number=9,
        timestamp=960,
        ssrc=PUBLISHER_SSRC,
        payload=b"opus",
    )
    producer.forward(packet)
    assert producer.keyframe_requests == 0
    assert [p.payload for p in sent_rtp(consumer)] == [b"opus"]


# --- the NACK ring ---------------------------------------------------------------------------


def nack(consumer: Consumer, *lost: int) -> None:
    packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=99, media_ssrc=consumer._rewriter.ssrc)  # type: ignore[union-attr]
    packet.lost = list(lost)
    drive(consumer.handle_rtcp(packet))


def test_a_nacked_packet_is_resent_from_the_ring_as_rtx() -> None:
    fanout = FanOut()
    producer = make_producer(fanout, codecs=[VP8, VP8_RTX])
    consumer = make_consumer(producer, fanout, codecs=[VP8, VP8_RTX], keep=True)
    producer.forward(video_in(1))
    for seq in range(2, 12):
        producer.forward(video_in(seq, keyframe=seq == 2))
    out = sent_rtp(consumer)
    assert len(out) == 10
    wanted = out[4]

    nack(consumer, wanted.sequence_number)
    assert consumer.nacked == 1 and consumer.retransmitted == 1
    rtx = sent_rtp(consumer)[-1]
    assert rtx.payload_type == 97
    assert rtx.ssrc == consumer.transceiver.sender._rtx_ssrc
    # RFC 4588: the original sequence number, then the original payload
    assert rtx.payload[:2] == wanted.sequence_number.to_bytes(2, "big")
    assert rtx.payload[2:] == wanted.payload


def test_a_packet_that_left_the_ring_is_not_resent() -> None:
    fanout = FanOut()
    producer = make_producer(fanout)
    consumer = make_consumer(producer, fanout, keep=True, history_size=16)
    producer.forward(video_in(1))
    for seq in range(2, 40):
        producer.forward(video_in(seq, keyframe=seq == 2))
    out = sent_rtp(consumer)
    old, recent = out[0], out[-1]

    nack(consumer, old.sequence_number)  # overwritten 16 packets later
    assert consumer.retransmitted == 0
    socket = consumer.transceiver.sender.transport.socket
    nack(consumer, recent.sequence_number)  # no RTX negotiated: resent as it was
    assert consumer.retransmitted == 1
    assert socket.datagrams[-1] == socket.datagrams[len(out) - 1]  # the same SRTP packet


def test_upstream_loss_is_nacked_to_the_publisher() -> None:
    producer = make_producer()
    for seq in (1, 2, 5):
        producer.forward(video_in(seq))
    assert producer.nacks_sent == 1
    assert producer._nack is not None and producer._nack.missing == {3, 4}
    producer.forward(video_in(3))
    assert producer._nack.missing == {4}


# --- sender report translation ---------------------------------------------------------------


def sender_report(ssrc: int, ntp: int, rtp: int) -> RtcpSrPacket:
    return RtcpSrPacket(
        ssrc=ssrc,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=ntp, rtp_timestamp=rtp, packet_count=0, octet_count=0
        ),
    )


def test_sender_reports_carry_the_publishers_clock_shifted_by_the_consumers_offset() -> None:
    fanout = FanOut()
    producer = make_producer(fanout)
    consumer = make_consumer(producer, fanout, keep=True)
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=1, items=[(1, b"cname")])])
    own_ssrc = consumer.transceiver.sender._ssrc

    # nothing to say before the consumer forwarded anything: SR and SDES are both dropped
    drive(consumer.send_reports([sender_report(own_ssrc, 1, 1), sdes]))
    assert sent_rtcp(consumer) == []

    producer.forward(video_in(1, timestamp=90000))
    producer.forward(video_in(2, keyframe=True, timestamp=93000))
    producer.forward(video_in(3, timestamp=96000))
    drive(producer.handle_rtcp(sender_report(PUBLISHER_SSRC, 0xAABBCCDD00112233, 91500)))
    assert producer.sender_report == (0xAABBCCDD00112233, 91500)

    drive(consumer.send_reports([sender_report(own_ssrc, 5, 5), sdes]))
    reports = sent_rtcp(consumer)
    assert [type(p) for p in reports] == [RtcpSrPacket, RtcpSdesPacket]
    sr = reports[0]
    assert isinstance(sr, RtcpSrPacket)
    rewriter = consumer._rewriter
    assert rewriter is not None
    assert sr.ssrc == own_ssrc
    assert sr.sender_info.ntp_timestamp == 0xAABBCCDD00112233
    assert sr.sender_info.rtp_timestamp == rewriter.out_ts(91500)
    assert sr.sender_info.packet_count == consumer.packets == 2
    # the same offset as the forwarded packets'
    first = sent_rtp(consumer)[0]
    assert first.timestamp == rewriter.out_ts(93000)


# --- the fan-out table -----------------------------------------------------------------------


def test_a_consumer_that_fails_to_send_leaves_the_table_and_the_others_go_on() -> None:
    removed: list[Consumer] = []
    fanout = FanOut(on_removed=removed.append)
    producer = make_producer(fanout)
    good = make_consumer(producer, fanout, 0, keep=True)
    bad = make_consumer(producer, fanout, 1, keep=True)
    assert producer.consumers == (good, bad)
    assert dict(fanout.consumed_by("sub1")) == {producer.id: bad}

    producer.forward(video_in(1))
    producer.forward(video_in(2, keyframe=True))
    # bad's transport: a real SRTP session without a context for its stream
    bad.transceiver.sender.transport._tx_srtp = Session(
        policy=Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_SPECIFIC, ssrc_value=1)
    )
    producer.forward(video_in(3))
    producer.forward(video_in(4))

    assert removed == [bad]
    assert producer.consumers == (good,)
    assert dict(fanout.consumed_by("sub1")) == {}
    assert fanout.consumers_of(producer.id) == (good,)
    assert good.packets == 3 and not producer.closed


def test_the_fan_out_refuses_a_second_consumer_for_the_same_pair() -> None:
    fanout = FanOut()
    producer = make_producer(fanout)
    consumer = make_consumer(producer, fanout)
    try:
        fanout.add(consumer)
    except ValueError:
        pass
    else:
        raise AssertionError("a duplicate consumer was accepted")
    assert len(fanout) == 1
    assert fanout.remove(consumer) and not fanout.remove(consumer)
    assert producer.consumers == ()


def test_a_failing_retransmission_never_raises_into_aiortc() -> None:
    fanout = FanOut()
    producer = make_producer(fanout)
    consumer = make_consumer(producer, fanout, keep=True)
    producer.forward(video_in(1))
    producer.forward(video_in(2, keyframe=True))
    sent = sent_rtp(consumer)[0]
    consumer.transceiver.sender.transport._tx_srtp = Session(
        policy=Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_SPECIFIC, ssrc_value=1)
    )
    nack(consumer, sent.sequence_number)  # protect() raises inside; handle_rtcp returns
    assert consumer.nacked == 1 and consumer.retransmitted == 1


# --- the producer's bookkeeping (accel.Inbound and the Python path) ----------------------------


def test_forward_latency_is_observed_on_one_packet_in_sixteen() -> None:
    from parley.relay.producer import LATENCY_EVERY
    from parley.relay.quality import FORWARD_LATENCY

    producer = make_producer()
    producer.forward(video_in(1))  # the first packet of a stream takes the Python path
    before = sum(FORWARD_LATENCY.counts)
    for seq in range(2, 2 + 4 * LATENCY_EVERY):  # the common case samples its own packets
        producer.forward(video_in(seq))
    assert sum(FORWARD_LATENCY.counts) - before == 4


def test_counters_and_statistics_add_up_over_both_paths() -> None:
    producer = make_producer(codecs=[VP8, VP8_RTX])
    for seq in (1, 2, 3, 5):  # the first packet takes the Python path, the rest one call each
        producer.forward(video_in(seq))
    assert producer._inbound.packets == 3 and producer._packets == 1
    rtx = RtpIn(
        payload_type=97,
        marker=0,
        sequence_number=1,
        timestamp=3000,
        ssrc=PUBLISHER_SSRC,  # no RTX SSRC signalled: it repairs the media SSRC
        payload=(4).to_bytes(2, "big") + video_in(4).payload,
    )
    producer.forward(rtx)  # seq 4 comes back
    assert producer.retransmissions == 1
    assert producer.packets == 5
    assert producer.octets == 5 * len(video_in(1).payload)
    assert producer._nack is not None and producer._nack.missing == set()
    stats = producer.media_statistics()
    assert stats is not None
    assert (stats.packets_received, stats.packets_expected, stats.max_seq) == (5, 5, 5)
