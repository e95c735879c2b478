"""Every use of aiortc's and aioice's private attributes lives here, and only here.

aiortc always decodes what it receives; a forwarding relay needs the decrypted RTP packets
instead. These hooks are written against aiortc 1.16 / aioice 0.13 (pinned in pyproject.toml).
``tests/relay/test_aiortc_hooks.py`` fails loudly when a new release renames what we use.

What we rely on:
- ``RTCDtlsTransport._rtp_router`` routes a decrypted ``RtpPacket`` to the receiver's
  ``_handle_rtp_packet(packet, arrival_time_ms)`` and RTCP to ``_handle_rtcp_packet(packet)`` of
  receivers and senders, by attribute lookup: instance attributes override them.
- ``RTCDtlsTransport._send_rtp(data)`` SRTP-protects and sends serialised RTP/RTCP.
- ``RTCRtpReceiver``: ``_send_rtcp``, ``_send_rtcp_nack``, ``_send_rtcp_pli`` (use the RTCP SSRC
  the peer connection assigned), the name-mangled ``__remote_streams`` statistics its RTCP loop
  turns into receiver reports, and ``__stop_decoder`` (we never decode).
- ``RTCRtpSender``: ``_ssrc``, ``_rtx_ssrc``, ``_handle_rtcp_packet`` and ``_send_rtcp`` (its RTCP
  loop hands sender reports to the latter).
- ``RTCRtpTransceiver._codecs`` / ``_headerExtensions``: the negotiated parameters.
- aioice ``Connection.get_component_candidates``: binds host candidates; we bind our own
  addresses and port range instead of every non-loopback interface.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pylibsrtp
from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtp import AnyRtcpPacket, RtpPacket

from .rtp import parse_rtp

logger = logging.getLogger(__name__)

RtpHandler = Callable[[RtpPacket, int], Awaitable[None]]
RtcpHandler = Callable[[AnyRtcpPacket], Awaitable[None]]
RtcpSender = Callable[[list[AnyRtcpPacket]], Awaitable[None]]

_RECEIVER_STREAMS = "_RTCRtpReceiver__remote_streams"
_RECEIVER_STOP_DECODER = "_RTCRtpReceiver__stop_decoder"
_PC_ICE_TRANSPORTS = "_RTCPeerConnection__iceTransports"
_PC_DTLS_TRANSPORTS = "_RTCPeerConnection__dtlsTransports"
UDP_BUFFER = 1 << 20
"""Socket buffers of the media sockets we bind: bursts wait in the kernel, overload drops there."""
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


class HookError(RuntimeError):
    """aiortc no longer has what the relay reaches into: check relay/_aiortc.py."""


def check_compatibility() -> None:
    """Raise :class:`HookError` unless every private attribute we use is where we expect it."""
    required = {
        RTCRtpReceiver: [
            "_handle_rtp_packet",
            "_handle_rtcp_packet",
            "_send_rtcp",
            "_send_rtcp_nack",
            "_send_rtcp_pli",
            "receive",
            _RECEIVER_STOP_DECODER,
        ],
        RTCRtpSender: ["_handle_rtcp_packet", "_send_rtcp", "send", "_run_rtcp"],
        RTCDtlsTransport: ["_send_rtp", "_handle_rtp_data", "_handle_rtcp_data"],
    }
    for cls, names in required.items():
        for name in names:
            if not hasattr(cls, name):
                raise HookError(f"aiortc {cls.__name__} has no {name}")
    from aioice import Connection

    if not hasattr(Connection, "get_component_candidates"):
        raise HookError("aioice Connection has no get_component_candidates")


# --- receiving side (a producer) -------------------------------------------------------------


def hook_receiver(
    receiver: RTCRtpReceiver,
    on_rtp: RtpHandler,
    on_rtcp: RtcpHandler,
    streams: dict[int, Any],
    on_fast_rtp: Callable[[Any], None] | None = None,
) -> None:
    """Divert ``receiver``'s decrypted RTP to ``on_rtp`` (aiortc's path) and ``on_fast_rtp``
    (the fast path, see :func:`install_fast_receive`), its RTCP (sender reports, BYE) to
    ``on_rtcp`` as well as the stock handler; its receiver reports are built from ``streams``;
    its decoder thread is stopped as soon as it starts."""
    stock_rtcp = receiver._handle_rtcp_packet
    stock_receive = receiver.receive

    async def handle_rtcp(packet: AnyRtcpPacket) -> None:
        await stock_rtcp(packet)
        await on_rtcp(packet)

    async def receive(parameters: Any) -> None:
        await stock_receive(parameters)
        stop_decoder(receiver)

    receiver._handle_rtp_packet = on_rtp  # type: ignore[method-assign,assignment]
    receiver._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign,assignment]
    receiver.receive = receive  # type: ignore[method-assign,assignment]
    if on_fast_rtp is not None:
        receiver._parley_forward = on_fast_rtp  # type: ignore[attr-defined]
    setattr(receiver, _RECEIVER_STREAMS, streams)


def stop_decoder(receiver: RTCRtpReceiver) -> None:
    getattr(receiver, _RECEIVER_STOP_DECODER)()


def register_ssrcs(receiver: RTCRtpReceiver, ssrcs: Iterable[int]) -> None:
    """Route these SSRCs to ``receiver`` (a re-offer may bring new ones to a started receiver)."""
    table = receiver.transport._rtp_router.ssrc_table
    for ssrc in ssrcs:
        table[ssrc] = receiver


async def send_receiver_rtcp(receiver: RTCRtpReceiver, packet: AnyRtcpPacket) -> None:
    await receiver._send_rtcp(packet)


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await receiver._send_rtcp_pli(media_ssrc)


async def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
    await receiver._send_rtcp_nack(media_ssrc, lost)


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    value = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
    return value if isinstance(value, int) else None


# --- sending side (a consumer) ---------------------------------------------------------------


def hook_sender(sender: RTCRtpSender, on_rtcp: RtcpHandler, send_reports: RtcpSender) -> None:
    """Answer the subscriber's RTCP ourselves (NACK, PLI, RR) and let ``send_reports`` rewrite
    what the sender's RTCP loop sends (its SR knows nothing of forwarded packets)."""
    sender._handle_rtcp_packet = on_rtcp  # type: ignore[method-assign,assignment]
    sender._send_rtcp = send_reports  # type: ignore[method-assign,assignment]


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """The msid stream a sender's track is announced in (one per remote participant, so that
    browsers lip-sync each participant's audio with that participant's video)."""
    sender._stream_id = stream_id


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    return sender._ssrc, sender._rtx_ssrc


