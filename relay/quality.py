"""Call quality as the relay sees it, without decoding: per-leg counters, RTCP receiver-report
figures, round-trip times from our own sender reports, and a score per leg.

Two kinds of legs (LiveKit's "upstream" / "downstream"):

- :class:`UpstreamQuality`, one per producer (publisher -> relay): sequence gaps (the loss the
  relay sees), interarrival jitter (RFC 3550 §6.4.1, from aiortc's ``StreamStatistics``), NACKs
  and PLIs we sent, RTX received, frames (marker bits), keyframes and VP8 resolution, and the
  talk time of audio (:mod:`relay.speech`).
- :class:`DownstreamQuality`, one per consumer (relay -> subscriber): loss and jitter from the
  subscriber's receiver reports, RTT = arrival − LSR − DLSR matched against the sender reports
  the consumer sent (their NTP field is the publisher's clock, so the match is by value, and the
  send time is ours), NACKs, PLIs and FIRs received.

The score is LiveKit's simplified E-model MOS (1.0–4.5; pkg/sfu/connectionquality/scorer.go):
R = 100 − delay effect − loss·w with delay d = RTT/2 + 2·jitter (ms), the effect d/40, or
(d − 120)/10 above 160 ms, w = 8 for Opus and 10 for video; MOS = 1 + 0.035R + 7e-6·R(R−60)(100−R).

The same score, graded good / fair / poor (:func:`grade`) over a few seconds of each of a
participant's legs (:class:`LegScore`), is what the pages show on each tile (signaling's
``connection_quality`` message).

All of it is pure (time comes in as an argument) and O(1) per packet.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from .speech import SpeechTracker

LOSS_WEIGHT = {"audio": 8.0, "video": 10.0}
SENT_REPORTS_KEPT = 8


def mos(loss_percent: float, rtt_ms: float | None, jitter_ms: float, kind: str) -> float:
    """LiveKit's E-model MOS for one leg (1.0 = unusable, 4.5 = excellent)."""
    delay = (rtt_ms or 0.0) / 2 + 2 * jitter_ms
    effect = (delay - 120) / 10 if delay > 160 else delay / 40
    r = 100.0 - effect - max(0.0, loss_percent) * LOSS_WEIGHT.get(kind, 10.0)
    r = max(0.0, min(100.0, r))
    score = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    return round(max(1.0, min(4.5, score)), 2)


GOOD_SCORE = 4.0
"""A MOS from here up is "good" (video with up to 2 % loss at a normal RTT)."""
FAIR_SCORE = 3.0
"""A MOS from here up to :data:`GOOD_SCORE` is "fair" (about 4 % video loss); below, "poor"."""


def grade(score: float | None) -> str | None:
    """``good``, ``fair`` or ``poor`` for a MOS (None: nothing measured)."""
    if score is None:
        return None
    if score >= GOOD_SCORE:
        return "good"
    if score >= FAIR_SCORE:
        return "fair"
    return "poor"


class LegScore:
    """One leg's MOS since the previous call, from the counters the relay keeps anyway
    (:class:`UpstreamQuality` / :class:`DownstreamQuality` and aiortc's stream statistics).
    It keeps its own previous values, so the report samples' deltas are left alone."""

    __slots__ = ("_packets", "_expected", "_lost")

    def __init__(self) -> None:
        self._packets = 0
        self._expected = 0
        self._lost = 0

    def _loss(self, packets: int, expected: int, lost: int) -> tuple[int, float]:
        sent = packets - self._packets
        d_expected, d_lost = expected - self._expected, lost - self._lost
        self._packets, self._expected, self._lost = packets, expected, lost
        return sent, (100.0 * d_lost / d_expected if d_expected > 0 else 0.0)

    def upstream(self, producer: Any, rtt_ms: float | None) -> float | None:
        """A producer's leg (publisher -> relay): the loss and jitter the relay sees."""
        quality: UpstreamQuality = producer.quality
        stream = producer.media_statistics()
        expected = received = jitter = 0
        if stream is not None and stream.max_seq is not None:
            expected, received, jitter = (
                stream.packets_expected,
                stream.packets_received,
                stream.jitter,
            )
        sent, loss = self._loss(producer.packets, expected, max(0, expected - received))
        if not sent:
            return None
        jitter_ms = 1000.0 * jitter / quality.clock_rate if quality.clock_rate else 0.0
        return mos(loss, rtt_ms, jitter_ms, quality.kind)

    def downstream(self, consumer: Any) -> float | None:
        """A consumer's leg (relay -> subscriber): loss, jitter and RTT its receiver reports."""
        quality: DownstreamQuality = consumer.quality
        sent, loss = self._loss(consumer.packets, quality.highest_seq, quality.cumulative_lost)
        if not sent or not quality.reports:
            return None
        jitter_ms = 1000.0 * quality.jitter / quality.clock_rate if quality.clock_rate else 0.0
        rtt_ms = None if quality.rtt is None else 1000.0 * quality.rtt
        return mos(min(100.0, max(0.0, loss)), rtt_ms, jitter_ms, quality.kind)


