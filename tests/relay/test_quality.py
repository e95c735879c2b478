"""The pure parts of the reports: the E-model score, VP8 resolution, RTT from receiver reports
of our own sender reports, talk spurts and overlaps, the latency histogram."""

from __future__ import annotations

import fractions

import numpy
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket
from av import VideoFrame
from hypothesis import given
from hypothesis import strategies as st

from parley.relay.quality import (
    DownstreamQuality,
    LatencyHistogram,
    UpstreamQuality,
    mos,
    on_rtcp,
    vp8_resolution,
)
from parley.relay.speech import SpeechTracker, merge, overlap, total


def test_mos_follows_livekits_simplified_e_model() -> None:
    assert mos(0.0, 20.0, 1.0, "audio") >= 4.4  # R = 99.7
    # 5 % Opus loss: R = 100 - 0.3 - 40 -> MOS ~3.1 (LiveKit calls 7.5 % "poor")
    assert 2.9 <= mos(5.0, 20.0, 1.0, "audio") <= 3.3
    # video weighs loss more than audio
    assert mos(3.0, 20.0, 1.0, "video") < mos(3.0, 20.0, 1.0, "audio")
    # long delay hurts: d = 400/2 + 2*10 = 220 ms > 160 -> effect (220 - 120) / 10 = 10
    assert mos(0.0, 400.0, 10.0, "audio") < mos(0.0, 40.0, 10.0, "audio")
    assert mos(100.0, None, 0.0, "video") == 1.0


@given(
    st.floats(0, 100),
    st.floats(0, 5000) | st.none(),
    st.floats(0, 1000),
    st.sampled_from(["audio", "video"]),
)
def test_mos_stays_between_1_and_4_5(
    loss: float, rtt: float | None, jitter: float, kind: str
) -> None:
    assert 1.0 <= mos(loss, rtt, jitter, kind) <= 4.5


def vp8_payloads(width: int, height: int) -> list[bytes]:
    encoder = Vp8Encoder()
    image = numpy.random.default_rng(1).integers(0, 255, (height, width, 3), numpy.uint8)
    frame = VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    payloads, _ = encoder.encode(frame, force_keyframe=True)
    return payloads


def test_vp8_resolution_is_read_from_a_real_keyframe() -> None:
    payloads = vp8_payloads(320, 240)
    assert vp8_resolution(payloads[0]) == (320, 240)
    assert all(vp8_resolution(p) is None for p in payloads[1:])
    assert vp8_resolution(b"") is None and vp8_resolution(b"\x10") is None


@given(st.binary(max_size=40))
def test_vp8_resolution_never_raises_on_junk(data: bytes) -> None:
    vp8_resolution(data)


def rr(
    ssrc: int, *, lost: int, highest: int, lsr: int, dlsr: int, jitter: int = 90
) -> RtcpRrPacket:
    return RtcpRrPacket(
        ssrc=1,
        reports=[
            RtcpReceiverInfo(
                ssrc=ssrc,
                fraction_lost=0,
                packets_lost=lost,
                highest_sequence=highest,
                jitter=jitter,
                lsr=lsr,
                dlsr=dlsr,
            )
        ],
    )


def test_rtt_comes_from_the_report_on_our_own_sender_report() -> None:
    leg = DownstreamQuality("video", 90000)
    ntp = 0x1234_5678_9ABC_DEF0
    leg.on_sender_report(ntp, now=100.0)
    lsr = (ntp >> 16) & 0xFFFFFFFF
    # the subscriber held our SR 0.5 s (DLSR in 1/65536 s) and answered; it arrives at 100.54
    on_rtcp(leg, rr(42, lost=3, highest=1000, lsr=lsr, dlsr=32768), ssrc=42, now=100.54)
    assert leg.rtt is not None and abs(leg.rtt - 0.04) < 1e-6
    # an RR about another SSRC, or an unknown LSR, changes nothing
    on_rtcp(leg, rr(7, lost=99, highest=5, lsr=lsr, dlsr=0), ssrc=42, now=101.0)
    on_rtcp(leg, rr(42, lost=3, highest=1000, lsr=12345, dlsr=0), ssrc=42, now=101.0)
    assert abs(leg.rtt - 0.04) < 1e-6 and leg.cumulative_lost == 3


