"""A Consumer is one subscriber's copy of a producer (mediasoup's Consumer).

It is a negotiated ``sendonly`` transceiver on the subscriber's peer connection whose aiortc
sender never encodes anything: packets from the producer are rewritten for this subscriber
(SSRC, payload type, sequence number and timestamp offsets, mid) and SRTP-protected on the
subscriber's transport. The consumer answers its subscriber's NACKs from its own history, turns
PLI/FIR into keyframe requests upstream and sends sender reports carrying the publisher's
NTP/RTP mapping translated to its own timestamps.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pylibsrtp
from aiortc import MediaStreamTrack, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from . import _aiortc, quality
from .rtp import RtpIn, RtpRewriter, wrap_rtx

if TYPE_CHECKING:
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    from .producer import Producer

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


@dataclass(frozen=True)
class StreamPosition:
    """Where a retired consumer's RTP stream stopped, so that the next consumer on the same
    m-line (same sender SSRCs) continues it instead of jumping to random numbers: to the
    subscriber the recycled m-line is one stream that paused."""

    next_seq: int
    last_ts: int
    rtx_seq: int
    clock_rate: int
    at: float
    """``time.monotonic()`` when the stream stopped."""

    def resume(self, now: float) -> tuple[int, int]:
        """(first sequence number, first timestamp) of a stream resumed at ``now``."""
        elapsed = max(0.0, now - self.at)
        return self.next_seq, (self.last_ts + 1 + int(elapsed * self.clock_rate)) & 0xFFFFFFFF


class SilentTrack(MediaStreamTrack):
    """The track behind a consumer's aiortc sender: it never yields a frame, so the sender's
    own RTP loop stays idle while the consumer sends forwarded packets."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__()
        self.kind = kind
        self._id = id
        self._stopped = asyncio.Event()

    async def recv(self) -> NoReturn:
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