def vp8_resolution(payload: bytes) -> tuple[int, int] | None:
    """Width and height from the first packet of a VP8 key frame (RFC 6386 §9.1), else None."""
    if len(payload) < 2:
        return None
    first = payload[0]
    if not first & 0x10 or first & 0x07:
        return None
    pos = 1
    if first & 0x80:
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            if len(payload) <= pos:
                return None
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    header = payload[pos : pos + 10]
    if len(header) < 10 or header[0] & 0x01 or header[3:6] != b"\x9d\x01\x2a":
        return None
    width = (header[6] | header[7] << 8) & 0x3FFF
    height = (header[8] | header[9] << 8) & 0x3FFF
    return width, height


class FrameCount:
    """Video frame ends (marker bits) and the last one's RTP timestamp. The producer's
    ``accel.Inbound`` has the same two attributes and counts its common case's itself."""

    __slots__ = ("frames", "frame_ts")

    def __init__(self) -> None:
        self.frames = 0
        self.frame_ts: int | None = None


class UpstreamQuality:
    """What one producer's packets show (publisher -> relay). ``count`` holds the frame ends
    (a ``FrameCount``, or the producer's ``accel.Inbound``, which counts most of them)."""

    __slots__ = (
        "kind",
        "clock_rate",
        "vp8",
        "count",
        "keyframes",
        "resolution",
        "speech",
        "_last",
        "_sampled_ts",
    )

    def __init__(
        self, kind: str, mime_type: str, clock_rate: int, count: Any | None = None
    ) -> None:
        self.kind = kind
        self.clock_rate = clock_rate
        self.vp8 = mime_type.lower() == "video/vp8"
        self.count: Any = FrameCount() if count is None else count
        self.keyframes = 0
        self.resolution: tuple[int, int] | None = None
        self.speech: SpeechTracker | None = SpeechTracker(clock_rate) if kind == "audio" else None
        self._last: dict[str, float] = {"_at": time.monotonic()}
        self._sampled_ts: int | None = None

    @property
    def frames(self) -> int:
        """Video frame ends so far."""
        return int(self.count.frames)

    def on_packet(self, packet: Any, now: float) -> None:
        """One forwarded packet (``packet`` is a ``relay.rtp.RtpIn``); ``now`` monotonic."""
        if self.speech is None and packet.marker:
            count = self.count
            count.frames += 1
            count.frame_ts = packet.timestamp
        self.on_taken(packet, now)

    def on_taken(self, packet: Any, now: float) -> None:
        """A packet the compiled common case took and flagged ``IN_QUALITY`` (it counted the
        frame end itself): an audio level, or a VP8 key frame's first packet."""
        if self.speech is not None:
            level = packet.audio_level
            if level is not None:
                self.speech.on_level(level[1], packet.timestamp, now, level[0])
            return
        if self.vp8:
            payload = packet.payload
            # a key frame starts with S=1, PID=0 and P=0 in the VP8 header (checked in full below)
            if payload and payload[0] & 0x10:
                size = vp8_resolution(payload)
                if size is not None:
                    self.keyframes += 1
                    self.resolution = size

    def _frame_rate(self, frames: int, elapsed: float) -> float:
        """Frames per second of media time (RTP timestamps of the frames' ends), so that a burst
        of late packets after a stall does not read as a high frame rate; arrival time only
        when the window holds fewer than two frame ends."""
        frame_ts = self.count.frame_ts
        last, self._sampled_ts = self._sampled_ts, frame_ts
        if last is not None and frame_ts is not None and self.clock_rate:
            span = ((frame_ts - last) & 0xFFFFFFFF) / self.clock_rate
            if frames and 0 < span < 3600:
                return round(frames / span, 1)
        return round(frames / elapsed, 1) if elapsed else 0.0

    def sample(
        self, now: float, wall: float, producer: Any, rtt_ms: float | None
    ) -> dict[str, Any]:
        """Figures since the previous sample. ``producer`` is the ``relay.Producer``; ``rtt_ms``
        the participant's RTT seen on its downstream legs (upstream RTT needs RTCP XR)."""
        expected = lost = jitter_units = 0
        stream = producer.media_statistics()
        if stream is not None and stream.max_seq is not None:
            expected = stream.packets_expected
            lost = max(0, expected - stream.packets_received)
            jitter_units = stream.jitter
        totals = {
            "packets": producer.packets,
            "bytes": producer.octets,
            "expected": expected,
            "lost": lost,
            "nacks": producer.nacks_sent,
            "plis": producer.keyframe_requests,
            "rtx": producer.retransmissions,
            "frames": self.frames,
            "keyframes": self.keyframes,
        }
        delta = _delta(self._last, totals, now)
        elapsed = delta.pop("_elapsed")
        loss = 100.0 * delta["lost"] / delta["expected"] if delta["expected"] > 0 else 0.0
        jitter_ms = 1000.0 * jitter_units / self.clock_rate if self.clock_rate else 0.0
        data: dict[str, Any] = {
            "leg": "up",
            "kind": self.kind,
            "packets": delta["packets"],
            "bytes": delta["bytes"],
            "bitrate": round(8 * delta["bytes"] / elapsed) if elapsed else 0,
            "loss": round(max(0.0, loss), 2),
            "jitter_ms": round(jitter_ms, 1),
            "rtt_ms": None if rtt_ms is None else round(rtt_ms, 1),
            "nacks": delta["nacks"],
            "plis": delta["plis"],
            "firs": 0,
            "rtx": delta["rtx"],
        }
        if self.kind == "video":
            data["frames"] = delta["frames"]
            data["fps"] = self._frame_rate(delta["frames"], elapsed)
            data["keyframes"] = delta["keyframes"]
            data["resolution"] = (
                f"{self.resolution[0]}x{self.resolution[1]}" if self.resolution else None
            )
        if self.speech is not None:
            data["speech"] = self.speech.take(now, wall)
        data["score"] = (
            mos(data["loss"], rtt_ms, jitter_ms, self.kind) if delta["packets"] else None
        )
        return data


