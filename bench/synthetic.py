"""Synthetic pre-encoded media for the load tool: publishers that never encode and subscribers
that never decode.

A publisher is an aiortc peer connection whose senders are negotiated with a track that never
yields (the relay's own :class:`~relay.consumer.SilentTrack`); we build RTP packets ourselves and
hand them to the DTLS transport (SRTP protect + ICE send), exactly as the relay's consumers do.
Every packet carries a stamp right after a two-byte codec prefix::

    prefix (2) | magic b"\\xbe\\x4c" (2) | stream id u32 | sequence u32 | send time u64 ns

The send time is ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every process on the
machine). The video prefix is a VP8 payload descriptor (S bit on a frame's first packet,
partition 0) and a VP8 payload header byte whose P bit is 0 on key frames, so the relay's
keyframe gate sees real-looking VP8. Key frames go out every ``keyframe_interval`` seconds and
when a PLI/FIR arrives. A subscriber's receivers are hooked where aiortc hands over a decrypted,
parsed packet (before any jitter buffer): the arrival time is taken there and the packet dropped.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from array import array
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    AnyRtcpPacket,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtpPacket,
)

from parley.relay import _aiortc
from parley.relay.consumer import SilentTrack
from parley.relay.producer import abs_send_time_now

MAGIC = b"\xbe\x4c"
STAMP = struct.Struct("!2sIIQ")
STAMP_OFFSET = 2
STAMP_END = STAMP_OFFSET + STAMP.size
AUDIO_PAYLOAD = 120
"""Opus-sized audio payload (bytes, stamp included): ~48 kbit/s at 50 packets per second."""
AUDIO_INTERVAL = 0.020
MAX_VIDEO_PAYLOAD = 1100
VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000


def stream_kind(stream_id: int) -> str:
    """Stream ids are even for audio, odd for video."""
    return "video" if stream_id & 1 else "audio"


def video_packet_sizes(bitrate: int, fps: int) -> list[int]:
    """Payload sizes of one frame's packets: ``bitrate / 8 / fps`` bytes in packets of at most
    ``MAX_VIDEO_PAYLOAD`` (1 Mbit/s at 30 fps: 4 packets of 1042 bytes)."""
    frame = max(STAMP_END + 1, int(bitrate / 8 / fps))
    count = max(1, math.ceil(frame / MAX_VIDEO_PAYLOAD))
    size = max(STAMP_END, math.ceil(frame / count))
    return [size] * count


def read_stamp(payload: bytes) -> tuple[int, int, int] | None:
    """``(stream id, sequence, send ns)`` of a synthetic payload, None for anything else."""
    if len(payload) < STAMP_END:
        return None
    magic, stream_id, seq, sent = STAMP.unpack_from(payload, STAMP_OFFSET)
    if magic != MAGIC:
        return None
    return stream_id, seq, sent


class Window:
    """The measurement window ``[start, end]`` in monotonic ns; packets stamped inside count."""

    def __init__(self) -> None:
        self.start = 1 << 62
        self.end = 0

    def set(self, start: int, end: int) -> None:
        self.start, self.end = start, end


class _Stream:
    def __init__(
        self,
        pc_transceiver: RTCRtpTransceiver,
        stream_id: int,
        window: Window,
        counts: dict[int, int],
    ) -> None:
        self.transceiver = pc_transceiver
        self.stream_id = stream_id
        self.window = window
        self.counts = counts
        self.seq = 0
        self.rtp_seq = random.randrange(1 << 16)
        self.rtp_ts = random.randrange(1 << 32)
        self.sent = 0
        self.errors = 0
        self.force_keyframe = False
        self._ready = False
        self._ssrc = 0
        self._pt = 0
        self._mid = ""
        self._map = HeaderExtensionsMap()
        self._tx: Any = None
        """The relay's own fast sender (relay/accel.py: compiled or pure), as its consumers use."""
        self._tx_retry = 0

    def ready(self) -> bool:
        if self._ready:
            return True
        sender = self.transceiver.sender
        dtls = sender.transport
        if dtls is None or not _aiortc.dtls_is_connected(dtls) or self.transceiver.mid is None:
            return False
        codecs = [
            c
            for c in _aiortc.transceiver_codecs(self.transceiver)
            if not c.mimeType.lower().endswith("/rtx")
        ]
        if not codecs:
            return False
        self._pt = int(codecs[0].payloadType or 0)
        self._ssrc = _aiortc.sender_ssrcs(sender)[0]
        self._mid = self.transceiver.mid
        self._map.configure(
            RTCRtpParameters(
                headerExtensions=_aiortc.transceiver_header_extensions(self.transceiver)
            )
        )
        self._ready = True
        return True

    async def send(self, prefix: bytes, size: int, marker: bool, clock_step: int) -> None:
        now = time.monotonic_ns()
        self.seq += 1
        payload = prefix + STAMP.pack(MAGIC, self.stream_id, self.seq, now)
        payload += bytes(size - len(payload))
        packet = RtpPacket(
            payload_type=self._pt,
            marker=int(marker),
            sequence_number=self.rtp_seq,
            timestamp=self.rtp_ts,
            ssrc=self._ssrc,
            payload=payload,
        )
        packet.extensions.mid = self._mid
        packet.extensions.abs_send_time = abs_send_time_now()
        self.rtp_seq = (self.rtp_seq + 1) & 0xFFFF
        if marker:
            self.rtp_ts = (self.rtp_ts + clock_step) & 0xFFFFFFFF
        # counted before sending: a packet a dead connection refuses is lost, not unsent
        if self.window.start <= now <= self.window.end:
            self.counts[self.stream_id] = self.counts.get(self.stream_id, 0) + 1
        dtls = self.transceiver.sender.transport
        tx = self._tx
        if tx is None or not tx.valid:
            self._tx_retry -= 1
            if self._tx_retry <= 0:  # none (TURN, or not connected): aiortc's path meanwhile
                self._tx_retry = 50
                tx = self._tx = _aiortc.fast_tx(dtls)
        try:
            if tx is not None and tx.valid:
                tx.send(packet.serialize(self._map))
            else:
                await _aiortc.dtls_send_rtp(dtls, packet.serialize(self._map))
        except ConnectionError:
            self.errors += 1
            return
        self.sent += 1


