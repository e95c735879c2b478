"""Hypothesis properties for the relay's RTP/RTCP handling of untrusted packets (issue 12):
malformed header extensions, compound RTCP, NACK storms, SSRC collisions.

A real Producer and real Consumers through a real fan-out table (bench/fakes.py: the subscriber's
transport does the real SRTP protect and stops short of the socket), driven without a loop.
"""

from __future__ import annotations

import struct

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from parley.relay.producer import Producer
from parley.relay.rtp import RtpIn, parse_rtp

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ABS_SEND_TIME_ID, AUDIO_LEVEL_ID = 2, 3


def capture(consumer: Consumer) -> list[bytes]:
    """What the consumer hands to SRTP, in plain (a subscriber's own SRTP would drop the
    replays a publisher may cause, which is not what these properties look at)."""
    plain: list[bytes] = []
    send = consumer._send

    def recording(data: bytes) -> None:
        plain.append(data)
        send(data)

    consumer._send = recording
    return plain


def synced_video() -> tuple[Producer, Consumer, list[bytes]]:
    """A VP8 producer (with RTX) and one consumer synced on a keyframe, and its output."""
    fanout = FanOut()
    producer = make_producer(fanout, codecs=[VP8, VP8_RTX])
    consumer = make_consumer(producer, fanout, codecs=[VP8, VP8_RTX])
    out = capture(consumer)
    producer.forward(video_in(1))
    producer.forward(video_in(2, keyframe=True))
    assert consumer.packets == 1
    return producer, consumer, out


def rtp_of(out: list[bytes]) -> list[RtpPacket]:
    return [RtpPacket.parse(d) for d in out if not 191 < d[1] < 224]


# --- malformed header extensions -----------------------------------------------------------


