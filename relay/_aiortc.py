"""Every use of aiortc's and aioice's private attributes lives here, and only here (the fence).

aiortc always decodes what it receives; a forwarding relay needs the decrypted RTP packets
instead. These hooks are written against aiortc 1.16 / aioice 0.13 (pinned in pyproject.toml).

The fence fails loudly and early:
- every accessor raises :class:`HookError` naming the attribute when it is gone (none returns a
  default that would silently turn REMB, receiver reports or forwarding off);
- :func:`check_compatibility` (called by ``create_app``) connects a throwaway pair of real peer
  connections on loopback and checks every attribute below on the real objects, then sends one
  packet through the fast path; ``tests/relay/test_aiortc_hooks.py`` runs the same check;
- the socket callback we install on aioice's protocols never lets an exception escape into
  aioice (:class:`DatagramGuard`).

What we rely on:
- ``RTCPeerConnection.__iceTransports`` / ``__dtlsTransports`` (name-mangled), and
  ``__connect`` / ``__isClosed``, which :class:`PeerConnection` wraps.
- ``RTCDtlsTransport``: ``_state``, ``_rx_srtp`` / ``_tx_srtp`` (pylibsrtp sessions once
  connected), ``_rtp_router`` (``ssrc_table``, ``senders``, ``route_rtp``, ``register_sender``,
  ``unregister_sender``) and ``_send_rtp(data)`` (SRTP protect and send, for the bench's
  clients), ``transport`` (the ICE transport).
- aioice: ``RTCIceGatherer._connection`` (``get_component_candidates``, ``_protocols``,
  ``_nominated``), ``StunProtocol`` (``transport``, ``local_candidate``,
  ``datagram_received``), ``CandidatePair`` (``protocol``, ``remote_addr``).
- ``RTCRtpReceiver``: ``_handle_rtp_packet``, ``_handle_rtcp_packet``, ``receive``,
  ``_send_rtcp``, ``_send_rtcp_nack``, ``_send_rtcp_pli`` (they use the RTCP SSRC the peer
  connection assigned), the name-mangled ``__remote_streams`` (the statistics its RTCP loop turns
  into receiver reports), ``__rtcp_ssrc`` and ``__stop_decoder`` (we never decode); and, for
  the stand-in of its RTCP loop (``_run_rtcp``, see :func:`_ticked_rtcp`), ``__lsr`` /
  ``__lsr_time`` (each SSRC's last sender report) and the ``__rtcp_started`` /
  ``__rtcp_exited`` events its ``stop()`` waits for.
- ``RTCRtpSender``: ``_ssrc``, ``_rtx_ssrc``, ``_stream_id``, ``_handle_rtcp_packet`` and
  ``_send_rtcp`` (the BYE of its RTCP loop goes through the latter); ``_run_rtcp`` (replaced),
  ``__cname``, ``__rtcp_started`` / ``__rtcp_exited``.
- ``RTCRtpTransceiver``: ``_codecs``, ``_headerExtensions``, ``_offerDirection``.
- what aiortc's RTCP loop reads from the objects in ``__remote_streams`` (``fraction_lost``,
  ``packets_lost``, ``max_seq``, ``jitter``, as aiortc's unexported ``StreamStatistics`` has
  them): ours are relay/rtpstats.py's (or their compiled twins), which replace aiortc's
  ``StreamStatistics`` and ``NackGenerator`` on the packet path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, NoReturn, Protocol

import pylibsrtp
from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtp import AnyRtcpPacket, RtcpByePacket, RtcpReceiverInfo, RtcpRrPacket, RtpPacket

from . import accel, icecheck, ticker, udp
from .rtp import RtpIn, parse_rtp

logger = logging.getLogger(__name__)

RtpHandler = Callable[[RtpPacket, int], Awaitable[None]]
RtcpHandler = Callable[[AnyRtcpPacket], Awaitable[None]]
RtcpSender = Callable[[list[AnyRtcpPacket]], Awaitable[None]]

_RECEIVER_STREAMS = "_RTCRtpReceiver__remote_streams"
_RECEIVER_STOP_DECODER = "_RTCRtpReceiver__stop_decoder"
_RECEIVER_RTCP_SSRC = "_RTCRtpReceiver__rtcp_ssrc"
_RECEIVER_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_RECEIVER_LSR = "_RTCRtpReceiver__lsr"
_RECEIVER_LSR_TIME = "_RTCRtpReceiver__lsr_time"
_RECEIVER_RTCP_STARTED = "_RTCRtpReceiver__rtcp_started"
_RECEIVER_RTCP_EXITED = "_RTCRtpReceiver__rtcp_exited"
_SENDER_RTCP_STARTED = "_RTCRtpSender__rtcp_started"
_SENDER_RTCP_EXITED = "_RTCRtpSender__rtcp_exited"
_SENDER_CNAME = "_RTCRtpSender__cname"
RTCP_INTERVAL = 1.0
"""Seconds between two reports (RR of a publish leg's receivers, SR of a subscribe leg's
senders), every leg's on the process's one timer of this period (:mod:`relay.ticker`), which the
dead-leg watchdogs share: one wakeup a second for all of them instead of a task each waking at
its own random time (aiortc's loops: 0.5-1.5 s)."""
_PC_ICE_TRANSPORTS = "_RTCPeerConnection__iceTransports"
_PC_DTLS_TRANSPORTS = "_RTCPeerConnection__dtlsTransports"
_PC_CONNECT = "_RTCPeerConnection__connect"
_PC_IS_CLOSED = "_RTCPeerConnection__isClosed"
UDP_BUFFER = 1 << 20
"""Socket buffers of the media sockets we bind: bursts wait in the kernel, overload drops there."""
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
LOG_INTERVAL = 60.0
"""Seconds between two log lines about rejected or failed datagrams (after the first)."""


class HookError(RuntimeError):
    """aiortc or aioice no longer has what the relay reaches into: check relay/_aiortc.py."""


class PeerConnection(RTCPeerConnection):
    """The relay's peer connection: aiortc's, but a close that overtakes its connect task ends
    that task quietly.

    aiortc starts ``__connect`` as a task nobody awaits (``setLocalDescription`` /
    ``setRemoteDescription``) and checks only at its start whether the connection was closed.
    Closed while the task waits for the DTLS handshake of its first transceiver, the next
    transceiver's ``RTCIceTransport.start`` raises ``InvalidStateError`` ("RTCIceTransport is
    closed") and asyncio logs "Task exception was never retrieved" with a traceback (seen
    about once an hour in the soak when participants leave while connecting). That error
    means only that the close won; any other, or the same on an open connection, still
    surfaces. Closing also ends the relay's own consent checks of its ICE connections."""

    async def _RTCPeerConnection__connect(self) -> None:  # noqa: N802 (aiortc's mangled name)
        try:
            await getattr(super(), _PC_CONNECT)()
        except InvalidStateError:
            if not getattr(self, _PC_IS_CLOSED):
                raise
            logger.debug("a peer connection closed while connecting")

    async def close(self) -> None:
        # the relay's consent checks (ConsentFreshness) end now, not at their next look
        for _, connection in _connections(self):
            consent = connection.__dict__.get("_parley_consent")
            if consent is not None:
                consent.stop()
        await super().close()


def _attr(obj: object, name: str) -> Any:
    """``getattr`` that names what is missing instead of returning a default."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise HookError(f"{type(obj).__module__}.{type(obj).__name__} has no {name}") from None


# --- aiortc's unexported helpers ---------------------------------------------------------------


class NackGenerator(Protocol):
    """What the producer uses of its NACK generator (``accel.MissingPackets``)."""

    @property
    def missing(self) -> set[int]: ...

    def add(self, seq: int) -> bool: ...


class StreamStatistics(Protocol):
    """What the producer uses of one SSRC's receive statistics (``accel.ReceiveStatistics``;
    aiortc's receiver reports read ``fraction_lost``, ``packets_lost``, ``max_seq``,
    ``jitter``)."""

    def add(self, seq: int, timestamp: int, now: float) -> None: ...


# --- receiving side (a producer) -------------------------------------------------------------


class _ReceiverHooks:
    """Installed once per receiver; a new producer on a re-used m-line swaps the handlers."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.stock_rtcp: RtcpHandler = _attr(receiver, "_handle_rtcp_packet")
        self.stock_receive: Callable[[Any], Awaitable[None]] = _attr(receiver, "receive")
        self.receiver = receiver
        self.on_rtp: RtpHandler | None = None
        self.on_rtcp: RtcpHandler | None = None

    async def handle_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if self.on_rtp is not None:
            await self.on_rtp(packet, arrival_time_ms)

    async def handle_rtcp(self, packet: AnyRtcpPacket) -> None:
        await self.stock_rtcp(packet)
        if self.on_rtcp is not None:
            await self.on_rtcp(packet)

    async def receive(self, parameters: Any) -> None:
        await self.stock_receive(parameters)
        stop_decoder(self.receiver)


