"""The recorder's sink on a producer (pion ``media.Writer``): ``write`` journals one packet,
``close`` is idempotent. Cheap in the packet path: no decoding, no I/O, no logging."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..rtp import KeyframeDetector, RtpIn, keyframe_detector
from .journal import MAX_QUEUED, PACKET, PACKET_FIXED, Journal, sender_report_record

if TYPE_CHECKING:
    from ..producer import Producer

KEYFRAME_RETRY = 0.2
"""Seconds between keyframe requests while the recording waits for its first keyframe."""
LOSS_WAIT = 0.3
"""Seconds a video packet may stay missing (NACK repair) before the recording asks for a
keyframe: the file cannot show anything after a lost packet until the next keyframe."""
MAX_MISSING = 128


class TrackSink:
    """Journals one producer's packets from its first keyframe (video) or first packet (audio),
    with the publisher's sender reports (NTP <-> RTP) whenever a new one arrived."""

    __slots__ = (
        "producer",
        "journal",
        "closed",
        "packets",
        "_waiting",
        "_is_keyframe",
        "_last_request",
        "_sender_report",
        "_on_close",
        "_next_seq",
        "_missing",
        "_missing_since",
    )

    def __init__(
        self,
        producer: Producer,
        journal: Journal,
        on_close: Callable[[TrackSink], None] = lambda sink: None,
    ) -> None:
        self.producer = producer
        self.journal = journal
        self.closed = False
        self.packets = 0
        self._is_keyframe: KeyframeDetector | None = (
            keyframe_detector(producer.codec.mimeType) if producer.kind == "video" else None
        )
        self._waiting = self._is_keyframe is not None
        self._last_request = time.monotonic()
        self._sender_report: tuple[int, int] | None = None
        self._on_close = on_close
        self._next_seq = -1
        self._missing: set[int] = set()
        self._missing_since = 0.0
        if self._waiting:
            producer.request_keyframe()
        producer.sinks = (*producer.sinks, self)

    def write(self, packet: RtpIn) -> None:
        if self._waiting:
            assert self._is_keyframe is not None
            if not self._is_keyframe(packet.payload):
                now = time.monotonic()
                if now - self._last_request >= KEYFRAME_RETRY:
                    self._last_request = now
                    self.producer.request_keyframe()
                return
            self._waiting = False
        journal = self.journal
        if journal.closing:
            return
        now_us = time.time_ns() // 1000
        report = self.producer.sender_report
        if report is not self._sender_report and report is not None:
            self._sender_report = report
            journal.append(sender_report_record(now_us, report[0], report[1]))
        payload = packet.payload
        # header and payload queued apart: the payload is not copied here
        journal.append(
            PACKET.pack(
                b"P",
                PACKET_FIXED + len(payload),
                now_us,
                packet.sequence_number,
                packet.timestamp,
                packet.marker,
            )
        )
        journal.append(payload)
        self.packets += 1
        if self._is_keyframe is not None:
            self._track_loss(packet.sequence_number)
        if not self.packets & 0xFF and journal.queued > MAX_QUEUED:
            journal.fail("the disk is too slow: the write queue overflowed")

    def _track_loss(self, seq: int) -> None:
        """Missing video packets that NACK did not bring back in time: ask for a keyframe."""
        expected = self._next_seq
        if seq == expected or expected < 0:
            self._next_seq = (seq + 1) & 0xFFFF
        else:
            ahead = (seq - expected) & 0xFFFF
            if ahead < 0x8000:  # packets skipped
                if not self._missing:
                    self._missing_since = time.monotonic()
                if len(self._missing) < MAX_MISSING:
                    self._missing.update((expected + i) & 0xFFFF for i in range(min(ahead, 64)))
                self._next_seq = (seq + 1) & 0xFFFF
            else:  # an older one: the retransmission of a missing packet
                self._missing.discard(seq)
        if self._missing and time.monotonic() - self._missing_since > LOSS_WAIT:
            self._missing.clear()
            self.producer.request_keyframe()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        producer = self.producer
        producer.sinks = tuple(s for s in producer.sinks if s is not self)
        self.journal.close()
        self._on_close(self)
