"""Pure tests of relay/rtp.py: no loop, no socket."""

from __future__ import annotations

import fractions

import numpy
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unwrap_rtx
from av import VideoFrame
from hypothesis import given
from hypothesis import strategies as st

from parley.relay.rtp import (
    RtpIn,
    RtpRewriter,
    header_length,
    is_h264_keyframe,
    is_vp8_keyframe,
    keyframe_detector,
    parse_rtp,
    unwrap_rtx_in,
    wrap_rtx,
)

MID, ABS, LEVEL = 1, 2, 3
URIS = {
    MID: "urn:ietf:params:rtp-hdrext:sdes:mid",
    ABS: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    LEVEL: "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
}


def extension_map() -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in URIS.items()]
        )
    )
    return extensions


def rewriter(mid: str | None = "3", **kwargs: int) -> RtpRewriter:
    return RtpRewriter(
        ssrc=kwargs.get("ssrc", 0x11223344),
        payload_type=kwargs.get("payload_type", 96),
        mid=mid,
        mid_id=MID,
        abs_send_time_id=ABS,
        audio_level_id=LEVEL,
    )


def packet(**fields: object) -> RtpPacket:
    p = RtpPacket(
        payload_type=int(fields.get("payload_type", 120)),  # type: ignore[call-overload]
        marker=int(fields.get("marker", 0)),  # type: ignore[call-overload]
        sequence_number=int(fields.get("seq", 1000)),  # type: ignore[call-overload]
        timestamp=int(fields.get("ts", 90000)),  # type: ignore[call-overload]
        ssrc=0xDEADBEEF,
        payload=bytes(fields.get("payload", b"\x10\x00\x9d\x01\x2a")),  # type: ignore[call-overload]
    )
    p.csrc = list(fields.get("csrc", []))  # type: ignore[call-overload]
    p.padding_size = int(fields.get("padding", 0))  # type: ignore[call-overload]
    return p


# --- RtpRewriter ---------------------------------------------------------------------------


def test_rewrite_replaces_header_fields_and_keeps_payload() -> None:
    r = rewriter()
    r.sync(in_seq=1000, in_ts=90000, out_seq=5, out_ts=7)
    data = r.rewrite(packet(seq=1001, ts=93000, marker=1), abs_send_time=0x123456, audio_level=None)
    parsed = RtpPacket.parse(data, extension_map())
    assert (parsed.sequence_number, parsed.timestamp) == (6, 3007)
    assert (parsed.ssrc, parsed.payload_type, parsed.marker) == (0x11223344, 96, 1)
    assert parsed.payload == b"\x10\x00\x9d\x01\x2a"
    assert parsed.extensions.mid == "3"
    assert parsed.extensions.abs_send_time == 0x123456
    assert parsed.extensions.audio_level is None


def test_sequence_and_timestamp_wrap_around() -> None:
    r = rewriter()
    r.sync(in_seq=10, in_ts=100, out_seq=0xFFFF, out_ts=0xFFFFFFFF)
    assert r.out_seq(10) == 0xFFFF and r.out_seq(11) == 0 and r.out_seq(9) == 0xFFFE
    assert r.out_ts(100) == 0xFFFFFFFF and r.out_ts(101) == 0
    r.sync(in_seq=0xFFFF, in_ts=0xFFFFFFF0, out_seq=100, out_ts=100)
    assert r.out_seq(0) == 101 and r.out_ts(0x10) == 132


def test_resync_keeps_the_output_continuous() -> None:
    """A new input stream (the publisher restarted) continues where the output left off."""
    r = rewriter()
    r.sync(in_seq=500, in_ts=1000, out_seq=40000, out_ts=5000)
    last_seq, last_ts = r.out_seq(600), r.out_ts(4000)
    r.sync(in_seq=7, in_ts=123456, out_seq=last_seq + 1, out_ts=last_ts + 3000)
    assert r.out_seq(7) == last_seq + 1 and r.out_ts(123456) == last_ts + 3000


def test_audio_level_is_copied() -> None:
    r = rewriter()
    data = r.rewrite(packet(), abs_send_time=None, audio_level=(True, 42))
    parsed = RtpPacket.parse(data, extension_map())
    assert parsed.extensions.audio_level == (True, 42)
    assert parsed.extensions.abs_send_time is None


def test_rewriter_rejects_a_mid_too_long_for_a_one_byte_extension() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        rewriter(mid="x" * 17)


