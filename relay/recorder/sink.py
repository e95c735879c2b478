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
        if not self.packets & 0xFF and journal.queued > MAX_QUEUED:
            journal.fail("the disk is too slow: the write queue overflowed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        producer = self.producer
        producer.sinks = tuple(s for s in producer.sinks if s is not self)
        self.journal.close()
        self._on_close(self)
