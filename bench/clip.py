"""Real VP8 for the transcoding baseline (aiortc ``MediaRelay``), which must decode what it gets.

A short clip is encoded once per worker with aiortc's ``Vp8Encoder`` (640x480, key frame first)
and replayed: the publisher sends the stored RTP payloads of clip frame ``k`` at its frame time
and logs ``(k, send ns)``. Each picture carries ``k`` as 8 black/white blocks in its top rows, so
the frame can be recognised after the relay decoded and re-encoded it.

The subscriber only timestamps on arrival (the marker packet that completes a frame, before any
jitter buffer) and keeps the frame's bytes; it decodes the frames after the measurement, off the
timing path, to read ``k``. Latency of a frame = arrival of its last packet − send of the first
packet of the most recent send of clip frame ``k`` before that arrival (the clip is 2 s long, so
this is unambiguous below 2 s of latency).
"""

from __future__ import annotations

import asyncio
import fractions
import random
import time

import numpy
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    AnyRtcpPacket,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtpPacket,
)
from av import VideoFrame

from parley.relay import _aiortc
from parley.relay.consumer import SilentTrack
from parley.relay.producer import abs_send_time_now

from .synthetic import Window

WIDTH, HEIGHT = 640, 480
BITS = 8
BLOCK_H = 32
_clips: dict[tuple[int, int], list[list[bytes]]] = {}


def picture(index: int, count: int) -> numpy.ndarray:
    """A moving gradient with ``index`` in 8 blocks across the top ``BLOCK_H`` rows."""
    image = numpy.zeros((HEIGHT, WIDTH, 3), numpy.uint8)
    image[:, :, 0] = numpy.linspace(0, 255, WIDTH, dtype=numpy.uint8)[None, :]
    image[:, :, 1] = numpy.linspace(0, 255, HEIGHT, dtype=numpy.uint8)[:, None]
    image = numpy.roll(image, index * 8, axis=1)
    block = WIDTH // BITS
    for bit in range(BITS):
        image[:BLOCK_H, bit * block : (bit + 1) * block] = 255 if index >> bit & 1 else 0
    return image


def read_index(frame: VideoFrame) -> int:
    gray = frame.to_ndarray(format="gray")
    block = frame.width // BITS
    value = 0
    for bit in range(BITS):
        if gray[4 : BLOCK_H - 4, bit * block + 8 : (bit + 1) * block - 8].mean() > 128:
            value |= 1 << bit
    return value