@given(
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    out_seq=st.integers(0, 0xFFFF),
    out_ts=st.integers(0, 0xFFFFFFFF),
    step=st.integers(0, 0xFFFF),
    marker=st.integers(0, 1),
    payload=st.binary(min_size=1, max_size=1200),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    padding=st.integers(0, 255),
    mid=st.one_of(st.none(), st.text("0123456789abc", min_size=1, max_size=16)),
    abs_send_time=st.one_of(st.none(), st.integers(0, 0xFFFFFF)),
    audio_level=st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 127))),
)
def test_rewrite_then_parse_gives_back_every_field(
    seq: int,
    ts: int,
    out_seq: int,
    out_ts: int,
    step: int,
    marker: int,
    payload: bytes,
    csrc: list[int],
    padding: int,
    mid: str | None,
    abs_send_time: int | None,
    audio_level: tuple[bool, int] | None,
) -> None:
    r = rewriter(mid=mid)
    r.sync(seq, ts, out_seq, out_ts)
    later = packet(
        seq=(seq + step) & 0xFFFF,
        ts=(ts + step * 3000) & 0xFFFFFFFF,
        marker=marker,
        payload=payload,
        csrc=csrc,
        padding=padding,
    )
    parsed = RtpPacket.parse(r.rewrite(later, abs_send_time, audio_level), extension_map())
    assert parsed.payload == payload
    assert parsed.marker == marker
    assert parsed.sequence_number == (out_seq + step) & 0xFFFF
    assert parsed.timestamp == (out_ts + step * 3000) & 0xFFFFFFFF
    assert parsed.csrc == csrc
    assert parsed.padding_size == padding
    assert parsed.extensions.mid == mid
    assert parsed.extensions.abs_send_time == abs_send_time
    assert parsed.extensions.audio_level == audio_level


# --- RTX -----------------------------------------------------------------------------------


@given(
    seq=st.integers(0, 0xFFFF),
    rtx_seq=st.integers(0, 0xFFFF),
    payload=st.binary(min_size=0, max_size=1200),
    marker=st.integers(0, 1),
    padding=st.integers(0, 255),
    mid=st.one_of(st.none(), st.just("1")),
)
def test_wrap_rtx_round_trips_through_aiortc_unwrap_rtx(
    seq: int, rtx_seq: int, payload: bytes, marker: int, padding: int, mid: str | None
) -> None:
    r = rewriter(mid=mid, ssrc=1111, payload_type=96)
    original = r.rewrite(
        packet(seq=seq, marker=marker, payload=payload, padding=padding),
        abs_send_time=77,
        audio_level=None,
    )
    rtx = wrap_rtx(original, payload_type=97, sequence_number=rtx_seq, ssrc=2222)
    parsed = RtpPacket.parse(rtx, extension_map())
    assert (parsed.payload_type, parsed.sequence_number, parsed.ssrc) == (97, rtx_seq, 2222)
    assert parsed.padding_size == 0
    assert parsed.extensions.mid == mid
    recovered = unwrap_rtx(parsed, payload_type=96, ssrc=1111)
    expected = RtpPacket.parse(original, extension_map())
    assert recovered.payload == expected.payload == payload
    assert recovered.sequence_number == expected.sequence_number
    assert recovered.timestamp == expected.timestamp
    assert recovered.marker == marker


# --- header_length on untrusted bytes ----------------------------------------------------------


@given(st.binary(max_size=100))
def test_header_length_raises_value_error_only(data: bytes) -> None:
    try:
        length = header_length(data)
    except ValueError:
        return
    assert 12 <= length <= len(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,
        b"\x81" + b"\x00" * 11,
        b"\x90" + b"\x00" * 13,
        b"\x90" + b"\x00" * 13 + b"\x00\x05",
    ],
)
def test_header_length_rejects_truncated_headers(data: bytes) -> None:
    with pytest.raises(ValueError):
        header_length(data)


@given(st.binary(max_size=64))
def test_keyframe_detectors_never_raise(data: bytes) -> None:
    assert isinstance(is_vp8_keyframe(data), bool)
    assert isinstance(is_h264_keyframe(data), bool)


# --- keyframe detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "keyframe"),
    [
        (b"\x10\x00\x9d\x01\x2a", True),  # S=1 PID=0, P=0
        (b"\x10\x01\x00\x00", False),  # P=1: interframe
        (b"\x00\x00\x9d", False),  # not the start of a partition
        (b"\x11\x00\x9d", False),  # partition 1
        (b"\x90\x80\x05\x00\x9d", True),  # X, I with a 7-bit picture id
        (b"\x90\x80\x85\x05\x00\x9d", True),  # X, I with a 15-bit picture id
        (b"\x90\xe0\x85\x05\x07\x20\x00", True),  # X, I (15-bit), L, T
        (b"\x90\xe0\x85\x05\x07\x20\x01", False),
        (b"\x90\x80", False),  # truncated
        (b"", False),
    ],
)
def test_vp8_keyframe_detection_on_crafted_descriptors(payload: bytes, keyframe: bool) -> None:
    assert is_vp8_keyframe(payload) is keyframe


