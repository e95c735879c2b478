"""A Producer is one track a participant sends to the relay (mediasoup's Producer).

It receives the publisher's decrypted RTP packets straight from the socket (the fast path in
``_aiortc``: no queue, no jitter buffer, no decoder), keeps the upstream leg healthy (receiver
reports and NACKs go back to the publisher, and REMB carrying the lowest estimate of its
subscribers) and fans each packet out to its consumers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)

from . import _aiortc, accel
from .config import MediaConfig
from .fanout import FanOut
from .quality import FORWARD_LATENCY, UpstreamQuality
from .rtp import KeyframeDetector, RtpIn, keyframe_detector, unwrap_rtx_in

if TYPE_CHECKING:
    from .consumer import Consumer

logger = logging.getLogger(__name__)


class PacketSink(Protocol):
    """One more consumer of a producer's packets that is not a subscriber (a recorder)."""

    def write(self, packet: RtpIn) -> None: ...

    def close(self) -> None: ...


NTP_EPOCH_OFFSET = 2208988800

LATENCY_EVERY = 16
"""``FORWARD_LATENCY`` observes one forwarded packet in this many (a power of two)."""


def _quality_mode_of(kind: str, mime_type: str) -> int:
    """Which packets relay.quality must see (``accel.QUALITY_*``, as UpstreamQuality reads
    them: audio levels, VP8 key frames and frame ends, other video's frame ends)."""
    if kind == "audio":
        return accel.QUALITY_AUDIO  # type: ignore[no-any-return]
    if kind != "video":
        return accel.QUALITY_NONE  # type: ignore[no-any-return]
    return accel.QUALITY_VP8 if mime_type.lower() == "video/vp8" else accel.QUALITY_VIDEO  # type: ignore[no-any-return]


def abs_send_time_now() -> int:
    """The 24-bit 6.18 fixed-point abs-send-time of now (webrtc abs-send-time extension)."""
    return accel.py_abs_send_time_now()