def hook_receiver(
    receiver: RTCRtpReceiver,
    on_rtp: RtpHandler,
    on_rtcp: RtcpHandler,
    streams: dict[int, Any],
    on_fast_rtp: Callable[[RtpIn], None] | None = None,
) -> None:
    """Divert ``receiver``'s decrypted RTP to ``on_rtp`` (aiortc's path) and ``on_fast_rtp``
    (the fast path, see :func:`install_fast_receive`), its RTCP (sender reports, BYE) to
    ``on_rtcp`` as well as the stock handler; its receiver reports are built from ``streams``;
    its decoder thread is stopped as soon as it starts. Calling it again for the same receiver
    (a publisher re-uses an m-line for a new track) replaces the handlers."""
    hooks = receiver.__dict__.get("_parley_hooks")
    if hooks is None:
        hooks = _ReceiverHooks(receiver)
        _attr(receiver, "_handle_rtp_packet")
        receiver._handle_rtp_packet = hooks.handle_rtp  # type: ignore[method-assign]
        receiver._handle_rtcp_packet = hooks.handle_rtcp  # type: ignore[method-assign]
        receiver.receive = hooks.receive  # type: ignore[method-assign]
        for name in (_RECEIVER_LSR, _RECEIVER_LSR_TIME, _RECEIVER_RTCP_SSRC):
            _attr(receiver, name)
        receiver._run_rtcp = _ticked_rtcp(  # type: ignore[method-assign]
            _attr(receiver, _RECEIVER_RTCP_STARTED),
            _attr(receiver, _RECEIVER_RTCP_EXITED),
            _receiver_reports(receiver),
            None,
        )
        receiver._parley_hooks = hooks  # type: ignore[attr-defined]
    hooks.on_rtp, hooks.on_rtcp = on_rtp, on_rtcp
    if on_fast_rtp is not None:
        receiver._parley_forward = on_fast_rtp  # type: ignore[attr-defined]
    else:
        receiver.__dict__.pop("_parley_forward", None)
    if not isinstance(_attr(receiver, _RECEIVER_STREAMS), dict):
        raise HookError(f"RTCRtpReceiver.{_RECEIVER_STREAMS} is no longer a dict")
    setattr(receiver, _RECEIVER_STREAMS, streams)


def _ticked_rtcp(
    started: asyncio.Event,
    exited: asyncio.Event,
    report: Callable[[], None],
    bye: Callable[[], Awaitable[None]] | None,
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A stand-in for aiortc's ``_run_rtcp``: it keeps the events aiortc's ``stop()`` waits
    for, but the reports go out from the shared tick (``report()``, synchronous), and the task
    only waits to be cancelled; then ``bye`` (a sender's RTCP BYE, as aiortc's loop ends with)."""

    async def run_rtcp() -> None:
        started.set()

        def due(now: float) -> None:
            try:
                report()
            except ConnectionError:
                pass  # not (or no longer) connected: the next tick tries again
            except accel.SrtpError:
                pass

        tick = ticker.every(RTCP_INTERVAL, due)
        try:
            await asyncio.Event().wait()  # until stop() cancels the task
        except asyncio.CancelledError:
            pass
        finally:
            tick.cancel()
        try:
            if bye is not None:
                await bye()
        finally:
            exited.set()

    return run_rtcp


def _receiver_reports(receiver: RTCRtpReceiver) -> Callable[[], None]:
    """Sends ``receiver``'s receiver report through a fast sender on its DTLS transport (made
    at the first report: the transport is set by then)."""
    sends: list[Callable[[bytes], None]] = []

    def report() -> None:
        if not sends:
            sends.append(fast_sender(_attr(receiver, "transport")))
        _send_receiver_report(receiver, sends[0])

    return report


def _send_receiver_report(receiver: RTCRtpReceiver, send: Callable[[bytes], None]) -> None:
    """The receiver report aiortc's loop builds, from the statistics in ``__remote_streams``
    (the producer's own) and the last sender report of each SSRC (LSR, DLSR)."""
    rtcp_ssrc = getattr(receiver, _RECEIVER_RTCP_SSRC)
    streams = getattr(receiver, _RECEIVER_STREAMS)
    if rtcp_ssrc is None or not streams:
        return
    lsrs, lsr_times = getattr(receiver, _RECEIVER_LSR), getattr(receiver, _RECEIVER_LSR_TIME)
    now = time.time()
    reports = []
    for ssrc, stream in streams.items():
        lsr = dlsr = 0
        if ssrc in lsrs:
            lsr = lsrs[ssrc]
            delay = now - lsr_times[ssrc]
            if 0 < delay < 65536:
                dlsr = int(delay * 65536)
        reports.append(
            RtcpReceiverInfo(
                ssrc=ssrc,
                fraction_lost=stream.fraction_lost,
                packets_lost=stream.packets_lost,
                highest_sequence=stream.max_seq,
                jitter=stream.jitter,
                lsr=lsr,
                dlsr=dlsr,
            )
        )
    send(bytes(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports)))


