"""Receive statistics, the NACK generator and the producer's one-call common case: the compiled
twins (relay/_accel.c) against the pure ones (relay/rtpstats.py, relay/accel.py) and both
against aiortc's own ``StreamStatistics`` and ``NackGenerator``, field by field after every
packet (Hypothesis: in-order runs, wraps, reorders, duplicates, large jumps and restarts). The
compiled side is skipped when the extension was not built."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from aiortc import rtcrtpreceiver
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.relay import accel
from parley.relay.quality import FORWARD_LATENCY, vp8_resolution
from parley.relay.rtp import RtpIn
from parley.relay.rtpstats import PyMissingPackets, PyReceiveStatistics

try:
    from parley.relay import _accel  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only where the extension was not built
    _accel = None

IMPLEMENTATIONS: list[tuple[str, Any, Any]] = [("python", PyReceiveStatistics, PyMissingPackets)]
if _accel is not None:
    IMPLEMENTATIONS.append(("compiled", _accel.ReceiveStatistics, _accel.MissingPackets))

STATS_FIELDS = (
    "base_seq",
    "max_seq",
    "cycles",
    "packets_received",
    "jitter",
    "_jitter_q4",
    "_last_arrival",
    "_last_timestamp",
    "packets_expected",
    "packets_lost",
)


@st.composite
def arrivals(draw: st.DrawFn) -> list[tuple[int, int, float, bool]]:
    """(seq, timestamp, arrival, read a receiver report after it) for one stream."""
    seq = draw(st.integers(0, 0xFFFF))
    ts = draw(st.integers(0, 0xFFFFFFFF))
    now = draw(st.floats(1e9, 2e9))
    out = []
    for _ in range(draw(st.integers(1, 60))):
        step = draw(
            st.one_of(
                st.integers(1, 3),  # in order, perhaps a small gap
                st.integers(-12, 0),  # reordered or duplicated
                st.integers(100, 200),  # a burst lost (more than the NACK window)
                st.integers(0x7F00, 0x8100),  # half the sequence space: ahead or behind?
                st.integers(0, 0xFFFF),  # a restart anywhere
            )
        )
        seq = (seq + step) & 0xFFFF
        ts = (ts + draw(st.one_of(st.integers(-3000, 6000), st.integers(0, 0xFFFFFFFF)))) & (
            0xFFFFFFFF
        )
        now += draw(st.floats(0, 0.2))
        out.append((seq, ts, now, draw(st.booleans())))
    return out


@contextmanager
def aiortc_clock(clock: list[float]) -> Iterator[None]:
    """aiortc's ``StreamStatistics.add`` reads ``time.time()`` itself: it reads ``clock[0]``."""
    with mock.patch.object(rtcrtpreceiver, "time", SimpleNamespace(time=lambda: clock[0])):
        yield


@settings(max_examples=100, deadline=None)
@given(arrivals(), st.sampled_from([8000, 48000, 90000]))
def test_statistics_and_nacks_match_aiortc_after_every_packet(
    stream: list[tuple[int, int, float, bool]], clock_rate: int
) -> None:
    ours = [(name, stats(clock_rate), nack()) for name, stats, nack in IMPLEMENTATIONS]
    theirs_stats = rtcrtpreceiver.StreamStatistics(clock_rate)
    theirs_nack = rtcrtpreceiver.NackGenerator()
    clock = [0.0]
    with aiortc_clock(clock):
        for seq, ts, now, report in stream:
            clock[0] = now
            packet = SimpleNamespace(sequence_number=seq, timestamp=ts)
            theirs_stats.add(packet)
            missed = theirs_nack.add(packet)
            expected = {f: getattr(theirs_stats, f) for f in STATS_FIELDS}
            for name, stats, nack in ours:
                stats.add(seq, ts, now)
                assert nack.add(seq) is missed, name
                assert nack.missing == theirs_nack.missing, name
                assert len(nack) == len(theirs_nack.missing), name
                assert nack.max_seq == theirs_nack.max_seq, name
                assert {f: getattr(stats, f) for f in STATS_FIELDS} == expected, name
            if report:  # the RTCP loop's reads; fraction_lost starts a new interval
                fraction = theirs_stats.fraction_lost
                for name, stats, _ in ours:
                    assert stats.fraction_lost == fraction, name
                    assert (stats._expected_prior, stats._received_prior) == (
                        theirs_stats._expected_prior,
                        theirs_stats._received_prior,
                    ), name