class DownstreamQuality:
    """What one consumer's subscriber reports (relay -> subscriber)."""

    __slots__ = (
        "kind",
        "clock_rate",
        "nacks",
        "plis",
        "firs",
        "fraction_lost",
        "cumulative_lost",
        "highest_seq",
        "jitter",
        "rtt",
        "reports",
        "_sent",
        "_last",
        "_rtts",
    )

    def __init__(self, kind: str, clock_rate: int) -> None:
        self.kind = kind
        self.clock_rate = clock_rate
        self.nacks = 0
        self.plis = 0
        self.firs = 0
        self.fraction_lost = 0
        self.cumulative_lost = 0
        self.highest_seq = 0
        self.jitter = 0
        self.rtt: float | None = None
        """The latest round-trip time in seconds."""
        self.reports = 0
        self._sent: dict[int, float] = {}
        """Middle 32 bits of the NTP timestamp of our recent sender reports -> monotonic time."""
        self._last: dict[str, float] = {"_at": time.monotonic()}
        self._rtts: list[float] = []

    def on_sender_report(self, ntp_timestamp: int, now: float) -> None:
        key = (ntp_timestamp >> 16) & 0xFFFFFFFF
        sent = self._sent
        sent[key] = now
        if len(sent) > SENT_REPORTS_KEPT:
            del sent[next(iter(sent))]

    def on_report(self, report: Any, now: float) -> None:
        """A receiver report block about our SSRC (aiortc ``RtcpReceiverInfo``)."""
        self.reports += 1
        self.fraction_lost = report.fraction_lost
        self.cumulative_lost = report.packets_lost
        self.highest_seq = report.highest_sequence
        self.jitter = report.jitter
        sent = self._sent.get(report.lsr) if report.lsr else None
        if sent is not None:
            rtt = now - sent - report.dlsr / 65536
            if 0 <= rtt < 10:
                self.rtt = rtt
                self._rtts.append(rtt)

    def on_nack(self, count: int) -> None:
        self.nacks += count

    def on_pli(self) -> None:
        self.plis += 1

    def on_fir(self) -> None:
        self.firs += 1

    def sample(self, now: float, consumer: Any) -> dict[str, Any]:
        totals = {
            "packets": consumer.packets,
            "bytes": consumer.octets,
            "nacks": self.nacks,
            "plis": self.plis,
            "firs": self.firs,
            "rtx": consumer.retransmitted,
            "lost": self.cumulative_lost,
            "highest": self.highest_seq,
        }
        delta = _delta(self._last, totals, now)
        elapsed = delta.pop("_elapsed")
        if delta["highest"] > 0:
            loss = 100.0 * delta["lost"] / delta["highest"]
        else:
            loss = 100.0 * self.fraction_lost / 256
        jitter_ms = 1000.0 * self.jitter / self.clock_rate if self.clock_rate else 0.0
        rtts, self._rtts = self._rtts, []
        rtt_ms = 1000.0 * sum(rtts) / len(rtts) if rtts else None
        data: dict[str, Any] = {
            "kind": self.kind,
            "packets": delta["packets"],
            "bytes": delta["bytes"],
            "bitrate": round(8 * delta["bytes"] / elapsed) if elapsed else 0,
            "loss": round(min(100.0, max(0.0, loss)), 2),
            "jitter_ms": round(jitter_ms, 1),
            "rtt_ms": None if rtt_ms is None else round(rtt_ms, 1),
            "nacks": delta["nacks"],
            "plis": delta["plis"],
            "firs": delta["firs"],
            "rtx": delta["rtx"],
            "reports": self.reports,
        }
        data["score"] = (
            mos(data["loss"], rtt_ms, jitter_ms, self.kind) if delta["packets"] else None
        )
        return data