def stop_decoder(receiver: RTCRtpReceiver) -> None:
    _attr(receiver, _RECEIVER_STOP_DECODER)()


def register_ssrcs(receiver: RTCRtpReceiver, ssrcs: Iterable[int]) -> None:
    """Route these SSRCs to ``receiver`` (a re-offer may bring new ones to a started receiver)."""
    table = _attr(_attr(receiver.transport, "_rtp_router"), "ssrc_table")
    for ssrc in ssrcs:
        table[ssrc] = receiver


async def send_receiver_rtcp(receiver: RTCRtpReceiver, packet: AnyRtcpPacket) -> None:
    await _attr(receiver, "_send_rtcp")(packet)


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await _attr(receiver, "_send_rtcp_pli")(media_ssrc)


async def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
    await _attr(receiver, "_send_rtcp_nack")(media_ssrc, lost)


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC the receiver's RTCP goes out with; None until the peer connection assigned it
    (aiortc does so when the transceiver is negotiated)."""
    value = _attr(receiver, _RECEIVER_RTCP_SSRC)
    if value is not None and not isinstance(value, int):
        raise HookError(f"RTCRtpReceiver.{_RECEIVER_RTCP_SSRC} is no longer an int")
    return value


# --- sending side (a consumer) ---------------------------------------------------------------


def hook_sender(
    sender: RTCRtpSender,
    on_rtcp: RtcpHandler,
    send_reports: RtcpSender,
    report: Callable[[], None] | None = None,
) -> None:
    """Answer the subscriber's RTCP ourselves (NACK, PLI, RR) and let ``send_reports`` rewrite
    what the sender's RTCP goes out as (its SR knows nothing of forwarded packets). With
    ``report``, the sender's reports come from it, on the shared tick (``report()``), instead
    of from aiortc's loop; ``send_reports`` still carries the BYE at the end."""
    _attr(sender, "_handle_rtcp_packet")
    _attr(sender, "_send_rtcp")
    sender._handle_rtcp_packet = on_rtcp  # type: ignore[method-assign,assignment]
    sender._send_rtcp = send_reports  # type: ignore[method-assign,assignment]
    if report is not None:
        ssrc = _attr(sender, "_ssrc")

        async def bye() -> None:
            await send_reports([RtcpByePacket(sources=[ssrc])])

        sender._run_rtcp = _ticked_rtcp(  # type: ignore[method-assign]
            _attr(sender, _SENDER_RTCP_STARTED),
            _attr(sender, _SENDER_RTCP_EXITED),
            report,
            bye,
        )


def sender_cname(sender: RTCRtpSender) -> str | None:
    """The CNAME aiortc's SDES carries for ``sender`` (its peer connection's)."""
    value = _attr(sender, _SENDER_CNAME)
    return value if isinstance(value, str) else None


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """The msid stream a sender's track is announced in (one per remote participant, so that
    browsers lip-sync each participant's audio with that participant's video)."""
    _attr(sender, "_stream_id")
    sender._stream_id = stream_id


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    return _attr(sender, "_ssrc"), _attr(sender, "_rtx_ssrc")


def transceiver_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(_attr(transceiver, "_codecs"))


def transceiver_header_extensions(
    transceiver: RTCRtpTransceiver,
) -> list[RTCRtpHeaderExtensionParameters]:
    return list(_attr(transceiver, "_headerExtensions"))


def transceiver_offer_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """The direction the remote offer asked for, seen from our side ("recvonly", ...); None
    before any remote offer."""
    value = _attr(transceiver, "_offerDirection")
    if value is not None and not isinstance(value, str):
        raise HookError("RTCRtpTransceiver._offerDirection is no longer a string")
    return value


def dtls_is_connected(dtls: RTCDtlsTransport) -> bool:
    return bool(_attr(dtls, "_state") == State.CONNECTED)


async def dtls_send_rtp(dtls: RTCDtlsTransport, data: bytes) -> None:
    await _attr(dtls, "_send_rtp")(data)


# --- the socket callback ---------------------------------------------------------------------
#
# aiortc hands every datagram from aioice's socket callback to an asyncio.Queue, wakes the DTLS
# transport's task, unprotects, parses every header extension and awaits the receiver; sending
# goes down five coroutine layers to ``transport.sendto``. For forwarded media the relay does
# the same work synchronously, in the socket callback: RTP only, once DTLS is up; RTCP, STUN
# and DTLS still take aiortc's path. Every media socket of the relay (publish and subscribe
# legs) gets the guard; publish legs also get the fast path.