@st.composite
def rtp_with_extension_block(draw: st.DrawFn) -> bytes:
    """An RTP packet whose header extension block is anything: RFC 8285 one-byte (0xBEDE) or
    two-byte (0x100X) profiles or another, a length field that may lie, elements whose ids and
    lengths may be out of range, padding, CSRCs that may be cut short."""
    csrc_count = draw(st.integers(0, 15))
    padding = draw(st.booleans())
    first = 0x80 | (0x20 if padding else 0) | 0x10 | csrc_count
    pt = draw(st.sampled_from([96, 97, 111, 0, 127]))
    header = struct.pack(
        "!BBHII",
        first,
        (0x80 if draw(st.booleans()) else 0) | pt,
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
        draw(st.sampled_from([PUBLISHER_SSRC, 0, 0xFFFFFFFF])),
    )
    csrcs = draw(st.binary(min_size=0, max_size=4 * csrc_count))
    profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x1003, 0x100F, 0x0000, 0xFFFF]))
    if draw(st.booleans()):
        elements = b"".join(
            bytes([(draw(st.integers(0, 15)) << 4) | draw(st.integers(0, 15))])
            + draw(st.binary(max_size=17))
            for _ in range(draw(st.integers(0, 5)))
        )
    else:
        elements = draw(st.binary(max_size=64))
    words = draw(st.one_of(st.just((len(elements) + 3) // 4), st.integers(0, 0xFFFF)))
    body = elements + bytes(-len(elements) % 4)
    payload = draw(st.binary(max_size=64))
    tail = bytes([draw(st.integers(0, 255))]) if padding else b""
    return header + csrcs + struct.pack("!HH", profile, words) + body + payload + tail


@SETTINGS
@given(data=rtp_with_extension_block())
def test_any_header_extension_block_is_parsed_or_refused_and_forwarding_stays_sound(
    data: bytes,
) -> None:
    try:
        packet = parse_rtp(data, ABS_SEND_TIME_ID, AUDIO_LEVEL_ID)
    except ValueError:
        return
    assert (packet.sequence_number, packet.ssrc) == struct.unpack_from("!HxxxxI", data, 2)
    assert len(packet.payload) <= len(data) - 12
    producer, consumer, sent = synced_video()
    before = consumer.packets
    producer.forward(packet)  # never raises
    # at most until the next keyframe (another SSRC makes consumers wait for one)
    producer.forward(video_in(3, keyframe=True))
    producer.forward(video_in(4))
    assert consumer.packets >= before + 2
    for out in rtp_of(sent):
        assert out.ssrc == consumer._rewriter.ssrc  # type: ignore[union-attr]
        assert out.payload_type in (96, 97)


# --- compound RTCP -------------------------------------------------------------------------


def rtcp_packets(consumer_ssrc: int) -> st.SearchStrategy[bytes]:
    ssrcs = st.sampled_from([consumer_ssrc, PUBLISHER_SSRC, 0, 0xFFFFFFFF, 77])
    reports = st.lists(
        st.builds(
            RtcpReceiverInfo,
            ssrc=ssrcs,
            fraction_lost=st.integers(0, 255),
            packets_lost=st.integers(-(1 << 23), (1 << 23) - 1),
            highest_sequence=st.integers(0, 0xFFFFFFFF),
            jitter=st.integers(0, 0xFFFFFFFF),
            lsr=st.integers(0, 0xFFFFFFFF),
            dlsr=st.integers(0, 0xFFFFFFFF),
        ),
        max_size=3,
    )
    one = st.one_of(
        st.builds(RtcpRrPacket, ssrc=ssrcs, reports=reports),
        st.builds(
            RtcpSrPacket,
            ssrc=ssrcs,
            sender_info=st.builds(
                RtcpSenderInfo,
                ntp_timestamp=st.integers(0, (1 << 64) - 1),
                rtp_timestamp=st.integers(0, 0xFFFFFFFF),
                packet_count=st.integers(0, 0xFFFFFFFF),
                octet_count=st.integers(0, 0xFFFFFFFF),
            ),
            reports=reports,
        ),
        st.builds(
            RtcpRtpfbPacket,
            fmt=st.just(RTCP_RTPFB_NACK),
            ssrc=ssrcs,
            media_ssrc=ssrcs,
            lost=st.lists(st.integers(0, 0xFFFF), max_size=40, unique=True).map(sorted),
        ),
        st.builds(
            RtcpPsfbPacket,
            fmt=st.sampled_from([RTCP_PSFB_PLI, RTCP_PSFB_FIR]),
            ssrc=ssrcs,
            media_ssrc=ssrcs,
        ),
        st.builds(
            RtcpPsfbPacket,
            fmt=st.just(RTCP_PSFB_APP),
            ssrc=ssrcs,
            media_ssrc=st.just(0),
            fci=st.one_of(
                st.builds(
                    pack_remb_fci,
                    st.integers(0, (1 << 32) - 1),
                    st.lists(ssrcs, min_size=1, max_size=3),
                ),
                st.binary(max_size=24).map(lambda b: b + bytes(-len(b) % 4)),
            ),
        ),
        st.builds(
            RtcpSdesPacket,
            chunks=st.lists(st.builds(RtcpSourceInfo, ssrc=ssrcs, items=st.just([])), max_size=2),
        ),
        st.builds(RtcpByePacket, sources=st.lists(ssrcs, max_size=3)),
    )
    return st.lists(one.map(bytes), min_size=1, max_size=6).map(b"".join)


@st.composite
def compound_rtcp(draw: st.DrawFn, consumer_ssrc: int) -> bytes:
    data = draw(rtcp_packets(consumer_ssrc))
    edit = draw(st.sampled_from(["none", "truncate", "flip", "append"]))
    if edit == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    elif edit == "append":
        data += draw(st.binary(min_size=1, max_size=16))
    return data


@SETTINGS
@given(data=st.data())
def test_compound_rtcp_from_a_subscriber_never_breaks_its_consumer(data: st.DataObject) -> None:
    producer, consumer, _ = synced_video()
    ssrc = consumer._rewriter.ssrc  # type: ignore[union-attr]
    raw = data.draw(compound_rtcp(ssrc))
    try:
        packets = RtcpPacket.parse(raw)  # what aiortc's DTLS transport does first
    except ValueError:
        return
    for packet in packets:
        drive(consumer.handle_rtcp(packet))  # never raises: nothing may escape into aiortc
        drive(producer.handle_rtcp(packet))
    assert consumer.retransmitted <= consumer.nacked
    assert 0 <= consumer.fraction_lost <= 255
    before = consumer.packets
    producer.forward(video_in(3))
    assert consumer.packets == before + 1  # the consumer still forwards


# --- NACK storms ---------------------------------------------------------------------------


def raw_nack(media_ssrc: int, pairs: list[tuple[int, int]]) -> bytes:
    """A generic NACK (RFC 4585 §6.2.1) with any (PID, BLP) pairs: repeats, overlaps, wraps."""
    fci = b"".join(struct.pack("!HH", pid, blp) for pid, blp in pairs)
    return struct.pack("!BBHII", 0x80 | RTCP_RTPFB_NACK, 205, 2 + len(pairs), 1, media_ssrc) + fci


@SETTINGS
@given(
    sent=st.integers(1, 300),
    storm=st.lists(
        st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=100),
        min_size=1,
        max_size=20,
    ),
)
def test_a_nack_storm_only_ever_resends_packets_that_were_sent(
    sent: int, storm: list[list[tuple[int, int]]]
) -> None:
    producer, consumer, out = synced_video()
    for seq in range(3, 3 + sent):
        producer.forward(video_in(seq, timestamp=3000 + seq))
    originals = {p.sequence_number: p.payload for p in rtp_of(out)}
    ssrc = consumer._rewriter.ssrc  # type: ignore[union-attr]
    before = len(out)
    wanted: list[int] = []
    for pairs in storm:
        for packet in RtcpPacket.parse(raw_nack(ssrc, pairs)):
            assert isinstance(packet, RtcpRtpfbPacket)
            wanted.extend(packet.lost)
            drive(consumer.handle_rtcp(packet))
    assert consumer.nacked == len(wanted)
    expected = sum(1 for s in wanted if s in originals)
    assert consumer.retransmitted == expected
    resent = out[before:]
    assert len(resent) == expected
    for data in resent:
        rtx = RtpPacket.parse(data)
        assert rtx.payload_type == 97 and rtx.ssrc != ssrc
        original_seq = struct.unpack("!H", rtx.payload[:2])[0]
        assert rtx.payload[2:] == originals[original_seq]


# --- SSRC collisions -----------------------------------------------------------------------


@SETTINGS
@given(
    stream=st.lists(
        st.tuples(
            st.sampled_from([PUBLISHER_SSRC, 999, 0, 0xFFFFFFFF]),
            st.sampled_from([96, 97, 111, 100]),
            st.integers(0, 0xFFFF),
            st.binary(min_size=0, max_size=8),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_colliding_ssrcs_and_stray_payload_types_never_leak_onto_a_subscriber(
    stream: list[tuple[int, int, int, bytes]],
) -> None:
    fanout = FanOut()
    audio = make_producer(fanout, kind="audio", codecs=[OPUS])
    consumer = make_consumer(audio, fanout, codecs=[OPUS])
    audio_out = capture(consumer)
    video, video_consumer, video_out = synced_video()
    for ssrc, pt, seq, payload in stream:
        for producer in (audio, video):
            producer.forward(
                RtpIn(
                    payload_type=pt,
                    sequence_number=seq,
                    timestamp=seq * 960,
                    ssrc=ssrc,
                    payload=payload,
                    marker=0,
                    audio_level=None,
                    abs_send_time=None,
                )
            )
    ours = consumer._rewriter.ssrc  # type: ignore[union-attr]
    for out in rtp_of(audio_out):
        assert out.ssrc == ours and out.payload_type == 111
    for out in rtp_of(video_out):
        assert out.ssrc == video_consumer._rewriter.ssrc  # type: ignore[union-attr]
        assert out.payload_type == 96
    # only packets of the producer's own payload type are forwarded (RTX unwrapped)
    assert consumer.packets == sum(1 for _, pt, _, _ in stream if pt == 111)