class SyntheticPublisher:
    """One participant's publish connection: audio (``AUDIO_PAYLOAD`` bytes at 50 pps) and video
    (``bitrate`` at ``fps``), sendonly, pre-encoded; video alone when ``audio_id`` is None (the
    side-by-side run's one-way pairs, bench/sidebyside.py)."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        audio_id: int | None,
        video_id: int,
        bitrate: int,
        fps: int,
        window: Window,
        counts: dict[int, int],
        keyframe_interval: float = 2.0,
    ) -> None:
        self.pc = pc
        self.fps = fps
        self.sizes = video_packet_sizes(bitrate, fps)
        self.keyframe_interval = keyframe_interval
        self.audio: _Stream | None = None
        if audio_id is not None:
            audio = pc.addTransceiver(SilentTrack("audio", f"a{audio_id}"), direction="sendonly")
            self.audio = _Stream(audio, audio_id, window, counts)
        video = pc.addTransceiver(SilentTrack("video", f"v{video_id}"), direction="sendonly")
        self.video = _Stream(video, video_id, window, counts)
        self.keyframes = 0
        self.keyframe_requests = 0
        self.states: list[str] = []
        """Connection and ICE state changes, e.g. "ice:failed" (why a connection died)."""
        self._tasks: list[asyncio.Task[None]] = []
        pc.on("connectionstatechange", lambda: self.states.append(f"pc:{pc.connectionState}"))
        pc.on(
            "iceconnectionstatechange",
            lambda: self.states.append(f"ice:{pc.iceConnectionState}"),
        )

    def sources(self) -> dict[str, str]:
        out = {str(self.video.transceiver.mid): "camera"}
        if self.audio is not None:
            out[str(self.audio.transceiver.mid)] = "microphone"
        return out

    @property
    def errors(self) -> int:
        """Packets refused by a closed connection, both kinds."""
        return self.video.errors + (self.audio.errors if self.audio is not None else 0)

    def start(self) -> None:
        """Hook the senders' RTCP and start the send loops (call after the answer is applied)."""
        _aiortc.hook_sender(self.video.transceiver.sender, self._video_rtcp, self._drop_reports)
        self._tasks = [asyncio.ensure_future(self._run_video())]
        if self.audio is not None:
            sender = self.audio.transceiver.sender
            _aiortc.hook_sender(sender, self._ignore_rtcp, self._drop_reports)
            self._tasks.append(asyncio.ensure_future(self._run_audio(self.audio)))

    async def _ignore_rtcp(self, packet: AnyRtcpPacket) -> None:
        return None

    async def _video_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.keyframe_requests += 1
            self.video.force_keyframe = True

    async def _drop_reports(self, packets: list[AnyRtcpPacket]) -> None:
        """aiortc's sender reports would claim nothing was sent (we bypass its RTP loop)."""
        return None

    async def _wait_ready(self, stream: _Stream) -> None:
        for _ in range(3000):  # a minute at most; the run reports streams that never flowed
            if stream.ready():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the publish connection never connected")

    async def _run_audio(self, stream: _Stream) -> None:
        await self._wait_ready(stream)
        loop = asyncio.get_running_loop()
        prefix = b"\x78\x00"  # an Opus TOC byte (SILK WB 20 ms) and one byte of filler
        step = AUDIO_CLOCK // 50
        next_at = loop.time() + random.random() * AUDIO_INTERVAL
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await stream.send(prefix, AUDIO_PAYLOAD, True, step)
            next_at += AUDIO_INTERVAL
            if loop.time() - next_at > 1.0:  # starved for a second: do not burst to catch up
                next_at = loop.time()

    async def _run_video(self) -> None:
        stream = self.video
        await self._wait_ready(stream)
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.fps
        step = VIDEO_CLOCK // self.fps
        last = len(self.sizes) - 1
        next_at = loop.time() + random.random() * interval
        last_keyframe = -1e9
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            key = stream.force_keyframe or now - last_keyframe >= self.keyframe_interval
            if key:
                stream.force_keyframe = False
                last_keyframe = now
                self.keyframes += 1
            # VP8 descriptor: S=1 PID=0 on the first packet; payload header P bit 0 = key frame
            first = b"\x10\x10" if key else b"\x10\x11"
            for i, size in enumerate(self.sizes):
                await stream.send(first if i == 0 else b"\x00\x00", size, i == last, step)
            next_at += interval
            if loop.time() - next_at > 1.0:
                next_at = loop.time()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