def clip(bitrate: int, fps: int, seconds: float = 2.0) -> list[list[bytes]]:
    """RTP payloads of each clip frame (encoded once per process)."""
    key = (bitrate, fps)
    if key not in _clips:
        encoder = Vp8Encoder()
        encoder.target_bitrate = bitrate
        frames = []
        count = int(seconds * fps)
        for i in range(count):
            frame = VideoFrame.from_ndarray(picture(i, count), format="rgb24")
            frame.pts = i * (90000 // fps)
            frame.time_base = fractions.Fraction(1, 90000)
            payloads, _ = encoder.encode(frame, force_keyframe=i == 0)
            frames.append(payloads)
        _clips[key] = frames
    return _clips[key]


class ClipPublisher:
    """Sends the pre-encoded clip on a sendonly video transceiver; restarts it (a key frame)
    on PLI/FIR."""

    def __init__(
        self, pc: RTCPeerConnection, stream_id: int, bitrate: int, fps: int, window: Window
    ) -> None:
        self.pc = pc
        self.stream_id = stream_id
        self.fps = fps
        self.frames = clip(bitrate, fps)
        self.window = window
        self.transceiver = pc.addTransceiver(SilentTrack("video", f"v{stream_id}"), "sendonly")
        self.sends: list[tuple[int, int]] = []
        """(clip index, send ns) of the frames sent inside the window."""
        self.sent_packets = 0
        self._restart = False
        self._task: asyncio.Task[None] | None = None

    def sources(self) -> dict[str, str]:
        return {str(self.transceiver.mid): "camera"}

    def start(self) -> None:
        _aiortc.hook_sender(self.transceiver.sender, self._rtcp, self._drop)
        self._task = asyncio.ensure_future(self._run())

    async def _rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self._restart = True

    async def _drop(self, packets: list[AnyRtcpPacket]) -> None:
        return None

    async def _run(self) -> None:
        transceiver = self.transceiver
        sender = transceiver.sender
        for _ in range(3000):
            if (
                sender.transport is not None
                and _aiortc.dtls_is_connected(sender.transport)
                and transceiver.mid is not None
            ):
                break
            await asyncio.sleep(0.02)
        else:
            return
        codec = next(
            c for c in _aiortc.transceiver_codecs(transceiver) if c.mimeType.lower() == "video/vp8"
        )
        ext = HeaderExtensionsMap()
        ext.configure(
            RTCRtpParameters(headerExtensions=_aiortc.transceiver_header_extensions(transceiver))
        )
        ssrc = _aiortc.sender_ssrcs(sender)[0]
        seq, ts = random.randrange(1 << 16), random.randrange(1 << 32)
        loop = asyncio.get_running_loop()
        interval, step = 1.0 / self.fps, 90000 // self.fps
        next_at = loop.time()
        index = 0
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._restart:
                self._restart, index = False, 0
            payloads = self.frames[index]
            now = time.monotonic_ns()
            if self.window.start <= now <= self.window.end:
                self.sends.append((index, now))
            for i, payload in enumerate(payloads):
                packet = RtpPacket(
                    payload_type=codec.payloadType or 0,
                    marker=int(i == len(payloads) - 1),
                    sequence_number=seq,
                    timestamp=ts,
                    ssrc=ssrc,
                    payload=payload,
                )
                packet.extensions.mid = transceiver.mid
                packet.extensions.abs_send_time = abs_send_time_now()
                seq = (seq + 1) & 0xFFFF
                try:
                    await _aiortc.dtls_send_rtp(sender.transport, packet.serialize(ext))
                    self.sent_packets += 1
                except ConnectionError:
                    pass
            ts = (ts + step) & 0xFFFFFFFF
            index = (index + 1) % len(self.frames)
            next_at += interval
            if loop.time() - next_at > 1.0:
                next_at = loop.time()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class FrameTap:
    """Per subscriber: arrival time and bytes of each complete frame (marker packet)."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.frames: dict[str, list[tuple[int, bytes]]] = {}
        self.packets: dict[str, int] = {}
        """Packets received so far, per subscriber."""
        self.window_packets: dict[str, int] = {}
        """Packets received inside the window, per subscriber."""
        self._partial: dict[str, list[bytes]] = {}

    def hook(self, key: str, transceiver: RTCRtpTransceiver) -> None:
        frames = self.frames.setdefault(key, [])
        partial = self._partial.setdefault(key, [])
        self.packets.setdefault(key, 0)
        self.window_packets.setdefault(key, 0)
        window = self.window

        async def on_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
            now = time.monotonic_ns()
            if not packet.payload:
                return
            partial.append(packet.payload)
            self.packets[key] += 1
            if window.start <= now <= window.end:
                self.window_packets[key] += 1
            if packet.marker:
                # every frame from the first on (decoding needs the reference chain), until 2 s
                # after the window
                if now <= window.end + 2_000_000_000 or window.end == 0:
                    frames.append((now, b"".join(vp8_depayload(p) for p in partial)))
                partial.clear()

        async def on_rtcp(packet: AnyRtcpPacket) -> None:
            return None

        _aiortc.hook_receiver(transceiver.receiver, on_rtp, on_rtcp, {})

    def decode(self) -> dict[str, list[tuple[int, int]]]:
        """(clip index, arrival ns) of each decodable frame, per subscriber."""
        out: dict[str, list[tuple[int, int]]] = {}
        for key, frames in self.frames.items():
            decoder = Vp8Decoder()
            decoded = []
            for arrival, data in frames:
                try:
                    pictures = decoder.decode(JitterFrame(data=data, timestamp=0))
                except Exception:  # noqa: BLE001 - a corrupt frame counts as lost
                    continue
                for picture_frame in pictures:
                    decoded.append((read_index(picture_frame), arrival))  # type: ignore[arg-type]
            out[key] = decoded
        return out


def frame_latencies(
    sends: list[tuple[int, int]], arrivals: list[tuple[int, int]], window: tuple[int, int]
) -> tuple[list[int], int]:
    """Latency (ns) of each arrival matched to the latest earlier send of the same clip index,
    and how many sends inside ``window`` were never matched (lost or undecodable)."""
    by_index: dict[int, list[int]] = {}
    for index, sent in sends:
        by_index.setdefault(index, []).append(sent)
    latencies, matched = [], set()
    for index, arrival in arrivals:
        candidates = [s for s in by_index.get(index, ()) if s <= arrival]
        if not candidates:
            continue
        sent = max(candidates)
        if not window[0] <= sent <= window[1] or sent in matched:
            continue
        matched.add(sent)
        latencies.append(arrival - sent)
    in_window = sum(1 for _, s in sends if window[0] <= s <= window[1])
    return latencies, in_window - len(matched)