def transceiver_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def transceiver_header_extensions(
    transceiver: RTCRtpTransceiver,
) -> list[RTCRtpHeaderExtensionParameters]:
    return list(transceiver._headerExtensions)


def transceiver_offer_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """The direction the remote offer asked for, seen from our side ("recvonly", ...)."""
    return getattr(transceiver, "_offerDirection", None)


def dtls_is_connected(dtls: RTCDtlsTransport) -> bool:
    return dtls._state == State.CONNECTED


async def dtls_send_rtp(dtls: RTCDtlsTransport, data: bytes) -> None:
    await dtls._send_rtp(data)


# --- the fast path -------------------------------------------------------------------------------
#
# aiortc hands every datagram from aioice's socket callback to an asyncio.Queue, wakes the DTLS
# transport's task, unprotects, parses every header extension and awaits the receiver; sending
# goes down five coroutine layers to ``transport.sendto``. For forwarded media the relay does
# the same work synchronously, in the socket callback: RTP only, once DTLS is up; RTCP, STUN
# and DTLS still take aiortc's path.


class FastReceive:
    """Per ICE connection: SRTP-unprotect, parse and route RTP straight to the receiver's
    ``_parley_forward(packet)``."""

    __slots__ = ("dtls", "abs_send_time_id", "audio_level_id", "unprotect_errors")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self.abs_send_time_id = 0
        self.audio_level_id = 0
        self.unprotect_errors = 0

    def receive(self, data: bytes) -> None:
        dtls = self.dtls
        try:
            plain = dtls._rx_srtp.unprotect(data)
        except pylibsrtp.Error:
            self.unprotect_errors += 1
            return
        try:
            packet = parse_rtp(plain, self.abs_send_time_id, self.audio_level_id)
        except ValueError:
            return
        receiver = dtls._rtp_router.route_rtp(packet)  # type: ignore[arg-type]
        if receiver is not None:
            forward = getattr(receiver, "_parley_forward", None)
            if forward is not None:
                forward(packet)


def install_fast_receive(pc: RTCPeerConnection) -> None:
    """Divert ``pc``'s incoming RTP to the fast path (call after setLocalDescription, when the
    sockets exist; again after each negotiation, to pick up new header extension ids)."""
    ids: dict[str, int] = {}
    for transceiver in pc.getTransceivers():
        for ext in transceiver._headerExtensions:
            ids[ext.uri] = ext.id
    for dtls in getattr(pc, _PC_DTLS_TRANSPORTS):
        connection = dtls.transport._connection
        fast: FastReceive | None = getattr(connection, "_parley_fast", None)
        if fast is None:
            fast = FastReceive(dtls)
            connection._parley_fast = fast
        fast.abs_send_time_id = ids.get(ABS_SEND_TIME_URI, 0)
        fast.audio_level_id = ids.get(AUDIO_LEVEL_URI, 0)
        for protocol in connection._protocols:
            if getattr(protocol, "_parley_fast", None) is None:
                protocol._parley_fast = fast
                protocol.datagram_received = _fast_datagram_received(
                    fast, protocol.datagram_received
                )