class FakeConsumer:
    packets = 0
    octets = 0
    retransmitted = 0


def test_downstream_loss_is_per_interval_from_cumulative_counts() -> None:
    leg = DownstreamQuality("audio", 48000)
    consumer = FakeConsumer()
    on_rtcp(leg, rr(42, lost=0, highest=1000, lsr=0, dlsr=0), ssrc=42, now=1.0)
    consumer.packets = 1000
    leg.sample(1.0, consumer)
    on_rtcp(leg, rr(42, lost=50, highest=2000, lsr=0, dlsr=0, jitter=480), ssrc=42, now=2.0)
    consumer.packets = 2000
    data = leg.sample(2.0, consumer)
    assert data["loss"] == 5.0 and data["jitter_ms"] == 10.0 and data["packets"] == 1000
    assert data["rtt_ms"] is None  # no SR matched
    assert 2.9 <= data["score"] <= 3.3


class FakeProducer:
    packets = octets = nacks_sent = keyframe_requests = retransmissions = 0

    def media_statistics(self) -> None:
        return None


class Frame:
    """The last packet of a video frame (what the frame counter looks at)."""

    def __init__(self, timestamp: int) -> None:
        self.marker = 1
        self.timestamp = timestamp
        self.payload = b"\x01\x00\x00"  # an interframe: no resolution to read


def test_frame_rate_is_media_time_so_a_burst_after_a_stall_reads_as_30_fps() -> None:
    leg = UpstreamQuality("video", "video/VP8", 90000)
    producer = FakeProducer()
    ts = 0
    for _ in range(30):  # one second of 30 fps video, arriving on time
        ts += 3000
        leg.on_packet(Frame(ts), 0.0)
    leg.sample(1.0, 1.0, producer, None)
    for _ in range(45):  # the next 1.5 s of frames, arriving in 0.5 s after a stall
        ts += 3000
        leg.on_packet(Frame(ts), 0.0)
    data = leg.sample(1.5, 1.5, producer, None)
    assert data["frames"] == 45 and data["fps"] == 30.0


def test_talk_spurts_from_audio_levels_and_their_overlap() -> None:
    a, b = SpeechTracker(48000), SpeechTracker(48000)
    spurts: dict[str, list[list[float]]] = {"a": [], "b": []}
    for n in range(500):  # 10 s of 20 ms packets; A talks 0-6 s, B 5-8 s, then both silent
        now = n * 0.02
        a.on_level(10 if now < 6 else 127, n * 960, now)
        b.on_level(20 if 5 <= now < 8 else 127, n * 960, now)
        if n % 50 == 49:  # a sample every second, wall clock = 1000 + relay clock
            spurts["a"] += a.take(now, 1000 + now)
            spurts["b"] += b.take(now, 1000 + now)
    assert abs(total(merge(spurts["a"])) - 6.0) < 0.05
    assert abs(total(merge(spurts["b"])) - 3.0) < 0.05
    both, each = overlap(spurts)
    assert abs(both - 1.0) < 0.05 and abs(each["a"] - 1.0) < 0.05
    assert len(merge(spurts["a"])) == 1  # one spurt, split at sampling times and joined again


def test_short_pauses_belong_to_the_spurt() -> None:
    s = SpeechTracker(48000)
    for n in range(100):
        now = n * 0.02
        pause = 40 <= n < 50  # 0.2 s < HANGOVER
        s.on_level(127 if pause else 15, n * 960, now)
    assert len(s.take(2.0, 2.0)) == 1


def test_latency_histogram_buckets_are_cumulative() -> None:
    h = LatencyHistogram()
    for value in (1e-5, 3e-5, 3e-5, 0.1):
        h.observe(value)
    buckets = dict(h.buckets())
    assert buckets["2e-05"] == 1 and buckets["5e-05"] == 3 and buckets["+Inf"] == 4
    assert abs(h.total - 0.10007) < 1e-9