@pytest.mark.parametrize(("name", "stats", "nack"), IMPLEMENTATIONS)
def test_a_gap_is_reported_and_filled(name: str, stats: Any, nack: Any) -> None:
    s, n = stats(90000), nack()
    for seq in (65534, 65535, 2, 0):
        s.add(seq, seq * 3000, 1000.0 + seq / 100)
        n.add(seq)
    assert n.missing == {1}
    assert (s.max_seq, s.cycles, s.packets_expected, s.packets_lost) == (2, 65536, 5, 1)
    assert s.fraction_lost == 256 // 5
    assert s.fraction_lost == 0  # a new interval


def test_no_packet_yet_reads_as_aiortc_does() -> None:
    for _, stats, nack in IMPLEMENTATIONS:
        s, n = stats(48000), nack()
        assert (s.max_seq, s.base_seq, s.jitter, s.packets_received) == (None, None, 0, 0)
        assert (n.missing, n.max_seq, len(n)) == (set(), None, 0)
        assert n.add(7) is False


# --- the producer's common case in one call --------------------------------------------------

INBOUNDS: list[tuple[str, Any, Any, Any]] = [
    ("python", accel.PyInbound, PyReceiveStatistics, PyMissingPackets)
]
if _accel is not None:
    INBOUNDS.append(("compiled", _accel.Inbound, _accel.ReceiveStatistics, _accel.MissingPackets))


def latency_samples() -> int:
    """Samples in the process's forward-latency histogram, the compiled twin's included (which
    ``FORWARD_LATENCY`` reads only when the compiled path is the one in use)."""
    total = sum(FORWARD_LATENCY.counts)
    if _accel is not None and not accel.COMPILED:
        total += sum(_accel.forward_latency()[0])
    return total


class SlowConsumer:
    """A consumer whose leg is not connected yet: the fan-out hands it back."""

    _route = None


@st.composite
def vp8_payloads(draw: st.DrawFn) -> bytes:
    """Payloads at and near a VP8 key frame's first packet: a payload descriptor (RFC 7741
    4.2) with or without its extensions, then a frame tag (key or not), perhaps cut short."""
    first = draw(st.sampled_from([0x10, 0x90, 0x30, 0xB0, 0x11, 0x00, 0x80]))
    descriptor = bytes([first])
    if first & 0x80:
        ext = draw(st.integers(0, 255))
        descriptor += bytes([ext])
        if ext & 0x80:
            descriptor += draw(st.sampled_from([b"\x85\x01", b"\x05"]))
        if ext & 0x40:
            descriptor += b"\x00"
        if ext & 0x30:
            descriptor += b"\x00"
    tag = bytes([draw(st.sampled_from([0x00, 0x01, 0x10, 0x50]))]) + b"\x00\x00"
    whole = descriptor + tag + b"\x9d\x01\x2a" + draw(st.binary(min_size=4, max_size=8))
    return whole[: draw(st.integers(0, len(whole)))] if draw(st.booleans()) else whole


@st.composite
def inbound_packets(draw: st.DrawFn) -> list[RtpIn]:
    out = []
    seq = draw(st.integers(0, 0xFFFF))
    for _ in range(draw(st.integers(1, 40))):
        seq = (seq + draw(st.one_of(st.integers(1, 3), st.integers(-5, 0)))) & 0xFFFF
        out.append(
            RtpIn(
                payload_type=draw(st.sampled_from([96, 96, 96, 97])),
                marker=draw(st.integers(0, 1)),
                sequence_number=seq,
                timestamp=draw(st.integers(0, 0xFFFFFFFF)),
                ssrc=draw(st.sampled_from([1234, 1234, 1234, 99])),
                payload=draw(st.one_of(st.binary(max_size=40), vp8_payloads())),
                audio_level=draw(
                    st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 127)))
                ),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(
    inbound_packets(),
    st.sampled_from(
        [accel.QUALITY_NONE, accel.QUALITY_VIDEO, accel.QUALITY_VP8, accel.QUALITY_AUDIO]
    ),
    st.booleans(),
    st.booleans(),
)
def test_the_compiled_and_pure_common_case_agree(
    packets: list[RtpIn], quality: int, with_nack: bool, with_consumer: bool
) -> None:
    sides = []
    for name, inbound_type, stats_type, nack_type in INBOUNDS:
        inbound = inbound_type(96, quality, 4)
        inbound.media_ssrc = 1234
        inbound.stats = stats_type(90000)
        inbound.nack = nack_type() if with_nack else None
        sides.append((name, inbound))
    consumer = SlowConsumer()
    consumers = (consumer,) if with_consumer else ()
    want_frames = 0
    taken = 0
    for packet in packets:
        results = []
        for _name, inbound in sides:
            sampled_before = latency_samples()
            flags = inbound.receive(packet, consumers)
            sampled = latency_samples() - sampled_before
            slow = inbound.slow
            results.append(
                (
                    flags,
                    inbound.packets,
                    inbound.octets,
                    inbound.stats.packets_received,
                    inbound.stats.max_seq,
                    inbound.nack.missing if with_nack else None,
                    None if slow is None else [id(c) for c in slow],
                    inbound.frames,
                    inbound.frame_ts,
                    sampled,  # one in four of the common case, into the process's histogram
                )
            )
            if flags & accel.IN_SLOW:
                # sent with the abs-send-time of this packet's one clock read
                assert 0 <= inbound.abs_send_time <= 0xFFFFFF
            if sampled:
                assert 0 <= inbound.latency < 1
        assert all(r == results[0] for r in results), (packet, results)
        flags = results[0][0]
        common = packet.payload_type == 96 and packet.ssrc == 1234
        assert bool(flags & accel.IN_PYTHON) is not common
        if common:
            want_quality = (
                quality == accel.QUALITY_AUDIO
                and packet.audio_level is not None
                or quality == accel.QUALITY_VP8
                and vp8_resolution(packet.payload) is not None
            )
            assert bool(flags & accel.IN_QUALITY) is want_quality
            if packet.marker and quality in (accel.QUALITY_VIDEO, accel.QUALITY_VP8):
                # a frame end is counted in the inbound itself, not left to Python
                assert sides[0][1].frame_ts == packet.timestamp
            assert bool(flags & accel.IN_SLOW) is with_consumer
        else:
            assert flags == accel.IN_PYTHON
        want_frames += bool(
            common and packet.marker and quality in (accel.QUALITY_VIDEO, accel.QUALITY_VP8)
        )
        assert results[0][7] == want_frames
        taken += common
        # every fourth packet the common case takes is sampled into the histogram, in C
        # for the compiled twin (no flag, no Python call)
        assert results[0][-1] == (common and taken % 4 == 0)