@pytest.mark.parametrize(
    ("payload", "keyframe"),
    [
        (b"\x65\x88", True),  # IDR slice
        (b"\x67\x42", True),  # SPS
        (b"\x41\x9a", False),  # non-IDR slice
        (b"\x18\x00\x02\x09\xf0\x00\x02\x67\x42", True),  # STAP-A: AUD, SPS
        (b"\x18\x00\x02\x09\xf0\x00\x02\x41\x9a", False),  # STAP-A: AUD, slice
        (b"\x18\x00\x00", False),  # STAP-A with a zero-size unit
        (b"\x7c\x85\x88", True),  # FU-A start of IDR
        (b"\x7c\x05\x88", False),  # FU-A continuation of IDR
        (b"\x7c\x81\x88", False),  # FU-A start of a non-IDR slice
        (b"", False),
    ],
)
def test_h264_keyframe_detection_on_crafted_payloads(payload: bytes, keyframe: bool) -> None:
    assert is_h264_keyframe(payload) is keyframe


def _frame(index: int) -> VideoFrame:
    image = numpy.zeros((240, 320, 3), numpy.uint8)
    image[:, :, 0] = (numpy.arange(320) * 3 + index * 7).astype(numpy.uint8)[None, :]
    frame = VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = index * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


@pytest.mark.parametrize(
    ("mime", "parameters"),
    [("video/VP8", {}), ("video/H264", {"packetization-mode": "1"})],
)
def test_keyframe_detection_on_real_encoder_output(mime: str, parameters: dict[str, str]) -> None:
    codec = RTCRtpCodecParameters(
        mimeType=mime, clockRate=90000, payloadType=96, parameters=parameters
    )
    encoder = get_encoder(codec)
    detect = keyframe_detector(mime)
    assert detect is not None
    first, _ = encoder.encode(_frame(0), force_keyframe=True)
    assert detect(first[0])
    seen = [detect(p) for i in range(1, 4) for p in encoder.encode(_frame(i))[0]]
    assert not any(seen)
    forced, _ = encoder.encode(_frame(5), force_keyframe=True)
    assert detect(forced[0])
    # only the first packet of a VP8 keyframe starts it; H264 may carry SPS/PPS first
    assert keyframe_detector("audio/opus") is None


# --- parse_rtp: the fast path's parser agrees with aiortc's -------------------------------------


@given(
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    marker=st.integers(0, 1),
    payload=st.binary(max_size=300),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=3),
    padding=st.integers(0, 40),
    abs_send_time=st.one_of(st.none(), st.integers(0, 0xFFFFFF)),
    level=st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 127))),
    mid=st.one_of(st.none(), st.text("abc0123", min_size=1, max_size=3)),
)
def test_parse_rtp_agrees_with_aiortc(
    seq: int,
    ts: int,
    marker: int,
    payload: bytes,
    csrc: list[int],
    padding: int,
    abs_send_time: int | None,
    level: tuple[bool, int] | None,
    mid: str | None,
) -> None:
    original = packet(seq=seq, ts=ts, marker=marker, payload=payload, csrc=csrc, padding=padding)
    original.extensions.abs_send_time = abs_send_time
    original.extensions.audio_level = level
    original.extensions.mid = mid
    data = original.serialize(extension_map())
    ours = parse_rtp(data, ABS, LEVEL)
    theirs = RtpPacket.parse(data, extension_map())
    assert (ours.payload_type, ours.marker, ours.sequence_number, ours.timestamp, ours.ssrc) == (
        theirs.payload_type,
        theirs.marker,
        theirs.sequence_number,
        theirs.timestamp,
        theirs.ssrc,
    )
    assert list(ours.csrc) == theirs.csrc
    assert ours.payload == theirs.payload
    assert ours.padding_size == theirs.padding_size
    assert ours.abs_send_time == theirs.extensions.abs_send_time
    assert ours.audio_level == theirs.extensions.audio_level


@given(st.binary(max_size=80))
def test_parse_rtp_raises_value_error_only(data: bytes) -> None:
    try:
        parse_rtp(b"\x80" + data, ABS, LEVEL)
    except ValueError:
        pass


def test_parse_rtp_rejects_bad_version_and_padding() -> None:
    with pytest.raises(ValueError):
        parse_rtp(bytes(12), ABS, LEVEL)  # version 0
    with pytest.raises(ValueError):
        parse_rtp(bytes([0xA0]) + bytes(11) + b"\x00\x05", ABS, LEVEL)  # padding > payload


def test_unwrap_rtx_in_matches_aiortc() -> None:
    rtx = packet(seq=7, payload=b"\x12\x34hello")
    rtx.payload_type = 121
    ours = unwrap_rtx_in(RtpIn.from_aiortc(rtx), payload_type=96, ssrc=0x01020304)
    theirs = unwrap_rtx(rtx, payload_type=96, ssrc=0x01020304)
    assert (ours.sequence_number, ours.payload, ours.payload_type, ours.ssrc) == (
        theirs.sequence_number,
        theirs.payload,
        theirs.payload_type,
        theirs.ssrc,
    )
    assert ours.sequence_number == 0x1234
    with pytest.raises(ValueError):
        unwrap_rtx_in(RtpIn.from_aiortc(packet(payload=b"\x01")), payload_type=96, ssrc=1)
