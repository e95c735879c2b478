"""Pure RTP helpers for the forwarding path: per-consumer header rewriting, RTX wrapping and
keyframe detection. No I/O, no asyncio: everything here takes bytes or packets and returns bytes.

The payload of a forwarded packet is never touched: only the fixed header (SSRC, payload type,
sequence number, timestamp) and the header extensions the consumer negotiated are rewritten.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

RTP_HEADER = struct.Struct("!BBHII")
ONE_BYTE_PROFILE = b"\xbe\xde"
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


class RtpLike(Protocol):
    """The parts of a parsed RTP packet we read (aiortc's ``RtpPacket`` has them)."""

    marker: int
    sequence_number: int
    timestamp: int
    csrc: list[int] | tuple[int, ...]
    payload: bytes
    padding_size: int


class RtpRewriter:
    """Rewrites one producer's packets into one consumer's stream (RFC 3550 §5.1, RFC 8285).

    Offsets are chosen when the consumer synchronises on its first packet, so that the consumer's
    stream starts at ``first_seq`` and stays continuous from there on.
    """

    __slots__ = (
        "ssrc",
        "payload_type",
        "seq_offset",
        "ts_offset",
        "_mid_element",
        "abs_send_time_id",
        "audio_level_id",
    )

    def __init__(
        self,
        *,
        ssrc: int,
        payload_type: int,
        mid: str | None,
        mid_id: int | None,
        abs_send_time_id: int | None,
        audio_level_id: int | None,
    ) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.seq_offset = 0
        self.ts_offset = 0
        self._mid_element = b""
        if mid is not None and mid_id:
            value = mid.encode("utf8")
            if not 1 <= len(value) <= 16 or not 1 <= mid_id <= 14:
                raise ValueError(f"mid {mid!r} does not fit a one-byte header extension")
            self._mid_element = bytes([(mid_id << 4) | (len(value) - 1)]) + value
        self.abs_send_time_id = abs_send_time_id or 0
        self.audio_level_id = audio_level_id or 0

    def sync(self, in_seq: int, in_ts: int, out_seq: int, out_ts: int) -> None:
        """Map the incoming ``(in_seq, in_ts)`` onto ``(out_seq, out_ts)`` from now on."""
        self.seq_offset = (out_seq - in_seq) % SEQ_MOD
        self.ts_offset = (out_ts - in_ts) % TS_MOD

    def out_seq(self, in_seq: int) -> int:
        return (in_seq + self.seq_offset) & 0xFFFF

    def out_ts(self, in_ts: int) -> int:
        return (in_ts + self.ts_offset) & 0xFFFFFFFF

    @property
    def mid_element(self) -> bytes:
        """The mid extension element (id/length byte and value), or b"" without a mid."""
        return self._mid_element

    def rewrite(
        self, packet: RtpLike, abs_send_time: int | None, audio_level: tuple[bool, int] | None
    ) -> bytes:
        """Serialise ``packet`` for this consumer. The payload bytes are copied unchanged."""
        return rewrite_rtp(
            packet,
            self.ssrc,
            self.payload_type,
            self.seq_offset,
            self.ts_offset,
            self._mid_element,
            self.abs_send_time_id,
            -1 if abs_send_time is None else abs_send_time,
            self.audio_level_id,
            audio_level,
        )


_EXT_HEADERS = {words: ONE_BYTE_PROFILE + words.to_bytes(2, "big") for words in range(1, 8)}
_PADDING = {n: b"\x00" * (n - 1) + bytes((n,)) for n in range(1, 256)}


def rewrite_rtp(
    packet: RtpLike,
    ssrc: int,
    payload_type: int,
    seq_offset: int,
    ts_offset: int,
    mid_element: bytes,
    abs_send_time_id: int,
    abs_send_time: int,
    audio_level_id: int,
    audio_level: tuple[bool, int] | None,
) -> bytes:
    """``packet`` with a new SSRC, payload type, shifted sequence number and timestamp, and the
    extensions the consumer negotiated: mid, abs-send-time (``abs_send_time`` < 0: none) and
    audio level (RFC 3550 §5.1, RFC 8285 §4.2). The payload bytes are copied unchanged.

    The pure-Python twin of the compiled rewrite (relay/_accel.c); a few allocations only."""
    ext = mid_element
    if abs_send_time >= 0 and abs_send_time_id:
        ext += ((((abs_send_time_id << 4) | 2) << 24) | (abs_send_time & 0xFFFFFF)).to_bytes(
            4, "big"
        )
    if audio_level is not None and audio_level_id:
        ext += bytes(((audio_level_id << 4), (0x80 if audio_level[0] else 0) | audio_level[1]))
    csrc = packet.csrc
    padding = packet.padding_size
    first = 0x80 | len(csrc)
    if padding:
        first |= 0x20
    if ext:
        first |= 0x10
        pad = -len(ext) % 4
        if pad:
            ext += b"\x00" * pad
        ext = _EXT_HEADERS[len(ext) // 4] + ext
    header = RTP_HEADER.pack(
        first,
        (packet.marker << 7) | payload_type,
        (packet.sequence_number + seq_offset) & 0xFFFF,
        (packet.timestamp + ts_offset) & 0xFFFFFFFF,
        ssrc,
    )
    if csrc:
        header += struct.pack(f"!{len(csrc)}I", *csrc)
    if padding:
        return b"".join((header, ext, packet.payload, _PADDING[padding]))
    return b"".join((header, ext, packet.payload))


def header_length(data: bytes) -> int:
    """Length of the RTP fixed header, CSRC list and header extension of ``data``."""
    if len(data) < 12:
        raise ValueError("RTP packet is shorter than its fixed header")
    length = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < length + 4:
            raise ValueError("RTP header extension is truncated")
        length += 4 + 4 * ((data[length + 2] << 8) | data[length + 3])
    if len(data) < length:
        raise ValueError("RTP header is truncated")
    return length


def wrap_rtx(data: bytes, *, payload_type: int, sequence_number: int, ssrc: int) -> bytes:
    """Turn a serialised RTP packet into its RTX retransmission (RFC 4588 §4).

    The RTX payload is the original sequence number followed by the original payload; the header
    extensions are kept; padding is dropped.
    """
    hlen = header_length(data)
    end = len(data)
    if data[0] & 0x20:
        end -= data[-1]
    header = bytearray(data[:hlen])
    header[0] &= ~0x20 & 0xFF
    header[1] = (data[1] & 0x80) | payload_type
    struct.pack_into("!H", header, 2, sequence_number)
    struct.pack_into("!I", header, 8, ssrc)
    return bytes(header) + data[2:4] + data[hlen:end]


def is_vp8_keyframe(payload: bytes) -> bool:
    """True when ``payload`` starts a VP8 key frame (RFC 7741 §4.2-4.3)."""
    if not payload:
        return False
    first = payload[0]
    # S bit set and partition index 0: the first packet of a frame
    if not first & 0x10 or first & 0x07:
        return False
    pos = 1
    if first & 0x80:  # X: extended control bits
        if len(payload) < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K
            pos += 1
    if len(payload) <= pos:
        return False
    # VP8 payload header: P bit (inverse key frame flag) is bit 0 of the first byte
    return not payload[pos] & 0x01


def is_h264_keyframe(payload: bytes) -> bool:
    """True when ``payload`` carries an IDR slice or an SPS (RFC 6184 §5.6-5.8)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (5, 7):
        return True
    if nal_type == 24:  # STAP-A
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            if size == 0:
                return False
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal_type == 28 and len(payload) > 1:  # FU-A: start of an IDR slice
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    return False


def keyframe_detector(mime_type: str) -> KeyframeDetector | None:
    """The keyframe test for a codec, or None when keyframes cannot be told (never gate)."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return is_vp8_keyframe
    if mime == "video/h264":
        return is_h264_keyframe
    return None


class KeyframeDetector(Protocol):
    def __call__(self, payload: bytes) -> bool: ...


class RtpIn:
    """A received RTP packet, parsed only as far as forwarding needs (RFC 3550 §5.1, RFC 8285).

    Duck-compatible with what aiortc's ``StreamStatistics``, ``NackGenerator`` and ``RtpRouter``
    read from its own ``RtpPacket`` (``ssrc``, ``payload_type``, ``sequence_number``,
    ``timestamp``).
    """

    __slots__ = (
        "payload_type",
        "marker",
        "sequence_number",
        "timestamp",
        "ssrc",
        "csrc",
        "payload",
        "padding_size",
        "abs_send_time",
        "audio_level",
    )

    def __init__(
        self,
        *,
        payload_type: int,
        marker: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload: bytes,
        csrc: list[int] | tuple[int, ...] = (),
        padding_size: int = 0,
        abs_send_time: int | None = None,
        audio_level: tuple[bool, int] | None = None,
    ) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.csrc = csrc
        self.payload = payload
        self.padding_size = padding_size
        self.abs_send_time = abs_send_time
        self.audio_level = audio_level

    @classmethod
    def from_aiortc(cls, packet: Any) -> RtpIn:
        """From aiortc's ``RtpPacket`` (the slow path, when aiortc parsed it first)."""
        ext = packet.extensions
        return cls(
            payload_type=packet.payload_type,
            marker=packet.marker,
            sequence_number=packet.sequence_number,
            timestamp=packet.timestamp,
            ssrc=packet.ssrc,
            csrc=packet.csrc,
            payload=packet.payload,
            padding_size=packet.padding_size,
            abs_send_time=ext.abs_send_time,
            audio_level=ext.audio_level,
        )


def parse_rtp(data: bytes, abs_send_time_id: int, audio_level_id: int) -> RtpIn:
    """Parse a decrypted RTP packet; only the abs-send-time and audio-level extensions (one-byte
    or two-byte form) are read. Raises ``ValueError`` on a malformed packet."""
    length = len(data)
    if length < 12:
        raise ValueError("RTP packet is shorter than its fixed header")
    first, second, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise ValueError("RTP packet has a bad version")
    pos = 12
    cc = first & 0x0F
    csrc: tuple[int, ...] = ()
    if cc:
        if length < pos + 4 * cc:
            raise ValueError("RTP CSRC list is truncated")
        csrc = struct.unpack_from(f"!{cc}I", data, pos)
        pos += 4 * cc
    abs_send_time = None
    audio_level = None
    if first & 0x10:
        if length < pos + 4:
            raise ValueError("RTP header extension is truncated")
        profile = (data[pos] << 8) | data[pos + 1]
        end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        if length < end:
            raise ValueError("RTP header extension is truncated")
        pos += 4
        if profile == 0xBEDE:
            while pos < end:
                byte = data[pos]
                if byte == 0:
                    pos += 1
                    continue
                x_id = byte >> 4
                x_len = (byte & 0x0F) + 1
                if x_id == 15 or pos + 1 + x_len > end:
                    break
                if x_id == abs_send_time_id and x_len == 3:
                    abs_send_time = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
                elif x_id == audio_level_id:
                    level = data[pos + 1]
                    audio_level = (bool(level & 0x80), level & 0x7F)
                pos += 1 + x_len
        elif profile & 0xFFF0 == 0x1000:
            while pos + 1 < end:
                x_id = data[pos]
                if x_id == 0:
                    pos += 1
                    continue
                x_len = data[pos + 1]
                if pos + 2 + x_len > end:
                    break
                if x_id == abs_send_time_id and x_len == 3:
                    abs_send_time = (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
                elif x_id == audio_level_id and x_len >= 1:
                    level = data[pos + 2]
                    audio_level = (bool(level & 0x80), level & 0x7F)
                pos += 2 + x_len
        pos = end
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or pos + padding > length:
            raise ValueError("RTP padding is malformed")
    return RtpIn(
        payload_type=second & 0x7F,
        marker=second >> 7,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        csrc=csrc,
        payload=data[pos : length - padding],
        padding_size=padding,
        abs_send_time=abs_send_time,
        audio_level=audio_level,
    )


def unwrap_rtx_in(packet: RtpIn, *, payload_type: int, ssrc: int) -> RtpIn:
    """The original packet inside an RTX retransmission (RFC 4588 §4)."""
    payload = packet.payload
    if len(payload) < 2:
        raise ValueError("RTX payload is too short")
    return RtpIn(
        payload_type=payload_type,
        marker=packet.marker,
        sequence_number=(payload[0] << 8) | payload[1],
        timestamp=packet.timestamp,
        ssrc=ssrc,
        csrc=packet.csrc,
        payload=payload[2:],
        abs_send_time=packet.abs_send_time,
        audio_level=packet.audio_level,
    )