class DatagramStats:
    """What the relay's media sockets refused, process-wide (read by ``/metrics``)."""

    __slots__ = (
        "empty",
        "malformed_stun",
        "errors",
        "checks_answered",
        "consent_sent",
        "consent_answered",
        "consent_expired",
        "_last_log",
        "_logged_error",
    )

    def __init__(self) -> None:
        self.checks_answered = 0
        """Connectivity checks of established pairs the guard answered itself (not refused)."""
        self.consent_sent = 0
        """Consent checks the relay sent itself (:class:`ConsentFreshness`)."""
        self.consent_answered = 0
        """Authenticated success responses to them."""
        self.consent_expired = 0
        """ICE connections closed because consent expired (RFC 7675 §5.1)."""
        self.empty = 0
        """Empty datagrams (aiortc's DTLS transport would fail on them and close the leg)."""
        self.malformed_stun = 0
        """STUN-looking datagrams aioice cannot parse (it raises ``struct.error``)."""
        self.errors = 0
        """Exceptions raised while handling a datagram (a bug, or a changed aiortc)."""
        self._last_log = -LOG_INTERVAL
        self._logged_error = False

    def as_dict(self) -> dict[str, int]:
        return {"empty": self.empty, "malformed_stun": self.malformed_stun, "errors": self.errors}

    def _should_log(self) -> bool:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL:
            return False
        self._last_log = now
        return True

    def rejected(self, reason: str, addr: Any) -> None:
        if self._should_log():
            logger.warning(
                "media socket: dropped a datagram from %s (%s); totals %s "
                "(logged at most once a minute)",
                addr,
                reason,
                self.as_dict(),
            )

    def failed(self, addr: Any) -> None:
        self.errors += 1
        if not self._logged_error:
            self._logged_error = True
            self._last_log = time.monotonic()
            logger.warning(
                "media socket: handling a datagram from %s failed (further failures are "
                "counted and logged at most once a minute)",
                addr,
                exc_info=True,
            )
        elif self._should_log():
            logger.warning("media socket: datagram failures so far: %s", self.as_dict())


DATAGRAMS = DatagramStats()


FAST_IN = accel.FastIn is not None and os.environ.get("PARLEY_NO_FAST_IN", "") in ("", "0")
"""Whether batched sockets hand SRTP packets to :class:`accel.FastIn` (``PARLEY_NO_FAST_IN=1``,
a benchmark's switch, keeps them on the Python receive path)."""


class FastReceive:
    """Per ICE connection: SRTP-unprotect, parse and route RTP straight to the receiver's
    ``_parley_forward(packet)``. With the compiled packet path the unprotect runs on the
    relay's own libsrtp context, made from the transport's keying material."""

    __slots__ = ("dtls", "abs_send_time_id", "_audio_level_id", "_unprotect_errors", "rx", "taker")

    def __init__(self, dtls: RTCDtlsTransport, stats: DatagramStats | None = None) -> None:
        self.dtls = dtls
        self.abs_send_time_id = 0
        """Negotiated, but not parsed: nothing reads the publisher's abs-send-time."""
        self._audio_level_id = 0
        self._unprotect_errors = 0
        self.rx: Any = None
        self.taker: Any = (
            accel.FastIn(self.routed, (stats or DATAGRAMS).failed) if FAST_IN else None
        )
        """The compiled twin (:class:`accel.FastIn`) that the batched sockets' readers hand
        SRTP packets to, once the first one here has made the SRTP context; else None."""

    @property
    def audio_level_id(self) -> int:
        return self._audio_level_id

    @audio_level_id.setter
    def audio_level_id(self, value: int) -> None:
        self._audio_level_id = value
        if self.taker is not None:
            self.taker.audio_level_id = value

    @property
    def unprotect_errors(self) -> int:
        return self._unprotect_errors + (self.taker.unprotect_errors if self.taker else 0)

    def receive(self, data: bytes) -> None:
        dtls = self.dtls
        rx = self.rx
        if rx is None:
            rx = self.rx = rx_session(dtls)
            if self.taker is not None:
                router = dtls._rtp_router  # type: ignore[attr-defined]
                self.taker.set_keys(rx, router.ssrc_table, router.payload_type_table)
        if accel.COMPILED:
            # unprotect and parse in one call, from one stack buffer
            try:
                packet = rx.unprotect_parse(data, 0, self.audio_level_id)
            except accel.SrtpError:
                self._unprotect_errors += 1
                return
            if packet is None:
                return
        else:
            try:
                plain = rx.unprotect(data)
            except accel.SrtpError:
                self._unprotect_errors += 1
                return
            try:
                packet = parse_rtp(plain, 0, self.audio_level_id)
            except ValueError:
                return
        self.routed(packet)

    def routed(self, packet: Any) -> None:
        """Route a decrypted packet as aiortc does and hand it to its receiver's fast path."""
        receiver = self.dtls._rtp_router.route_rtp(packet)
        if receiver is not None:
            forward = receiver.__dict__.get("_parley_forward")
            if forward is not None:
                forward(packet)


CHECK_ANSWER = os.environ.get("PARLEY_AIOICE_CHECKS", "") in ("", "0")
"""Whether the socket guard answers the nominated pair's connectivity checks itself and the
relay sends its own consent checks (``PARLEY_AIOICE_CHECKS=1`` leaves both to aioice, for
measuring only)."""


class CheckAnswer:
    """Answers the connectivity checks (consent, RFC 7675) of one aioice ``StunProtocol``'s
    nominated pair itself (``relay.icecheck``), as aioice would; every other request, and
    every check before connect() completes or once the connection closes, stays aioice's."""

    __slots__ = ("protocol", "connection")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.connection = _attr(protocol, "receiver")
        for name in ("_nominated", "_closing", "_early_checks_done", "ice_controlling"):
            _attr(self.connection, name)

    def answer(self, data: bytes, addr: Any) -> bool:
        """Whether ``data`` from ``addr`` was such a check, and its response is sent."""
        connection = self.connection
        if connection._closing or not connection._early_checks_done:
            return False
        pair = connection._nominated.get(1)
        host, port = addr[0], addr[1]
        if pair is None or pair.protocol is not self.protocol or pair.remote_addr != (host, port):
            return False
        remote = connection.remote_username
        if not remote:
            return False
        response = icecheck.binding_response(
            data,
            host,
            port,
            f"{connection.local_username}:{remote}".encode(),
            connection.local_password.encode(),
            connection.ice_controlling,
        )
        if response is None:
            return False
        self.protocol.transport.sendto(response, addr)
        return True


CONSENT_INTERVAL = 5.0
"""Seconds between consent checks, randomised to 0.8-1.2 times (aioice's and RFC 7675's)."""
CONSENT_EXPIRY = 30.0
"""Consent expires this long after the last answered check (RFC 7675 §5.1)."""

_closing: set[asyncio.Future[None]] = set()
"""Connections being closed because their consent expired (kept until closed)."""


