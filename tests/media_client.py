"""A real aiortc participant for tests: it publishes real encoded media on one peer connection,
answers the relay's offers on another, decodes what it receives and records what it saw.

It is transport-agnostic: signaling glue (direct calls to a Router, or the WebSocket API)
feeds it offers and answers.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import defaultdict
from typing import Any

import numpy
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from av import VideoFrame

from parley.relay import _aiortc

VIDEO_CLOCK = 90000


class PatternVideoTrack(MediaStreamTrack):
    """A small moving test pattern at 30 fps (cheap to encode, never constant)."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__()
        self._width, self._height, self._fps = width, height, fps
        self._count = 0
        self._start: float | None = None
        base = numpy.zeros((height, width, 3), numpy.uint8)
        base[:, :, 0] = numpy.linspace(0, 255, width, dtype=numpy.uint8)[None, :]
        base[:, :, 1] = numpy.linspace(0, 255, height, dtype=numpy.uint8)[:, None]
        self._base = base

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._count / self._fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        image = numpy.roll(self._base, self._count * 4, axis=1)
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._count * (VIDEO_CLOCK // self._fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


def peer_connection(
    ice_servers: list[RTCIceServer] | None = None,
    policy: RTCIceTransportPolicy = RTCIceTransportPolicy.ALL,
) -> RTCPeerConnection:
    return RTCPeerConnection(
        RTCConfiguration(
            iceServers=ice_servers or [],
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            iceTransportPolicy=policy,
        )
    )


class MediaClient:
    """One participant's two peer connections and what it received."""

    def __init__(
        self,
        name: str,
        *,
        audio: bool = True,
        video: bool = True,
        ice_servers: list[RTCIceServer] | None = None,
        policy: RTCIceTransportPolicy = RTCIceTransportPolicy.ALL,
        host_addresses: list[str] | None = None,
    ) -> None:
        self.name = name
        self.host_addresses = host_addresses if host_addresses is not None else ["127.0.0.1"]
        self.pub = peer_connection(ice_servers, policy)
        self.sub = peer_connection(ice_servers, policy)
        self.tracks: list[MediaStreamTrack] = []
        if audio:
            self.tracks.append(AudioStreamTrack())
        if video:
            self.tracks.append(PatternVideoTrack())
        self.sources: dict[str, str] = {}
        self.offered_tracks: list[dict[str, Any]] = []
        """The ``tracks`` list of the relay's latest subscribe offer."""
        self.frames: dict[str, int] = defaultdict(int)
        """Decoded frames by subscribe mid."""
        self.first_frame_at: dict[str, float] = {}
        self.video_pts: dict[str, list[int]] = defaultdict(list)
        """Timestamps of the decoded video frames by subscribe mid (for gap counting)."""
        self.sub_connected_at: float | None = None
        """When the subscribe connection reached "connected" (monotonic)."""
        self.sender_reports: list[tuple[str, Any]] = []
        """``(mid, RtcpSrPacket)`` received on the subscribe connection (see capture_rtcp)."""
        self.sent_payloads: set[bytes] = set()
        self.received_payloads: dict[str, list[bytes]] = defaultdict(list)
        self.received_timestamps: dict[str, list[tuple[bytes, int]]] = defaultdict(list)
        self._readers: list[asyncio.Task[None]] = []
        self._capture = False
        self._pending_sources: dict[int, str] = {}
        self.video_codec: str | None = None
        """Publish video with only this codec (e.g. "video/H264"); None: aiortc's default."""
        self.sub.on("track", self._on_track)
        self.sub.on("connectionstatechange", self._on_sub_state)

    def _on_sub_state(self) -> None:
        if self.sub.connectionState == "connected" and self.sub_connected_at is None:
            self.sub_connected_at = time.monotonic()

    # --- publishing --------------------------------------------------------------------------

    def _video_preferences(self) -> list[Any]:
        """``video_codec`` first (with RTX), as a browser's setCodecPreferences would."""
        codecs = RTCRtpSender.getCapabilities("video").codecs
        wanted = [c for c in codecs if c.mimeType.lower() == str(self.video_codec).lower()]
        return wanted + [c for c in codecs if c.mimeType.lower() == "video/rtx"]

    def add_track(self, track: MediaStreamTrack, source: str) -> None:
        """Publish one more track (e.g. a screen share) at the next :meth:`publish_offer`."""
        transceiver = self.pub.addTransceiver(track, direction="sendonly")
        self.tracks.append(track)
        self._pending_sources[id(transceiver)] = source

    def remove_track(self, track: MediaStreamTrack) -> None:
        """Stop sending ``track`` (its m-line goes inactive at the next :meth:`publish_offer`)."""
        for transceiver in self.pub.getTransceivers():
            if transceiver.sender.track is track:
                transceiver.direction = "inactive"
        track.stop()
        self.tracks.remove(track)

    async def publish_offer(self) -> tuple[str, dict[str, str]]:
        for track in self.tracks:
            if not any(s.track is track for s in self.pub.getSenders()):
                transceiver = self.pub.addTransceiver(track, direction="sendonly")
                if track.kind == "video" and self.video_codec is not None:
                    transceiver.setCodecPreferences(self._video_preferences())
        offer = await self.pub.createOffer()
        self._prepare_ice(self.pub)
        await self.pub.setLocalDescription(offer)
        for transceiver in self.pub.getTransceivers():
            track = transceiver.sender.track
            if track is not None and transceiver.mid is not None:
                source = self._pending_sources.pop(id(transceiver), None) or (
                    "microphone" if track.kind == "audio" else "camera"
                )
                self.sources.setdefault(transceiver.mid, source)
        return self.pub.localDescription.sdp, dict(self.sources)

    async def apply_publish_answer(self, sdp: str) -> None:
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    # --- subscribing -------------------------------------------------------------------------

    async def answer_subscribe_offer(self, sdp: str, tracks: list[dict[str, Any]]) -> str:
        self.offered_tracks = tracks
        await self.sub.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await self.sub.createAnswer()
        self._prepare_ice(self.sub)
        await self.sub.setLocalDescription(answer)
        return self.sub.localDescription.sdp

    def track_owner(self, mid: str) -> dict[str, Any] | None:
        return next((t for t in self.offered_tracks if t["mid"] == mid), None)

    def frames_from(self, participant_id: str, kind: str) -> int:
        return sum(
            count
            for mid, count in self.frames.items()
            if (t := self.track_owner(mid))
            and t["participant_id"] == participant_id
            and t["kind"] == kind
        )

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next(t for t in self.sub.getTransceivers() if t.receiver.track is track)
        mid = transceiver.mid or "?"
        self._readers.append(asyncio.ensure_future(self._read(mid, track)))

    async def _read(self, mid: str, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.video_pts[mid].append(frame.pts)
                if mid not in self.first_frame_at:
                    self.first_frame_at[mid] = time.monotonic()
                self.frames[mid] += 1
        except (MediaStreamError, asyncio.CancelledError):
            pass

    # --- payload capture (for the byte-identity test) -----------------------------------------

    def capture_payloads(self) -> None:
        """Record every RTP payload this client sends and receives, before SRTP and after."""
        from aiortc.rtp import RtpPacket, is_rtcp

        self._capture = True
        for transceiver in self.pub.getTransceivers():
            dtls = transceiver.sender.transport
            if getattr(dtls, "_parley_capture", False):
                continue
            dtls._parley_capture = True
            original_send = dtls._send_rtp

            async def send_rtp(data: bytes, _orig: Any = original_send) -> None:
                if not is_rtcp(data):
                    self.sent_payloads.add(RtpPacket.parse(data).payload)
                await _orig(data)

            dtls._send_rtp = send_rtp

        for transceiver in self.sub.getTransceivers():
            receiver = transceiver.receiver
            if transceiver.mid is None or getattr(receiver, "_parley_capture", False):
                continue
            receiver._parley_capture = True
            original = receiver._handle_rtp_packet
            rtx_types = {
                c.payloadType
                for c in _aiortc.transceiver_codecs(transceiver)
                if c.mimeType.lower().endswith("/rtx")
            }

            async def handle(
                packet: Any,
                arrival_time_ms: int,
                _o: Any = original,
                _mid: str = transceiver.mid,
                _rtx: set[int] = rtx_types,
            ) -> None:
                # retransmissions carry the relay's own RTX header (RFC 4588): not compared
                if packet.payload_type not in _rtx and packet.payload:
                    self.received_payloads[_mid].append(packet.payload)
                    self.received_timestamps[_mid].append((packet.payload, packet.timestamp))
                await _o(packet, arrival_time_ms)

            receiver._handle_rtp_packet = handle

    def capture_rtcp(self) -> None:
        """Record the sender reports arriving on the subscribe connection, by mid."""
        from aiortc.rtp import RtcpSrPacket

        for transceiver in self.sub.getTransceivers():
            receiver = transceiver.receiver
            if transceiver.mid is None or getattr(receiver, "_parley_rtcp", False):
                continue
            receiver._parley_rtcp = True
            original = receiver._handle_rtcp_packet

            async def handle(packet: Any, _o: Any = original, _mid: str = transceiver.mid) -> None:
                if isinstance(packet, RtcpSrPacket):
                    self.sender_reports.append((_mid, packet))
                await _o(packet)

            receiver._handle_rtcp_packet = handle

    # --- lifecycle ---------------------------------------------------------------------------

    def _prepare_ice(self, pc: RTCPeerConnection) -> None:
        if self.host_addresses:
            _aiortc.configure_host_candidates(pc, self.host_addresses, None)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pub.close()
        await self.sub.close()


async def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:  # noqa: ASYNC109
    """Poll ``predicate`` until true or ``timeout`` seconds passed (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())