@pytest.mark.parametrize(("name", "inbound_type", "stats_type", "nack_type"), INBOUNDS)
def test_without_statistics_the_python_path_takes_the_packet(
    name: str, inbound_type: Any, stats_type: Any, nack_type: Any
) -> None:
    inbound = inbound_type(96, accel.QUALITY_VIDEO, 16)
    packet = RtpIn(payload_type=96, marker=0, sequence_number=1, timestamp=0, ssrc=5, payload=b"x")
    assert inbound.receive(packet, ()) == accel.IN_PYTHON  # no media SSRC yet
    inbound.media_ssrc = 5
    assert inbound.receive(packet, ()) == accel.IN_PYTHON  # no statistics yet
    inbound.stats = stats_type(90000)
    assert inbound.receive(packet, ()) == 0
    assert (inbound.packets, inbound.octets, inbound.stats.packets_received) == (1, 1, 1)
    with pytest.raises(ValueError):
        inbound_type(96, accel.QUALITY_VIDEO, 3)  # not a power of two


@pytest.mark.parametrize(("name", "inbound_type", "stats_type", "nack_type"), INBOUNDS)
def test_calling_it_leaves_to_the_fallback_only_what_python_must_do(
    name: str, inbound_type: Any, stats_type: Any, nack_type: Any
) -> None:
    left: list[tuple[int, int]] = []
    inbound = inbound_type(96, accel.QUALITY_VIDEO, 16)
    inbound.view = SimpleNamespace(consumers=())
    inbound.fallback = lambda packet, flags: left.append((packet.sequence_number, flags))
    inbound.media_ssrc = 5
    inbound.stats = stats_type(90000)
    inbound.nack = nack_type()

    def packet(seq: int, marker: int = 0, pt: int = 96) -> RtpIn:
        return RtpIn(
            payload_type=pt, marker=marker, sequence_number=seq, timestamp=0, ssrc=5, payload=b"x"
        )

    assert inbound(packet(1)) is None and left == []  # all done in one call
    inbound(packet(3, marker=1))  # 2 is missing; a frame ends (counted here, not in Python)
    assert left == [(3, accel.IN_NACK)]
    assert (inbound.frames, inbound.frame_ts) == (1, 0)
    inbound(packet(4, pt=97))  # not the media payload type
    assert left[-1] == (4, accel.IN_PYTHON)
    inbound.extra = accel.IN_SINKS  # a recorder
    inbound(packet(5))  # 4 never reached the statistics (it went to Python): missing
    assert left[-1] == (5, accel.IN_NACK | accel.IN_SINKS)
    inbound.hold = True  # a consumer waits for a keyframe: every packet to Python, untouched
    inbound(packet(6))
    assert left[-1] == (6, accel.IN_PYTHON)
    assert (inbound.packets, inbound.stats.packets_received, inbound.stats.max_seq) == (3, 3, 5)
    inbound.view = SimpleNamespace(consumers=[])  # a list, not the table's tuple
    inbound.hold = False
    with pytest.raises(TypeError):
        inbound(packet(7))
