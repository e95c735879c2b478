"""Receive statistics and the NACK generator of one upstream stream (pure Python).

The compiled twins are ``_accel.ReceiveStatistics`` and ``_accel.MissingPackets``
(relay/_accel.c); relay/accel.py picks one pair. Both behave exactly as aiortc's
``StreamStatistics`` and ``NackGenerator`` (aiortc/rtcrtpreceiver.py), which they replace on the
packet path, and both are duck-compatible with what aiortc's RTCP loop reads from
``RTCRtpReceiver.__remote_streams`` to build receiver reports (``fraction_lost``,
``packets_lost``, ``max_seq``, ``jitter``) and with what relay/quality.py reads
(``packets_expected``, ``packets_received``, ``jitter``). tests/relay/test_rtpstats.py checks
all three against each other (Hypothesis).

The two differences from aiortc are in the interface, not the figures: ``add`` takes the
sequence number, the RTP timestamp and the arrival time (wall clock, seconds, as aiortc reads
``time.time()``) instead of a packet, so the caller reads the clock once per packet for this and
the abs-send-time; and the missing set is a 128-bit window behind the highest sequence number
(all aiortc's truncation ever keeps) instead of a Python set, ``missing`` building the set
when asked.
"""

from __future__ import annotations

RTP_HISTORY_SIZE = 128
"""Missing packets further than this behind the highest sequence number are forgotten
(aiortc's ``RTP_HISTORY_SIZE``)."""

PACKETS_LOST_MIN = -(1 << 23)
PACKETS_LOST_MAX = (1 << 23) - 1
"""The 24-bit signed range of a receiver report's cumulative loss (RFC 3550 §6.4.1)."""

_WINDOW_MASK = (1 << RTP_HISTORY_SIZE) - 1


def seq_newer(a: int, b: int) -> bool:
    """Whether 16-bit sequence number ``a`` comes after ``b`` (aiortc's ``uint16_gt``)."""
    d = (a - b) & 0xFFFF
    return 0 < d < 0x8000


class PyReceiveStatistics:
    """Sequence tracking (RFC 3550 A.1: base, highest, wrap cycles, count; no probation, as
    aiortc), interarrival jitter (A.8, in timestamp units, Q4 fixed point) and the expected /
    lost / fraction-lost figures of a receiver report (A.3) of one SSRC."""

    __slots__ = (
        "base_seq",
        "max_seq",
        "cycles",
        "packets_received",
        "_clockrate",
        "_jitter_q4",
        "_last_arrival",
        "_last_timestamp",
        "_expected_prior",
        "_received_prior",
    )

    def __init__(self, clockrate: int) -> None:
        self.base_seq: int | None = None
        self.max_seq: int | None = None
        self.cycles = 0
        self.packets_received = 0
        self._clockrate = clockrate
        self._jitter_q4 = 0
        self._last_arrival = 0
        self._last_timestamp: int | None = None
        self._expected_prior = 0
        self._received_prior = 0

    def add(self, seq: int, timestamp: int, now: float) -> None:
        """One received packet; ``now`` is its arrival time (``time.time()``)."""
        max_seq = self.max_seq
        self.packets_received += 1
        if max_seq is None:
            self.base_seq = seq
        elif not 0 < (seq - max_seq) & 0xFFFF < 0x8000:
            return  # a duplicate, a reordered or a very old packet
        arrival = int(now * self._clockrate)
        if max_seq is not None and seq < max_seq:
            self.cycles += 1 << 16
        self.max_seq = seq
        if timestamp != self._last_timestamp and self.packets_received > 1:
            diff = abs((arrival - self._last_arrival) - (timestamp - self._last_timestamp))  # type: ignore[operator]
            self._jitter_q4 += diff - ((self._jitter_q4 + 8) >> 4)
        self._last_arrival = arrival
        self._last_timestamp = timestamp

    @property
    def fraction_lost(self) -> int:
        """Loss since the previous read, in 1/256 (reading it starts a new interval)."""
        expected = self.packets_expected
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self.packets_received - self._received_prior
        self._received_prior = self.packets_received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval

    @property
    def jitter(self) -> int:
        """Interarrival jitter in timestamp units."""
        return self._jitter_q4 >> 4

    @property
    def packets_expected(self) -> int:
        """Extended highest sequence number minus the first one, plus one."""
        return self.cycles + self.max_seq - self.base_seq + 1  # type: ignore[operator]

    @property
    def packets_lost(self) -> int:
        """Cumulative loss, clamped to 24 bits signed (duplicates make it negative)."""
        return max(
            PACKETS_LOST_MIN, min(self.packets_expected - self.packets_received, PACKETS_LOST_MAX)
        )


class PyMissingPackets:
    """The NACK generator: which sequence numbers within :data:`RTP_HISTORY_SIZE` behind the
    highest one have not arrived. Bit ``i`` of the window is ``max_seq - 1 - i``."""

    __slots__ = ("max_seq", "_window")

    def __init__(self) -> None:
        self.max_seq: int | None = None
        self._window = 0

    def add(self, seq: int) -> bool:
        """One received packet; True when it showed packets missing (a gap before it)."""
        max_seq = self.max_seq
        if max_seq is None:
            self.max_seq = seq
            return False
        ahead = (seq - max_seq) & 0xFFFF
        if 0 < ahead < 0x8000:
            # the old window moves back by ``ahead``; max_seq itself (received) lands at bit
            # ahead - 1 as a zero, and the ahead - 1 numbers in between are missing
            gap = ahead - 1
            window = self._window << ahead
            if gap:
                window |= (1 << min(gap, RTP_HISTORY_SIZE)) - 1
            self._window = window & _WINDOW_MASK
            self.max_seq = seq
            return gap > 0
        behind = (max_seq - 1 - seq) & 0xFFFF
        if behind < RTP_HISTORY_SIZE:
            self._window &= ~(1 << behind)
        return False

    @property
    def missing(self) -> set[int]:
        """The missing sequence numbers (a new set)."""
        window, max_seq = self._window, self.max_seq
        if not window or max_seq is None:
            return set()
        return {(max_seq - 1 - i) & 0xFFFF for i in range(RTP_HISTORY_SIZE) if window >> i & 1}

    def __len__(self) -> int:
        return self._window.bit_count()
