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
    RtcpSourceInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from . import _aiortc, accel, quality
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
        self._history_size = history_size
        self._route: accel.Route | None = None
        """The compiled or pure packet path's state once synced: offsets, NACK history (the
        forwarded packets), counters and the leg's :class:`accel.Tx` (read by ``accel.fan_out``)."""
        self._counted = (0, 0)
        """Packets and octets of routes this consumer had before a resync."""
        self._tx_retry = 0
        self._rtx_payload_type: int | None = None
        self._rtx_ssrc = 0
        self._rtx_seq = random.randrange(1 << 15) if resume is None else resume.rtx_seq
        self._resume = resume

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid

    @property
    def packets(self) -> int:
        """Packets forwarded to the subscriber."""
        route = self._route
        return self._counted[0] + (route.packets if route is not None else 0)

    @property
    def octets(self) -> int:
        """Payload octets forwarded to the subscriber."""
        route = self._route
        return self._counted[1] + (route.octets if route is not None else 0)

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
        _aiortc.hook_sender(
            self.transceiver.sender,
            self.handle_rtcp,
            self.send_reports,
            self._report,
        )

    # --- the packet path -------------------------------------------------------------------

    def send(
        self,
        packet: RtpIn,
        abs_send_time: int,
        audio_level: tuple[bool, int] | None,
        keyframe: bool,
    ) -> None:
        """Forward one of the producer's packets to the subscriber: the Python path, for the
        packets ``accel.fan_out`` hands back (before the consumer is synced and connected, or
        when its leg cannot take the fast sender)."""
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
        route = self._route
        if route is None:
            if self._gated and not keyframe:
                return
            if self._resume is not None:
                out_seq, out_ts = self._resume.resume(time.monotonic())
            else:
                out_seq, out_ts = random.randrange(1 << 15), random.randrange(1 << 32)
            rewriter.sync(packet.sequence_number, packet.timestamp, out_seq, out_ts)
            route = self._route = accel.Route(
                rewriter.ssrc,
                rewriter.payload_type,
                rewriter.mid_element,
                rewriter.abs_send_time_id,
                rewriter.audio_level_id,
                self._history_size,
            )
            route.seq_offset = rewriter.seq_offset
            route.ts_offset = rewriter.ts_offset
            self._synced = True
            if self._gated:
                self.producer.waiting_consumers -= 1
        tx = route.tx
        if tx is None or not tx.valid:
            # (re)connect the fast sender now and then (a new nominated pair, or not yet)
            self._tx_retry -= 1
            if self._tx_retry <= 0:
                self._tx_retry = 64
                tx = route.tx = _aiortc.fast_tx(self._dtls)
        data = route.rewrite(packet, abs_send_time)
        route.remember(packet, abs_send_time)
        try:
            if tx is not None and tx.valid:
                tx.send(data)
            else:
                self._send(data)
        except ConnectionError:
            pass
        except accel.SrtpError as exc:
            self._protect_refused(exc)

    def _protect_refused(self, error: Exception) -> None:
        """libsrtp refused a packet. An index it will not take (a publisher's wild sequence
        jump or SSRC collision: "replay check failed", status 9/10) loses that packet and the
        stream continues from the last one sent, from the next keyframe; anything else (no SRTP
        context: a broken subscriber) raises, and the producer drops this consumer."""
        text = str(error)
        if not (text.startswith("replay check failed") or text.endswith(("(9)", "(10)"))):
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
        route = self._route
        kept = route.history(seq) if route is not None else None
        if kept is None or route is None:
            return
        data = route.rewrite(*kept)  # the same bytes as the first time
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
            # RTP of this leg goes out through one SRTP context (the compiled path's own)
            tx = route.tx
            if tx is not None and tx.valid:
                tx.send(data)
            else:
                self._send(data)
        except ConnectionError:
            pass
        except accel.SrtpError:
            pass  # a retransmission is best effort

    def _report(self) -> None:
        """The sender report (and SDES) of this consumer, from the shared RTCP tick."""
        sender = self.transceiver.sender
        ssrc = _aiortc.sender_ssrcs(sender)[0]
        packets: list[AnyRtcpPacket] = [
            RtcpSrPacket(ssrc=ssrc, sender_info=RtcpSenderInfo(0, 0, 0, 0))
        ]
        cname = _aiortc.sender_cname(sender)
        if cname is not None:
            item = RtcpSourceInfo(ssrc=ssrc, items=[(1, cname.encode())])
            packets.append(RtcpSdesPacket(chunks=[item]))
        self._send_reports(packets)

    async def send_reports(self, packets: list[AnyRtcpPacket]) -> None:
        """Replaces the aiortc sender's RTCP output (its BYE; its SR would claim nothing was
        sent)."""
        self._send_reports(packets)

    def _send_reports(self, packets: list[AnyRtcpPacket]) -> None:
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
        rewriter = self._rewriter
        last = self._route.last if self._route is not None else None
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
        route, self._route = self._route, None  # fan_out hands it back until it syncs again
        if route is not None:
            self._counted = (self._counted[0] + route.packets, self._counted[1] + route.octets)
            route.clear()
            route.tx = None
        self._tx_retry = 0
        self._synced = False
        if self._gated and self._ready:
            self.producer.waiting_consumers += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._gated and self._ready and not self._synced:
            self.producer.waiting_consumers -= 1
        if self._route is not None:
            self._route.clear()
            self._route.tx = None
        self._rewriter = None
        track = self.transceiver.sender.track
        if track is not None:
            track.stop()