class Consumer:
    """One subscriber's copy of ``producer``."""

    def __init__(
        self,
        *,
        id: str,
        producer: Producer,
        peer_id: str,
        transceiver: RTCRtpTransceiver,
        history_size: int,
        resume: StreamPosition | None = None,
    ) -> None:
        self.id = id
        self.producer = producer
        self.peer_id = peer_id
        self.transceiver = transceiver
        self.closed = False
        self.packets = 0
        self.octets = 0
        self.nacked = 0
        self.retransmitted = 0
        self.keyframe_requests = 0
        self.protect_errors = 0
        """Packets libsrtp refused to protect (lost, see :meth:`_protect_refused`)."""
        self.remb: int | None = None
        self.fraction_lost = 0
        self.quality = quality.DownstreamQuality(producer.kind, producer.codec.clockRate)
        """Report figures of this downstream leg (relay/quality.py)."""
        self._rewriter: RtpRewriter | None = None
        self._dtls: RTCDtlsTransport = transceiver.sender.transport
        self._send = _aiortc.fast_sender(self._dtls)
        self._ready = False
        self._synced = False
        self._gated = producer.needs_keyframes
        self._history: list[bytes | None] = [None] * history_size
        self._history_mask = history_size - 1
        self._rtx_payload_type: int | None = None
        self._rtx_ssrc = 0
        self._rtx_seq = random.randrange(1 << 15) if resume is None else resume.rtx_seq
        self._resume = resume
        self._last: RtpIn | None = None
        """The last packet forwarded (for :meth:`position`)."""

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid

    @property
    def active(self) -> bool:
        return self._rewriter is not None and not self.closed

    def track_info(self) -> dict[str, str | None]:
        """This consumer as listed in the ``tracks`` of a subscribe offer."""
        return {
            "mid": self.mid,
            "participant_id": self.producer.peer_id,
            "kind": self.producer.kind,
            "source": self.producer.source,
            "producer_id": self.producer.id,
        }

    def activate(self) -> None:
        """Start forwarding once the subscriber's answer fixed the negotiated parameters."""
        if self._rewriter is not None or self.closed:
            return
        codecs = _aiortc.transceiver_codecs(self.transceiver)
        primary = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
        if primary is None or primary.payloadType is None or self.mid is None:
            return  # not negotiated yet: added while an earlier offer was outstanding
        for codec in codecs:
            if codec.mimeType.lower().endswith("/rtx") and str(codec.parameters.get("apt")) == str(
                primary.payloadType
            ):
                self._rtx_payload_type = codec.payloadType
        ids = {ext.uri: ext.id for ext in _aiortc.transceiver_header_extensions(self.transceiver)}
        ssrc, self._rtx_ssrc = _aiortc.sender_ssrcs(self.transceiver.sender)
        self._rewriter = RtpRewriter(
            ssrc=ssrc,
            payload_type=primary.payloadType,
            mid=self.mid,
            mid_id=ids.get(MID_URI),
            abs_send_time_id=ids.get(ABS_SEND_TIME_URI),
            audio_level_id=ids.get(AUDIO_LEVEL_URI),
        )
        _aiortc.hook_sender(self.transceiver.sender, self.handle_rtcp, self.send_reports)

    # --- the packet path -------------------------------------------------------------------

    def send(
        self,
        packet: RtpIn,
        abs_send_time: int,
        audio_level: tuple[bool, int] | None,
        keyframe: bool,
    ) -> None:
        """Forward one of the producer's packets to the subscriber."""
        rewriter = self._rewriter
        if rewriter is None:
            return
        if not self._ready:
            if not _aiortc.dtls_is_connected(self._dtls):
                return
            self._ready = True
            if self._gated:
                # only a connected subscriber waits: a keyframe sent before would be lost on it
                self.producer.waiting_consumers += 1
                self.producer.request_keyframe()
                return
        if not self._synced:
            if self._gated and not keyframe:
                return
            if self._resume is not None:
                out_seq, out_ts = self._resume.resume(time.monotonic())
            else:
                out_seq, out_ts = random.randrange(1 << 15), random.randrange(1 << 32)
            rewriter.sync(packet.sequence_number, packet.timestamp, out_seq, out_ts)
            self._synced = True
            if self._gated:
                self.producer.waiting_consumers -= 1
        data = rewriter.rewrite(packet, abs_send_time, audio_level)
        self._history[(packet.sequence_number + rewriter.seq_offset) & self._history_mask] = data
        self.packets += 1
        self.octets += len(packet.payload)
        previous, self._last = self._last, packet
        try:
            self._send(data)
        except ConnectionError:
            pass
        except pylibsrtp.Error as exc:
            self._last = previous
            self._protect_refused(exc)

    def _protect_refused(self, error: pylibsrtp.Error) -> None:
        """libsrtp refused a packet. An index it will not take (a publisher's wild sequence
        jump or SSRC collision) loses that packet and the stream continues from the last one
        sent; anything else (no SRTP context: a broken subscriber) raises, and the producer
        drops this consumer."""
        if not str(error).startswith("replay check failed"):
            raise ConnectionError(f"SRTP refused the packet: {error}") from error
        self.protect_errors += 1
        self.resync()

    # --- RTCP from the subscriber ------------------------------------------------------------

    async def handle_rtcp(self, packet: AnyRtcpPacket) -> None:
        """The subscriber's RTCP for this consumer (aiortc's DTLS transport calls it: nothing
        may escape, or aiortc ends the subscriber's transport)."""
        if self.closed:
            return
        try:
            await self._handle_rtcp(packet)
        except Exception:
            logger.warning(
                "[%s] consumer %s: handling RTCP failed", self.peer_id, self.id, exc_info=True
            )

    async def _handle_rtcp(self, packet: AnyRtcpPacket) -> None:
        if self._rewriter is not None:
            quality.on_rtcp(self.quality, packet, self._rewriter.ssrc, time.monotonic())
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                await self._retransmit(seq)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.keyframe_requests += 1
            self.producer.request_keyframe()
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if self._rewriter is not None and self._rewriter.ssrc in ssrcs:
                self.remb = bitrate
                self.producer.update_remb()
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)) and self._rewriter is not None:
            for report in packet.reports:
                if report.ssrc == self._rewriter.ssrc:
                    self.fraction_lost = report.fraction_lost

    async def _retransmit(self, seq: int) -> None:
        self.nacked += 1
        data = self._history[seq & self._history_mask]
        if data is None or ((data[2] << 8) | data[3]) != seq:
            return
        if self._rtx_payload_type is not None:
            data = wrap_rtx(
                data,
                payload_type=self._rtx_payload_type,
                sequence_number=self._rtx_seq,
                ssrc=self._rtx_ssrc,
            )
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        self.retransmitted += 1
        try:
            self._send(data)
        except (ConnectionError, pylibsrtp.Error):
            pass  # a retransmission is best effort

    async def send_reports(self, packets: list[AnyRtcpPacket]) -> None:
        """Replaces the aiortc sender's RTCP output: its SR would claim nothing was sent."""
        out: list[AnyRtcpPacket] = []
        rewriter = self._rewriter
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                mapping = self.producer.sender_report
                if mapping is None or rewriter is None or not self._synced or self.closed:
                    continue
                packet.sender_info = RtcpSenderInfo(
                    ntp_timestamp=mapping[0],
                    rtp_timestamp=rewriter.out_ts(mapping[1]),
                    packet_count=self.packets & 0xFFFFFFFF,
                    octet_count=self.octets & 0xFFFFFFFF,
                )
                out.append(packet)
                self.quality.on_sender_report(mapping[0], time.monotonic())
            elif isinstance(packet, RtcpSdesPacket):
                if out:
                    out.append(packet)
            else:
                out.append(packet)
        if not out:
            return
        try:
            self._send(b"".join(bytes(p) for p in out))
        except ConnectionError:
            pass
        except Exception:
            # raising into aiortc's RTCP loop would end it, and the sender's stop() (so the
            # subscriber's close()) would then wait for it forever
            logger.warning(
                "[%s] consumer %s: sending RTCP failed", self.peer_id, self.id, exc_info=True
            )

    # --- lifecycle ---------------------------------------------------------------------------

    def position(self) -> StreamPosition | None:
        """Where this consumer's stream is now (None before its first packet)."""
        rewriter, last = self._rewriter, self._last
        if rewriter is None or last is None:
            return self._resume
        return StreamPosition(
            next_seq=(rewriter.out_seq(last.sequence_number) + 1) & 0xFFFF,
            last_ts=rewriter.out_ts(last.timestamp),
            rtx_seq=self._rtx_seq,
            clock_rate=self.producer.codec.clockRate,
            at=time.monotonic(),
        )

    def resync(self) -> None:
        """The producer's packets now come from a new upstream stream (its publisher rebuilt
        the publish leg): continue this consumer's stream from where it is, from the next
        keyframe, so that to the subscriber it is one stream that paused."""
        if self.closed or not self._synced:
            return
        self._resume = self.position()
        self._last = None
        self._synced = False
        if self._gated and self._ready:
            self.producer.waiting_consumers += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._gated and self._ready and not self._synced:
            self.producer.waiting_consumers -= 1
        self._history = []
        self._history_mask = 0
        self._rewriter = None
        track = self.transceiver.sender.track
        if track is not None:
            track.stop()