class Producer:
    """One incoming track: ``kind`` is "audio" or "video", ``source`` is "camera", "microphone"
    or "screen"."""

    def __init__(
        self,
        *,
        id: str,
        peer_id: str,
        kind: str,
        source: str,
        mid: str,
        receiver: RTCRtpReceiver,
        codecs: list[RTCRtpCodecParameters],
        ssrcs: list[int],
        rtx_ssrcs: dict[int, int],
        config: MediaConfig,
        fanout: FanOut,
        on_close: Callable[[Producer], None],
    ) -> None:
        primary = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
        if primary is None or primary.payloadType is None:
            raise ValueError("a producer needs a media codec")
        self.id = id
        self.peer_id = peer_id
        self.kind = kind
        self.source = source
        self.mid = mid
        self.codec = primary
        self.payload_type: int = primary.payloadType
        self.closed = False
        self._fanout = fanout
        self._view = fanout.view(id)
        self._inbound = accel.Inbound(
            primary.payloadType, _quality_mode_of(kind, primary.mimeType), LATENCY_EVERY
        )
        """The common case of the packet path in one call (relay/accel.py)."""
        self._inbound.view = self._view
        self._inbound.fallback = self._after
        self._sinks: tuple[PacketSink, ...] = ()
        self._waiting_consumers = 0
        self._keyframe_pending_ = False
        self._packets = 0
        self._octets = 0
        """Packets (payload octets) forwarded by the Python path; ``_inbound`` counts the rest."""
        self.keyframe_requests = 0
        self.nacks_sent = 0
        """NACK packets sent to the publisher (upstream loss)."""
        self.retransmissions = 0
        """RTX packets received from the publisher (unwrapped and forwarded)."""
        self.sender_report: tuple[int, int] | None = None
        """The publisher's last (NTP, RTP) timestamp pair from its sender report."""
        self.quality = UpstreamQuality(kind, primary.mimeType, primary.clockRate, self._inbound)
        """Report figures of this upstream leg (relay/quality.py)."""

        self._receiver = receiver
        self._config = config
        self._on_close = on_close
        self._rtx_apt: dict[int, int] = {
            c.payloadType: int(str(c.parameters["apt"]))
            for c in codecs
            if c.mimeType.lower().endswith("/rtx")
            and "apt" in c.parameters
            and c.payloadType is not None
        }
        self._rtx_ssrcs = dict(rtx_ssrcs)
        self._media_ssrc: int | None = ssrcs[0] if ssrcs else None
        self._streams: dict[int, _aiortc.StreamStatistics] = {}
        self._nack: _aiortc.NackGenerator | None = (
            accel.MissingPackets() if kind == "video" else None
        )
        self._latency_tick = 0
        self._sync_inbound()
        self._last_remb: int | None = None
        self._last_remb_at = -1e9
        self.remb_sent = 0
        self._is_keyframe: KeyframeDetector | None = (
            keyframe_detector(primary.mimeType) if kind == "video" else None
        )
        self._last_keyframe_request = -1e9
        self._tasks: set[asyncio.Future[None]] = set()
        _aiortc.hook_receiver(
            receiver, self.handle_rtp, self.handle_rtcp, self._streams, self._fast_entry()
        )
        if ssrcs or rtx_ssrcs:
            _aiortc.register_ssrcs(receiver, [*ssrcs, *rtx_ssrcs])

    def rebind(
        self,
        receiver: RTCRtpReceiver,
        mid: str,
        codecs: list[RTCRtpCodecParameters],
        ssrcs: list[int],
        rtx_ssrcs: dict[int, int],
    ) -> None:
        """Carry on from a new publish leg (the publisher rebuilt its connection): packets now
        come from ``receiver`` with new SSRCs, sequence numbers and timestamps, perhaps other
        payload types of the same codec. Consumers continue their own streams where they were
        (and wait for the keyframe this asks for), so subscribers renegotiate nothing."""
        primary = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
        if primary is None or primary.payloadType is None:
            raise ValueError("a producer needs a media codec")
        self.mid = mid
        self.payload_type = primary.payloadType
        self._rtx_apt = {
            c.payloadType: int(str(c.parameters["apt"]))
            for c in codecs
            if c.mimeType.lower().endswith("/rtx")
            and "apt" in c.parameters
            and c.payloadType is not None
        }
        self._rtx_ssrcs = dict(rtx_ssrcs)
        self._media_ssrc = ssrcs[0] if ssrcs else None
        self._streams = {}
        self._nack = accel.MissingPackets() if self.kind == "video" else None
        self._inbound.payload_type = self.payload_type
        self._sync_inbound()
        self._last_remb = None
        self.sender_report = None
        self._receiver = receiver
        _aiortc.hook_receiver(
            receiver, self.handle_rtp, self.handle_rtcp, self._streams, self._fast_entry()
        )
        if ssrcs or rtx_ssrcs:
            _aiortc.register_ssrcs(receiver, [*ssrcs, *rtx_ssrcs])
        for consumer in self._view.consumers:
            consumer.resync()
        self._last_keyframe_request = -1e9
        self.request_keyframe()

    def _fast_entry(self) -> Callable[[RtpIn], None]:
        """What the fast receive path calls per packet: the compiled ``Inbound`` itself (its
        fallback is :meth:`_after`), or :meth:`forward`."""
        return self._inbound if accel.COMPILED else self.forward  # type: ignore[no-any-return]

    @property
    def sinks(self) -> tuple[PacketSink, ...]:
        """Recorders of this track; replaced, never mutated in place."""
        return self._sinks

    @sinks.setter
    def sinks(self, sinks: tuple[PacketSink, ...]) -> None:
        self._sinks = sinks
        self._inbound.extra = accel.IN_SINKS if sinks else 0

    @property
    def waiting_consumers(self) -> int:
        """Consumers waiting for a keyframe (while any wait, every packet takes the Python
        path, which detects keyframes)."""
        return self._waiting_consumers

    @waiting_consumers.setter
    def waiting_consumers(self, count: int) -> None:
        self._waiting_consumers = count
        self._update_hold()

    @property
    def _keyframe_pending(self) -> bool:
        """A keyframe request waits for the end of the debounce interval."""
        return self._keyframe_pending_

    @_keyframe_pending.setter
    def _keyframe_pending(self, pending: bool) -> None:
        self._keyframe_pending_ = pending
        self._update_hold()

    def _update_hold(self) -> None:
        self._inbound.hold = bool(self.closed or self._waiting_consumers or self._keyframe_pending_)

    @property
    def packets(self) -> int:
        """Packets forwarded (RTX unwrapped included)."""
        return self._packets + self._inbound.packets  # type: ignore[no-any-return]

    @property
    def octets(self) -> int:
        """Payload octets forwarded."""
        return self._octets + self._inbound.octets  # type: ignore[no-any-return]

    def _sync_inbound(self) -> None:
        """Tell the common case which SSRC is the media one and hand it that SSRC's statistics
        (the same objects aiortc's receiver reports read) and the NACK generator."""
        inbound = self._inbound
        inbound.media_ssrc = self._media_ssrc
        inbound.stats = (
            self._streams.get(self._media_ssrc) if self._media_ssrc is not None else None
        )
        inbound.nack = self._nack

    def media_statistics(self) -> _aiortc.StreamStatistics | None:
        """Sequence and jitter statistics of the media SSRC (not RTX), for reports."""
        return self._streams.get(self._media_ssrc) if self._media_ssrc is not None else None

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """This producer's consumers: a view of the router's fan-out table."""
        return self._view.consumers

    @property
    def needs_keyframes(self) -> bool:
        """Whether consumers must wait for a keyframe before forwarding (video we can parse)."""
        return self._is_keyframe is not None

    def __repr__(self) -> str:
        return f"Producer({self.id} {self.kind}/{self.source} of {self.peer_id})"

    # --- the packet path -------------------------------------------------------------------

    async def handle_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """aiortc's path: packets it parsed itself (before the fast path is installed)."""
        self.forward(RtpIn.from_aiortc(packet))

    def forward(self, packet: RtpIn) -> None:
        """Every decrypted packet of this track, from the fast path or aiortc's path.

        The common case (a media packet of the media SSRC while no consumer waits for a
        keyframe) is one call to ``accel.Inbound.receive``: statistics, NACK generator,
        counters and the fan-out; its flags say what is left here. Everything else takes
        :meth:`_forward`."""
        if self.closed:
            return
        try:
            if self.waiting_consumers or self._keyframe_pending:
                self._forward(packet)
                return
            flags = self._inbound.receive(packet, self._view.consumers)
            if flags & accel.IN_PYTHON:
                self._forward(packet)
            elif flags or self._sinks:
                self._finish(packet, flags)
        except Exception:
            # never raise into aiortc's receive loop: it would close the publisher's
            # transport. A bug here costs one packet, not the call.
            logger.warning("[%s] dropped a packet of %s", self.peer_id, self.id, exc_info=True)

    def _after(self, packet: RtpIn, flags: int) -> None:
        """What the compiled entry (``Inbound.__call__``) leaves to Python: the packet itself
        (``IN_PYTHON``) or the rest of its bookkeeping."""
        try:
            if flags & accel.IN_PYTHON:
                if not self.closed:
                    self._forward(packet)
                return
            self._finish(packet, flags)
        except Exception:
            # never raise into aiortc's receive loop (see forward)
            logger.warning("[%s] dropped a packet of %s", self.peer_id, self.id, exc_info=True)

    def _finish(self, packet: RtpIn, flags: int) -> None:
        """The rest of a packet the common case took (``IN_*`` flags), and the recorders."""
        inbound = self._inbound
        if flags & accel.IN_QUALITY:
            quality = self.quality
            quality.on_taken(packet, time.monotonic() if quality.speech else 0.0)
        if flags & accel.IN_NACK:
            self._send_nack(packet.ssrc)
        if flags & accel.IN_SLOW:
            self._send_slow(packet, inbound.slow, inbound.abs_send_time, False)
        for sink in self._sinks:
            sink.write(packet)

    def _forward(self, packet: RtpIn) -> None:
        """The Python path: every packet the common case does not take (RTX, another SSRC or
        payload type, consumers waiting for a keyframe, a pending keyframe request)."""
        arrived = time.monotonic()
        self._latency_tick += 1
        sampled = not self._latency_tick % LATENCY_EVERY
        if packet.payload_type == self.payload_type:
            self.quality.on_packet(packet, arrived)
        ssrc = packet.ssrc
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = accel.ReceiveStatistics(self.codec.clockRate)
            if ssrc == self._media_ssrc:
                self._sync_inbound()
        stream.add(packet.sequence_number, packet.timestamp, time.time())

        if packet.payload_type != self.payload_type:
            apt = self._rtx_apt.get(packet.payload_type)
            if apt is None or apt != self.payload_type or len(packet.payload) < 2:
                return  # unknown payload type, or RTX padding
            media_ssrc = self._rtx_ssrcs.get(ssrc, self._media_ssrc)
            if media_ssrc is None:
                return
            packet = unwrap_rtx_in(packet, payload_type=apt, ssrc=media_ssrc)
            self.retransmissions += 1
        elif self._media_ssrc != ssrc:
            if self._media_ssrc is not None:
                # another stream (an SSRC change or collision): its sequence numbers and
                # timestamps are unrelated, so consumers continue theirs from where they are
                for consumer in self._view.consumers:
                    consumer.resync()
            self._media_ssrc = ssrc
            self._sync_inbound()

        self._packets += 1
        self._octets += len(packet.payload)

        if self._nack is not None and self._nack.add(packet.sequence_number):
            self._send_nack(packet.ssrc)

        keyframe = False
        if self.waiting_consumers and self._is_keyframe is not None:
            keyframe = self._is_keyframe(packet.payload)
            if not keyframe:
                now = time.monotonic()
                if now - self._last_keyframe_request >= self._config.keyframe_retry_interval:
                    self.request_keyframe()
        if self._keyframe_pending:
            # a request that arrived within the debounce interval is sent when it ends
            self.request_keyframe()
        consumers = self._view.consumers
        if consumers:
            abs_send_time = accel.abs_send_time_now()
            # the whole fan-out in one call (compiled or pure, relay/accel.py); what it hands
            # back (consumers not synced or not connected yet) takes the Python path
            slow = accel.fan_out(packet, consumers, abs_send_time)
            if slow is not None:
                self._send_slow(packet, slow, abs_send_time, keyframe)
        for sink in self.sinks:
            sink.write(packet)
        if sampled:
            FORWARD_LATENCY.observe(time.monotonic() - arrived)

    def _send_nack(self, media_ssrc: int) -> None:
        nack = self._nack
        if nack is not None:
            self.nacks_sent += 1
            self._spawn(_aiortc.send_nack(self._receiver, media_ssrc, sorted(nack.missing)))

    def _send_slow(
        self, packet: RtpIn, slow: list[Consumer], abs_send_time: int, keyframe: bool
    ) -> None:
        """The consumers the compiled fan-out could not serve (not synced, not connected)."""
        audio_level = packet.audio_level
        for consumer in slow:
            try:
                consumer.send(packet, abs_send_time, audio_level, keyframe)
            except Exception:
                # one broken subscriber must not stop the others (nor, by raising
                # into aiortc's receive loop, close the publisher's transport)
                self._drop_consumer(consumer)

    def _drop_consumer(self, consumer: Consumer) -> None:
        logger.warning(
            "[%s] dropping consumer %s of %s: sending failed",
            consumer.peer_id,
            consumer.id,
            self.id,
            exc_info=True,
        )
        # through the router's table: the subscriber's m-line goes inactive in its next offer
        if not self._fanout.remove(consumer):
            consumer.close()

    async def handle_rtcp(self, packet: AnyRtcpPacket) -> None:
        """Sender reports and BYE from the publisher (after aiortc's own bookkeeping)."""
        if isinstance(packet, RtcpSrPacket) and packet.ssrc == self._media_ssrc:
            info = packet.sender_info
            self.sender_report = (info.ntp_timestamp, info.rtp_timestamp)

    # --- feedback to the publisher -----------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (PLI), at most once per debounce interval; a request
        within the interval is not lost but sent when the interval ends (trailing edge)."""
        if self.closed or self.kind != "video":
            return
        if self._media_ssrc is None:
            self._keyframe_pending = True
            return
        now = time.monotonic()
        if now - self._last_keyframe_request < self._config.keyframe_request_interval:
            self._keyframe_pending = True
            return
        self._last_keyframe_request = now
        self._keyframe_pending = False
        self.keyframe_requests += 1
        self._spawn(_aiortc.send_pli(self._receiver, self._media_ssrc))

    def update_remb(self) -> None:
        """Tell the publisher the lowest bitrate its subscribers estimate (REMB, sent when it
        drops by more than 3 % or at most once a second otherwise)."""
        lowest = None
        for consumer in self.consumers:
            if consumer.remb is not None and (lowest is None or consumer.remb < lowest):
                lowest = consumer.remb
        rtcp_ssrc = _aiortc.receiver_rtcp_ssrc(self._receiver)
        if lowest is None or rtcp_ssrc is None or self._media_ssrc is None or self.closed:
            return
        now = time.monotonic()
        last = self._last_remb
        if last is not None and lowest >= last * 0.97 and now - self._last_remb_at < 1.0:
            return
        self._last_remb, self._last_remb_at = lowest, now
        self.remb_sent += 1
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(lowest, [self._media_ssrc]),
        )
        self._spawn(_aiortc.send_receiver_rtcp(self._receiver, packet))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Send feedback upstream without waiting (the packet path never awaits). Outside a
        running loop (the loop-free unit tests) there is no transport: it is counted only."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop forwarding; the router closes this producer's consumers."""
        if self.closed:
            return
        self.closed = True
        self._update_hold()
        logger.debug("[%s] producer %s closed", self.peer_id, self.id)
        self._on_close(self)
        for sink in self.sinks:
            sink.close()