class Tap:
    """Latency and counts of the synthetic packets a worker's subscribers receive."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.latency: dict[str, array[int]] = {"audio": array("q"), "video": array("q")}
        self.sent_at = array("q")
        """Send stamps of the packets in ``latency`` (both kinds, in arrival order)."""
        self.all_latency = array("q")
        self.counts: dict[int, int] = {}
        self.seen: set[int] = set()
        self.other = 0

    def hook(self, transceiver: RTCRtpTransceiver) -> None:
        receiver = transceiver.receiver
        if getattr(receiver, "_bench_tapped", False):
            return
        receiver._bench_tapped = True  # type: ignore[attr-defined]
        # the relay's fast receive path (install_fast_receive, by the worker) feeds
        # on_fast_rtp; aiortc's own path, on_rtp, only before it is installed
        _aiortc.hook_receiver(receiver, self.on_rtp, self._on_rtcp, {}, self.on_fast_rtp)

    async def _on_rtcp(self, packet: AnyRtcpPacket) -> None:
        return None

    async def on_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self.on_fast_rtp(packet)

    def on_fast_rtp(self, packet: Any) -> None:
        now = time.monotonic_ns()
        payload = packet.payload
        if len(payload) < STAMP_END or payload[STAMP_OFFSET : STAMP_OFFSET + 2] != MAGIC:
            self.other += 1  # retransmissions (RTX) and anything not ours
            return
        _, stream_id, _, sent = STAMP.unpack_from(payload, STAMP_OFFSET)
        window = self.window
        if window.start <= sent <= window.end:
            self.latency["video" if stream_id & 1 else "audio"].append(now - sent)
            self.sent_at.append(sent)
            self.all_latency.append(now - sent)
            self.counts[stream_id] = self.counts.get(stream_id, 0) + 1
        elif stream_id not in self.seen:
            self.seen.add(stream_id)

    def report(self) -> dict[str, Any]:
        return {
            "latency": {k: v.tobytes() for k, v in self.latency.items()},
            "counts": dict(self.counts),
            "sent_at": self.sent_at.tobytes(),
            "all_latency": self.all_latency.tobytes(),
            "other": self.other,
        }