class ConsentFreshness:
    """The relay's own consent checks (RFC 7675) of one aioice ``Connection``'s nominated pair,
    in place of aioice's ``query_consent``: a task per connection that wakes every 4-6 s and
    builds, signs and parses each check with aioice's general codec. Once connect() has started
    that task, the first look cancels it and takes over. The looks ride the process's shared
    timer (:mod:`relay.ticker`); a due one sends :func:`icecheck.binding_request` on the pair's
    socket and the pair's :class:`DatagramGuard` hands back the answer
    (:meth:`response_received`). With no authenticated success response for ``expiry``
    seconds the connection closes, as aioice closes it after its sixth failed check in a row;
    a response counts until the next check is sent (aioice waits 0.5 s, then counts a
    failure), and only from the pair's remote address."""

    __slots__ = (
        "connection",
        "interval",
        "expiry",
        "stats",
        "due",
        "last_ok",
        "pending",
        "taken",
        "_tick",
        "_period",
    )

    def __init__(
        self,
        connection: Any,
        *,
        interval: float = CONSENT_INTERVAL,
        expiry: float = CONSENT_EXPIRY,
        period: float = 1.0,
        stats: DatagramStats = DATAGRAMS,
    ) -> None:
        for name in (
            "_query_consent_task",
            "_nominated",
            "_closing",
            "_tie_breaker",
            "ice_controlling",
            "local_username",
            "remote_username",
            "remote_password",
        ):
            _attr(connection, name)
        self.connection = connection
        self.interval = interval
        self.expiry = expiry
        self.stats = stats
        self.due = 0.0
        self.last_ok = 0.0
        self.pending: tuple[bytes, Any, DatagramGuard] | None = None
        """(transaction id, the pair it went to, that pair's socket guard) of the check
        awaiting its answer."""
        self.taken = False
        """Whether aioice's consent task is cancelled and the checks are ours."""
        self._period = period
        self._tick: ticker.Tick | None = None

    def start(self) -> None:
        if self._tick is None:
            self._tick = ticker.every(self._period, self._look)

    def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self.pending = None

    def _next(self, now: float) -> float:
        return now + self.interval * (0.8 + 0.4 * random.random())

    def _look(self, now: float) -> None:
        connection = self.connection
        if connection._closing:
            self.stop()
            return
        if not self.taken:
            task = connection._query_consent_task
            if task is None:
                return  # connect() has not completed (or aioice already gave up)
            if task.done():
                self.stop()
                return
            task.cancel()  # asleep: its first check is 4-6 s after connect()
            self.taken = True
            self.last_ok, self.due = now, self._next(now)
            return
        if now < self.due:
            return
        if now - self.last_ok >= self.expiry:
            self._expire()
            return
        pair = connection._nominated.get(1)
        password = connection.remote_password
        if pair is None or not password:
            self.due = self._next(now)
            return
        transaction_id = os.urandom(12)
        request = icecheck.binding_request(
            transaction_id,
            f"{connection.remote_username}:{connection.local_username}".encode(),
            password.encode(),
            connection.ice_controlling,
            connection._tie_breaker,
            candidate_priority(pair.component, "prflx"),
        )
        guard = _guard(pair.protocol)
        guard.consent = self
        self.pending = (transaction_id, pair, guard)
        self.due = self._next(now)
        self.stats.consent_sent += 1
        pair.protocol.transport.sendto(request, pair.remote_addr)

    def response_received(self, data: bytes, addr: Any, guard: DatagramGuard) -> bool:
        """Whether ``data``, which came to ``guard``'s socket from ``addr``, answered the
        pending check (then it is consumed, success or not)."""
        pending = self.pending
        if pending is None:
            return False
        transaction_id, pair, sent_on = pending
        if guard is not sent_on or pair.remote_addr != (addr[0], addr[1]):
            return False
        password = self.connection.remote_password
        if not password:
            return False
        verdict = icecheck.response_verdict(data, transaction_id, password.encode())
        if verdict is None:
            return False
        self.pending = None
        if verdict:
            self.stats.consent_answered += 1
            self.last_ok = asyncio.get_running_loop().time()
        return True

    def _expire(self) -> None:
        self.stop()
        self.stats.consent_expired += 1
        connection = self.connection
        logger.info("%s consent to send expired (no answer for %.0f s)", connection, self.expiry)
        connection._query_consent_task = None
        closing = asyncio.ensure_future(connection.close())
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)


def _consent(connection: Any) -> None:
    """Start the relay's own consent checks on ``connection`` (once)."""
    if CHECK_ANSWER and "_parley_consent" not in connection.__dict__:
        consent = ConsentFreshness(connection)
        connection._parley_consent = consent
        consent.start()


class DatagramGuard:
    """Wraps one aioice ``StunProtocol.datagram_received``: drops empty datagrams, counts and
    drops STUN that aioice cannot parse, answers the nominated pair's connectivity checks
    (:class:`CheckAnswer`), feeds RTP to the fast path when installed, and never lets an
    exception escape into aioice or the event loop."""

    __slots__ = ("stock", "fast", "checks", "consent", "stats", "_received", "transport")

    def __init__(
        self, stock: Callable[[bytes, Any], None], stats: DatagramStats = DATAGRAMS
    ) -> None:
        self.stock = stock
        self.fast: FastReceive | None = None
        self.checks: CheckAnswer | None = None
        self.consent: ConsentFreshness | None = None
        """The connection's own consent checks, once one went out on this socket."""
        self.stats = stats
        self._received = 0
        self.transport: Any = None
        """The batched socket whose reader hands SRTP packets to ``fast.taker``, or None."""

    @property
    def received(self) -> int:
        """Datagrams that arrived, whatever they were (the dead-leg watchdog reads it)."""
        transport = self.transport
        return self._received + (transport.taken if transport is not None else 0)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._received += 1
        try:
            fast = self.fast
            # RTP (not RTCP: RFC 5761 §4 payload types 192-223) once SRTP keys exist
            if (
                fast is not None
                and len(data) > 12
                and 127 < data[0] < 192
                and not 191 < data[1] < 224
                and fast.dtls._rx_srtp is not None
            ):
                fast.receive(data)
            elif not data:
                self.stats.empty += 1
                self.stats.rejected("empty", addr)
            elif len(data) >= 20 and data[0] == 0 and data[1] == 1 and self.checks is not None:
                # a STUN Binding request: answered here when it checks the nominated pair
                if self.checks.answer(data, addr):
                    self.stats.checks_answered += 1
                else:
                    self.stock(data, addr)
            elif (
                len(data) >= 20
                and data[0] == 1
                and (data[1] == 1 or data[1] == 0x11)
                and self.consent is not None
                and self.consent.response_received(data, addr, self)
            ):
                pass  # the answer to our own consent check
            else:
                self.stock(data, addr)
        except struct.error:
            # aioice's parse_message on a STUN message with a malformed attribute
            self.stats.malformed_stun += 1
            self.stats.rejected("malformed STUN", addr)
        except Exception:
            self.stats.failed(addr)