def _delta(last: dict[str, float], totals: dict[str, float], now: float) -> dict[str, Any]:
    """``totals`` minus the previous call's (kept in ``last``), and ``_elapsed`` seconds."""
    previous_at = last.get("_at")
    out: dict[str, Any] = {k: v - last.get(k, 0) for k, v in totals.items()}
    out["_elapsed"] = (now - previous_at) if previous_at is not None else 0.0
    last.update(totals)
    last["_at"] = now
    return out


def on_rtcp(quality: DownstreamQuality, packet: Any, ssrc: int, now: float) -> None:
    """Feed one RTCP packet from the subscriber (``ssrc``: the consumer's own)."""
    if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
        for report in packet.reports:
            if report.ssrc == ssrc:
                quality.on_report(report, now)
    elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
        quality.on_nack(len(packet.lost))
    elif isinstance(packet, RtcpPsfbPacket):
        if packet.fmt == RTCP_PSFB_PLI:
            quality.on_pli()
        elif packet.fmt == RTCP_PSFB_FIR:
            quality.on_fir()


class LatencyHistogram:
    """Relay-added latency (a packet's arrival at its producer -> its last consumer's send),
    counted into fixed buckets: a bisect and two increments per observed packet. The producer
    observes a sample, one forwarded packet in ``relay.producer.LATENCY_EVERY`` (16), so the
    counts are a sixteenth of the packets and the distribution is theirs. One per process (the
    Prometheus registry's counters are process-wide too). The compiled packet path counts its
    own samples in C (no Python call on the packet path); ``add_source`` adds such counts
    (``() -> (counts per bucket, total seconds)``, the same buckets) to what this one shows."""

    BOUNDS = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)

    __slots__ = ("_counts", "_total", "_sources")

    def __init__(self) -> None:
        self._counts = [0] * (len(self.BOUNDS) + 1)
        self._total = 0.0
        self._sources: tuple[Callable[[], tuple[Sequence[int], float]], ...] = ()

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self.BOUNDS, seconds)] += 1
        self._total += seconds

    def add_source(self, source: Callable[[], tuple[Sequence[int], float]]) -> None:
        """Counts kept elsewhere (the compiled path's), added to this histogram's."""
        self._sources = (*self._sources, source)

    def _merged(self) -> tuple[list[int], float]:
        counts, total = list(self._counts), self._total
        for source in self._sources:
            more, more_total = source()
            if len(more) != len(counts):
                raise ValueError("a latency source with other buckets")
            counts = [a + b for a, b in zip(counts, more, strict=True)]
            total += more_total
        return counts, total

    @property
    def counts(self) -> list[int]:
        """Samples per bucket (the last is above every bound), all sources."""
        return self._merged()[0]

    @property
    def total(self) -> float:
        """Seconds of all samples, all sources."""
        return self._merged()[1]

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, ending with ``+Inf``."""
        out, running = [], 0
        counts = self.counts
        for bound, count in zip((*self.BOUNDS, float("inf")), counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


FORWARD_LATENCY = LatencyHistogram()