def _fast_datagram_received(
    fast: FastReceive, stock: Callable[[bytes, Any], None]
) -> Callable[[bytes, Any], None]:
    def datagram_received(data: bytes, addr: Any) -> None:
        # RTP (not RTCP: RFC 5761 §4 payload types 192-223) once SRTP keys exist
        if (
            len(data) > 12
            and 127 < data[0] < 192
            and not 191 < data[1] < 224
            and fast.dtls._rx_srtp is not None
        ):
            fast.receive(data)
        else:
            stock(data, addr)

    return datagram_received


def fast_sender(dtls: RTCDtlsTransport) -> Callable[[bytes], None]:
    """A synchronous ``send(data)`` for serialised RTP/RTCP on ``dtls``: SRTP protect and
    ``sendto`` on the nominated pair's socket (aioice's TURN transport frames it itself).
    Raises ``ConnectionError`` when not connected."""
    cache: list[Any] = [None, None, None]  # the nominated pair, its transport, remote address

    def send(data: bytes) -> None:
        srtp = dtls._tx_srtp
        if srtp is None or dtls._state != State.CONNECTED:
            raise ConnectionError("not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is not cache[0]:
            if pair is None:
                raise ConnectionError("no nominated candidate pair")
            cache[:] = [pair, pair.protocol.transport, pair.remote_addr]
        transport = cache[1]
        out = srtp.protect_rtcp(data) if 191 < data[1] < 224 else srtp.protect(data)
        closing = getattr(transport, "is_closing", None)  # aioice's TURN transport has none
        if closing is not None and closing():
            raise ConnectionError("socket closed")
        transport.sendto(out, cache[2])

    return send


# --- ICE host candidates ---------------------------------------------------------------------


def configure_host_candidates(
    pc: RTCPeerConnection, addresses: list[str], port_range: tuple[int, int] | None
) -> None:
    """Make ``pc`` gather host candidates on ``addresses`` only (loopback allowed), binding
    UDP ports in ``port_range`` when given. Call before ``setLocalDescription``."""
    for ice_transport in getattr(pc, _PC_ICE_TRANSPORTS):
        connection = ice_transport.iceGatherer._connection
        if getattr(connection, "_parley_hosts", None) is not None:
            continue
        connection._parley_hosts = list(addresses)
        connection.get_component_candidates = _host_candidates_factory(
            connection, list(addresses), port_range
        )


def _host_candidates_factory(
    connection: Any, addresses: list[str], port_range: tuple[int, int] | None
) -> Callable[..., Awaitable[list[Candidate]]]:
    from aioice.ice import StunProtocol

    stock = connection.get_component_candidates

    async def get_component_candidates(
        component: int,
        addresses: list[str] | None = None,
        timeout: int = 5,  # noqa: ASYNC109
    ) -> list[Candidate]:
        if port_range is None:
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
            connection._protocols.append(protocol)
        return candidates

    wanted = addresses
    return get_component_candidates


async def _bind_udp(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], Any],
    address: str,
    port_range: tuple[int, int] | None,
) -> tuple[asyncio.DatagramTransport, Any]:
    if port_range is None:
        return await loop.create_datagram_endpoint(factory, local_addr=(address, 0))
    low, high = port_range
    ports = list(range(low, high + 1))
    random.shuffle(ports)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    last: OSError | None = None
    for port in ports[:256]:
        try:
            return await loop.create_datagram_endpoint(
                factory, local_addr=(address, port), family=family
            )
        except OSError as exc:
            last = exc
    raise OSError(f"no free UDP port in {low}-{high} on {address}") from last


# --- reports (issue 9) -------------------------------------------------------------------------


def nominated_pair(pc: RTCPeerConnection) -> tuple[Candidate, Candidate] | None:
    """(local, remote) candidates of the pair ICE nominated on ``pc``'s first transport."""
    for dtls in getattr(pc, _PC_DTLS_TRANSPORTS):
        pair = dtls.transport._connection._nominated.get(1)
        if pair is not None:
            return pair.local_candidate, pair.remote_candidate
    return None