def _guard(protocol: Any) -> DatagramGuard:
    guard: DatagramGuard | None = protocol.__dict__.get("_parley_guard")
    if guard is None:
        guard = DatagramGuard(_attr(protocol, "datagram_received"))
        guard.checks = CheckAnswer(protocol) if CHECK_ANSWER else None
        protocol._parley_guard = guard
        protocol.datagram_received = guard.datagram_received
    return guard


def _connections(pc: RTCPeerConnection) -> list[tuple[RTCDtlsTransport, Any]]:
    out = []
    for dtls in _attr(pc, _PC_DTLS_TRANSPORTS):
        out.append((dtls, _attr(_attr(dtls, "transport"), "_connection")))
    return out


def guard_datagrams(pc: RTCPeerConnection) -> None:
    """Guard every media socket of ``pc`` (call after each setLocalDescription)."""
    for _, connection in _connections(pc):
        for protocol in _attr(connection, "_protocols"):
            _guard(protocol)
        _consent(connection)


def datagrams_received(pc: RTCPeerConnection) -> int:
    """Datagrams that arrived on ``pc``'s guarded media sockets so far."""
    total = 0
    for _, connection in _connections(pc):
        for protocol in _attr(connection, "_protocols"):
            guard = protocol.__dict__.get("_parley_guard")
            if guard is not None:
                total += guard.received
    return total


def install_fast_receive(pc: RTCPeerConnection) -> None:
    """Guard ``pc``'s sockets and divert its incoming RTP to the fast path (call after
    setLocalDescription, when the sockets exist; again after each negotiation, to pick up new
    header extension ids)."""
    ids: dict[str, int] = {}
    for transceiver in pc.getTransceivers():
        for ext in transceiver_header_extensions(transceiver):
            ids[ext.uri] = ext.id
    for dtls, connection in _connections(pc):
        fast: FastReceive | None = connection.__dict__.get("_parley_fast")
        if fast is None:
            _attr(dtls, "_rx_srtp")
            _attr(dtls, "_rtp_router")
            fast = FastReceive(dtls)
            connection._parley_fast = fast
        fast.abs_send_time_id = ids.get(ABS_SEND_TIME_URI, 0)
        fast.audio_level_id = ids.get(AUDIO_LEVEL_URI, 0)
        _consent(connection)
        for protocol in _attr(connection, "_protocols"):
            guard = _guard(protocol)
            guard.fast = fast
            transport = getattr(protocol, "transport", None)
            if fast.taker is not None and isinstance(transport, udp.BatchedDatagramTransport):
                transport.fast = fast.taker
                guard.transport = transport


def fast_sender(dtls: RTCDtlsTransport) -> Callable[[bytes], None]:
    """A synchronous ``send(data)`` for serialised RTP/RTCP on ``dtls``: SRTP protect and
    ``sendto`` on the nominated pair's socket (aioice's TURN transport frames it itself).
    Raises ``ConnectionError`` when not connected, :class:`HookError` when aiortc changed."""
    cache: list[Any] = [None, None, None]  # the nominated pair, its transport, remote address
    for name in ("_tx_srtp", "_state", "transport"):
        _attr(dtls, name)

    def send(data: bytes) -> None:
        try:
            srtp = dtls._tx_srtp
            state = dtls._state
            nominated = dtls.transport._connection._nominated
        except AttributeError as exc:
            raise HookError(f"the fast sender lost an aiortc attribute: {exc}") from exc
        if srtp is None or state != State.CONNECTED:
            raise ConnectionError("not connected")
        pair = nominated.get(1)
        if pair is not cache[0]:
            if pair is None:
                raise ConnectionError("no nominated candidate pair")
            cache[:] = [pair, _attr(_attr(pair, "protocol"), "transport"), pair.remote_addr]
        transport = cache[1]
        out = srtp.protect_rtcp(data) if 191 < data[1] < 224 else srtp.protect(data)
        closing = getattr(transport, "is_closing", None)  # aioice's TURN transport has none
        if closing is not None and closing():
            raise ConnectionError("socket closed")
        transport.sendto(out, cache[2])

    return send


def srtp_keys(dtls: RTCDtlsTransport) -> tuple[int, bytes, bytes]:
    """(libsrtp profile, outbound key+salt, inbound key+salt) of a connected DTLS transport,
    derived from its TLS session exactly as aiortc's ``RTCDtlsTransport._setup_srtp`` does (RFC
    5764 §4.2), for the compiled packet path's own SRTP contexts."""
    ssl = _attr(dtls, "_ssl")
    role = _attr(dtls, "_role")
    selected = ssl.get_selected_srtp_profile()
    for profile in _attr(dtls, "_srtp_profiles"):
        if profile.openssl_profile == selected:
            break
    else:
        raise HookError(f"RTCDtlsTransport._srtp_profiles has no {selected!r}")
    view = ssl.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
    )
    first, second = profile.get_key_and_salt(view, 0), profile.get_key_and_salt(view, 1)
    tx, rx = (second, first) if role == "server" else (first, second)
    return profile.libsrtp_profile, tx, rx


def rx_session(dtls: RTCDtlsTransport) -> Any:
    """The inbound SRTP context of the fast receive path: aiortc's own (pure Python) or one of
    the compiled path's, from the same keys."""
    session = _attr(dtls, "_rx_srtp")
    if not accel.COMPILED:
        return session
    profile, _, rx = srtp_keys(dtls)
    return accel.Session(profile, rx, False)


def fast_tx(dtls: RTCDtlsTransport) -> Any:
    """An :class:`accel.Tx` for the nominated pair of a connected ``dtls``, or None when it is
    not connected or its pair has no OS socket (aioice's TURN transport): those legs keep the
    Python path (:func:`fast_sender`)."""
    srtp = _attr(dtls, "_tx_srtp")
    if srtp is None or _attr(dtls, "_state") != State.CONNECTED:
        return None
    nominated = _attr(_attr(_attr(dtls, "transport"), "_connection"), "_nominated")
    pair = nominated.get(1)
    if pair is None:
        return None
    transport = _attr(_attr(pair, "protocol"), "transport")
    # a UDP socket of our own (uvloop's or asyncio's transport); aioice's TurnTransport has none
    get_extra_info = getattr(transport, "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    if sock is None or not callable(getattr(transport, "is_closing", None)):
        return None
    host, port = _attr(pair, "remote_addr")[:2]
    if accel.COMPILED:
        profile, tx, _ = srtp_keys(dtls)
        session: Any = accel.Session(profile, tx, True)
    else:
        session = srtp
    return accel.Tx(
        session, sock.fileno(), host, port, dtls, State.CONNECTED, srtp, nominated, pair, transport
    )


# --- ICE host candidates ---------------------------------------------------------------------


def configure_host_candidates(
    pc: RTCPeerConnection, addresses: list[str], port_range: tuple[int, int] | None
) -> None:
    """Make ``pc`` gather host candidates on ``addresses`` only (loopback allowed), binding
    UDP ports in ``port_range`` when given. Call before ``setLocalDescription``."""
    for ice_transport in _attr(pc, _PC_ICE_TRANSPORTS):
        connection = _attr(_attr(ice_transport, "iceGatherer"), "_connection")
        if connection.__dict__.get("_parley_hosts") is not None:
            continue
        connection._parley_hosts = list(addresses)
        connection.get_component_candidates = _host_candidates_factory(
            connection, list(addresses), port_range
        )


def _host_candidates_factory(
    connection: Any, addresses: list[str], port_range: tuple[int, int] | None
) -> Callable[..., Awaitable[list[Candidate]]]:
    from aioice.ice import StunProtocol

    stock = _attr(connection, "get_component_candidates")
    protocols = _attr(connection, "_protocols")

    async def get_component_candidates(
        component: int,
        addresses: list[str] | None = None,
        timeout: int = 5,  # noqa: ASYNC109
    ) -> list[Candidate]:
        if port_range is None and (
            not udp.AVAILABLE or connection.stun_server or connection.turn_server
        ):
            # aioice binds port 0 on our addresses and still gathers STUN/TURN candidates
            return list(await stock(component=component, addresses=wanted, timeout=timeout))
        loop = asyncio.get_running_loop()
        candidates = []
        for address in wanted:
            try:
                transport, protocol = await _bind_udp(
                    loop, lambda: StunProtocol(connection), address, port_range
                )
            except OSError as exc:
                logger.warning("could not bind a media port on %s: %s", address, exc)
                continue
            _guard(protocol)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
            host, port = transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            candidates.append(protocol.local_candidate)
            protocols.append(protocol)
        return candidates

    wanted = addresses
    return get_component_candidates


async def _bind_udp(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], Any],
    address: str,
    port_range: tuple[int, int] | None,
) -> tuple[asyncio.DatagramTransport, Any]:
    bind: Callable[..., Awaitable[tuple[Any, Any]]]
    if udp.AVAILABLE:
        # the compiled path reads the socket itself, in batches (relay/udp.py)
        bind = functools.partial(udp.create_batched_endpoint, loop)
    else:
        bind = loop.create_datagram_endpoint
    if port_range is None:
        return await bind(factory, local_addr=(address, 0))  # type: ignore[no-any-return]
    low, high = port_range
    ports = list(range(low, high + 1))
    random.shuffle(ports)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    last: OSError | None = None
    for port in ports[:256]:
        try:
            return await bind(  # type: ignore[no-any-return]
                factory, local_addr=(address, port), family=family
            )
        except OSError as exc:
            last = exc
    raise OSError(f"no free UDP port in {low}-{high} on {address}") from last


# --- the start-up check ----------------------------------------------------------------------

_CLASS_METHODS: dict[type, tuple[str, ...]] = {
    RTCRtpReceiver: (
        "_handle_rtp_packet",
        "_handle_rtcp_packet",
        "receive",
        "_send_rtcp",
        "_send_rtcp_nack",
        "_send_rtcp_pli",
        _RECEIVER_STOP_DECODER,
    ),
    RTCRtpSender: ("_handle_rtcp_packet", "_send_rtcp", "replaceTrack"),
    RTCDtlsTransport: ("_send_rtp",),
    RTCPeerConnection: (_PC_CONNECT,),
}
"""Methods the relay calls or replaces, by class (instance attributes are checked on real
objects by :func:`probe`)."""

_checked = False
_checked_lock = threading.Lock()


class _ProbeTrack(MediaStreamTrack):
    """A track that never yields a frame (the probe's sender never encodes)."""

    kind = "video"

    async def recv(self) -> NoReturn:
        await asyncio.sleep(3600)
        raise MediaStreamError


def check_compatibility() -> None:
    """Raise :class:`HookError` unless every private attribute the relay uses is where it
    expects it, on real connected objects (see :func:`probe`). Runs once per process, in a
    short-lived thread with its own event loop, so that it can be called from anywhere."""
    global _checked
    with _checked_lock:
        if _checked:
            return
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(probe())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=run, name="parley-aiortc-probe")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        _checked = True


def _require(obj: object, name: str, kind: type | tuple[type, ...] | None = None) -> Any:
    value = _attr(obj, name)
    if kind is not None and not isinstance(value, kind):
        raise HookError(f"{type(obj).__name__}.{name} is {type(value).__name__}, expected {kind}")
    return value


async def probe(timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Connect a throwaway pair of peer connections on loopback, hook them as the relay does,
    check every attribute the relay touches on the real objects and send one RTP packet
    through the fast sender and the fast receive path. Raises :class:`HookError`."""
    for cls, names in _CLASS_METHODS.items():
        for name in names:
            if not callable(getattr(cls, name, None)):
                raise HookError(f"aiortc {cls.__name__} has no method {name}")
    config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    offerer, answerer = PeerConnection(config), PeerConnection(config)
    _attr(answerer, _PC_IS_CLOSED)
    try:
        await asyncio.wait_for(_probe_pair(offerer, answerer), timeout)
    except TimeoutError:
        raise HookError("the aiortc probe's loopback peer connections did not connect") from None
    except HookError:
        raise
    except Exception as exc:
        raise HookError(f"the aiortc probe failed: {exc!r}") from exc
    finally:
        # bounded: with a broken aiortc, close() can wait forever for a task that died
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(offerer.close(), answerer.close()), timeout)


async def _probe_pair(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    from aioice.ice import CandidatePair, StunProtocol

    sending = offerer.addTransceiver(_ProbeTrack(), direction="sendonly")
    set_stream_id(sending.sender, "probe")
    configure_host_candidates(offerer, ["127.0.0.1"], None)
    await offerer.setLocalDescription(await offerer.createOffer())
    guard_datagrams(offerer)
    await answerer.setRemoteDescription(
        RTCSessionDescription(sdp=offerer.localDescription.sdp, type="offer")
    )
    receiving = answerer.getTransceivers()[0]
    receiver = receiving.receiver
    if transceiver_offer_direction(receiving) != "recvonly":
        raise HookError("RTCRtpTransceiver._offerDirection does not say recvonly")
    got: list[RtpIn] = []

    async def on_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        pass

    async def on_rtcp(packet: AnyRtcpPacket) -> None:
        pass

    hook_receiver(receiver, on_rtp, on_rtcp, {}, got.append)
    configure_host_candidates(answerer, ["127.0.0.1"], None)
    await answerer.setLocalDescription(await answerer.createAnswer())
    install_fast_receive(answerer)
    await offerer.setRemoteDescription(
        RTCSessionDescription(sdp=answerer.localDescription.sdp, type="answer")
    )
    for _ in range(1000):  # bounded by the caller's timeout too
        if offerer.connectionState == answerer.connectionState == "connected":
            break
        await asyncio.sleep(0.01)

    for pc in (offerer, answerer):
        for ice in _require(pc, _PC_ICE_TRANSPORTS, set):
            connection = _require(_require(ice, "iceGatherer"), "_connection")
            _require(connection, "_protocols", list)
            if not callable(_attr(connection, "get_component_candidates")):
                raise HookError("aioice Connection.get_component_candidates is not callable")
        for dtls, connection in _connections(pc):
            if not dtls_is_connected(dtls):
                raise HookError("RTCDtlsTransport._state is not State.CONNECTED when connected")
            _require(dtls, "_rx_srtp", pylibsrtp.Session)
            _require(dtls, "_tx_srtp", pylibsrtp.Session)
            router = _require(dtls, "_rtp_router")
            _require(router, "ssrc_table", dict)
            _require(router, "senders", dict)
            for name in ("route_rtp", "register_sender", "unregister_sender"):
                if not callable(_attr(router, name)):
                    raise HookError(f"aiortc RtpRouter.{name} is not callable")
            pair = _require(connection, "_nominated", dict).get(1)
            if not isinstance(pair, CandidatePair):
                raise HookError("aioice Connection._nominated has no pair for component 1")
            _require(pair, "remote_addr", tuple)
            protocol = _require(pair, "protocol", StunProtocol)
            _require(protocol, "transport")
            _require(protocol, "local_candidate", Candidate)
            for protocol in _attr(connection, "_protocols"):
                if not isinstance(protocol.__dict__.get("_parley_guard"), DatagramGuard):
                    raise HookError("a media socket of the probe is not guarded")

    sender = sending.sender
    _require(sender, "_stream_id", str)
    ssrc, _ = sender_ssrcs(sender)
    if not isinstance(ssrc, int):
        raise HookError("RTCRtpSender._ssrc is no longer an int")
    ssrc, rtx_ssrc = sender_ssrcs(sender)
    codecs = transceiver_codecs(receiving)
    if not codecs or codecs[0].payloadType is None:
        raise HookError("RTCRtpTransceiver._codecs holds no negotiated codec")
    transceiver_header_extensions(sending)
    if not isinstance(receiver_rtcp_ssrc(receiver), int):
        raise HookError(f"RTCRtpReceiver.{_RECEIVER_RTCP_SSRC} was not assigned")

    async def reports(packets: list[AnyRtcpPacket]) -> None:
        pass

    hook_sender(sender, on_rtcp, reports, lambda: None)
    if sender_cname(sender) is None:
        raise HookError(f"RTCRtpSender.{_SENDER_CNAME} is not the connection's CNAME string")
    register_ssrcs(receiver, [ssrc, rtx_ssrc])

    # one packet through the fast sender, the socket guard and the fast receive path
    packet = RtpPacket(
        payload_type=codecs[0].payloadType, sequence_number=1, timestamp=1, ssrc=ssrc
    )
    packet.payload = b"\x10\x00\x9d\x01\x2a"
    send = fast_sender(sending.sender.transport)
    for _ in range(200):
        send(packet.serialize())
        await asyncio.sleep(0.01)
        if got:
            break
    if not got or got[0].ssrc != ssrc:
        raise HookError("a packet sent through the fast path did not reach the receiver hook")
    # ... and one through the packet path's own sender (compiled: its own SRTP contexts, made
    # from the DTLS keying material, must agree with the peer's)
    tx = fast_tx(sending.sender.transport)
    if tx is None or not tx.valid:
        raise HookError("the fast sender found no socket on the probe's nominated pair")
    before = len(got)
    for seq in range(2, 200):
        packet.sequence_number = seq
        tx.send(packet.serialize())
        await asyncio.sleep(0.01)
        if len(got) > before:
            break
    if len(got) == before or got[-1].sequence_number < 2:
        raise HookError(
            f"a packet sent through the {accel.IMPLEMENTATION} packet path did not arrive"
        )
    # the receiver has started (it routes our payload type): our receive hook stopped its decoder
    if _attr(receiver, _RECEIVER_DECODER_THREAD) is not None:
        raise HookError("the receiver's decoder thread was not stopped")

    # aiortc's receiver report takes what our statistics give (as its RTCP loop builds it)
    nacks = accel.MissingPackets()
    stats = accel.ReceiveStatistics(90000)
    for seq in (1, 2, 5):
        nacks.add(seq)
        stats.add(seq, seq, time.time())
    if nacks.missing != {3, 4}:
        raise HookError(f"the {accel.IMPLEMENTATION} NACK generator lost track of packets 3, 4")
    report = RtcpReceiverInfo(
        ssrc=ssrc,
        fraction_lost=stats.fraction_lost,
        packets_lost=stats.packets_lost,
        highest_sequence=stats.max_seq,
        jitter=stats.jitter,
        lsr=0,
        dlsr=0,
    )
    parsed = RtcpRrPacket.parse(bytes(RtcpRrPacket(ssrc=1, reports=[report]))[4:], 1)
    if (parsed.reports[0].packets_lost, parsed.reports[0].highest_sequence) != (2, 5):
        raise HookError("aiortc's receiver report no longer takes our receive statistics")


# --- reports (issue 9) -------------------------------------------------------------------------


def nominated_pair(pc: RTCPeerConnection) -> tuple[Candidate, Candidate] | None:
    """(local, remote) candidates of the pair ICE nominated on ``pc``'s first transport (None
    before ICE has nominated one)."""
    for _, connection in _connections(pc):
        pair = _attr(connection, "_nominated").get(1)
        if pair is not None:
            return _attr(pair, "local_candidate"), _attr(pair, "remote_candidate")
    return None
