"""The per-packet path behind one small interface, compiled or pure Python (the way aiohttp, yarl
and uvloop ship an optional accelerator).

- :class:`Session`: one SRTP context (``protect``/``unprotect`` of RTP, and
  ``unprotect_parse``: unprotect and :func:`parse` in one call) made from the keying
  material of a DTLS transport. The compiled one is libsrtp itself and works in place in one
  buffer with trailer room; the pure one is pylibsrtp.
- :class:`Tx`: one subscriber leg's output: an outbound session, the nominated ICE pair's socket
  and address, and what says whether that pair is still the one to send on (``valid``);
  ``send(data)`` protects and sends one serialised RTP packet.
- :class:`Route`: one consumer's rewrite (SSRC, payload type, ``seq_offset``/``ts_offset``,
  mid / abs-send-time / audio-level extension ids), its NACK history (the forwarded packets,
  by outgoing sequence number), its counters (``packets``, ``octets``, ``last``) and its
  ``tx``. ``remember`` is the one place a forwarded packet is counted.
- :data:`FastIn` (compiled only, else None): what a :data:`Reader` hands SRTP packets to,
  straight from its buffer: unprotect in place, parse, route through aiortc's tables, and the
  receiver's ``_parley_forward``, with no bytes object and no Python frame in between.
- :data:`Reader` (compiled only, else None): a media socket's callback, one ``recvmmsg`` of up
  to 32 datagrams per wakeup; the fan-outs of a batch are sent at its end with one ``sendmmsg``
  per destination and UDP GSO for runs of equal-size packets (relay/udp.py). ``io_stats()``
  counts its system calls; ``PARLEY_NO_GSO=1`` sends each packet of a run alone.
- :class:`ReceiveStatistics` and :class:`MissingPackets`: one upstream SSRC's receive
  statistics and NACK generator (relay/rtpstats.py: what aiortc's ``StreamStatistics`` and
  ``NackGenerator`` compute, read by aiortc's receiver reports and relay/quality.py).
- :class:`Inbound`: one producer's common case in one call (``receive(packet, consumers)``):
  statistics, NACK generator, counters and the fan-out of a media packet; ``IN_*`` flags say
  what the producer must still do in Python.
- :func:`fan_out`: for each consumer of one packet whose ``_route`` has a valid ``tx``: rewrite,
  remember, protect and send, all in one call; the consumers it could not serve (not synced
  yet, not connected, no OS socket) are returned for the Python path (``Consumer.send``).

The compiled implementation (relay/_accel.c) is used when it was built and imports (libsrtp2
present); ``PARLEY_PURE_PYTHON=1`` forces the pure one. Both produce the same bytes
(tests/relay/test_accel.py). :data:`IMPLEMENTATION` says which one runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import pylibsrtp

from .fanout import ConsumerView
from .quality import FORWARD_LATENCY, LatencyHistogram, vp8_resolution
from .rtp import RtpIn, RtpLike, parse_rtp, rewrite_rtp
from .rtpstats import PyMissingPackets, PyReceiveStatistics

if TYPE_CHECKING:
    from .consumer import Consumer

NTP_EPOCH_OFFSET = 2208988800


class _Srtp(Protocol):
    def protect(self, data: bytes) -> bytes: ...

    def unprotect(self, data: bytes) -> bytes: ...


# --- the pure-Python implementation ------------------------------------------------------------


class PySession:
    """An SRTP context (pylibsrtp), configured as aiortc configures its own."""

    __slots__ = ("_session",)

    def __init__(self, profile: int, key: bytes, outbound: bool) -> None:
        policy = pylibsrtp.Policy(
            key=key,
            ssrc_type=(
                pylibsrtp.Policy.SSRC_ANY_OUTBOUND
                if outbound
                else pylibsrtp.Policy.SSRC_ANY_INBOUND
            ),
            srtp_profile=profile,
        )
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        self._session = pylibsrtp.Session(policy)

    def protect(self, data: bytes) -> bytes:
        return self._session.protect(data)

    def unprotect(self, data: bytes) -> bytes:
        return self._session.unprotect(data)

    def unprotect_parse(
        self, data: bytes, abs_send_time_id: int, audio_level_id: int
    ) -> RtpIn | None:
        """Unprotect and parse one RTP packet: None when the decrypted packet is malformed,
        the SRTP error when SRTP refuses it."""
        return py_parse(self._session.unprotect(data), abs_send_time_id, audio_level_id)


def py_parse(data: bytes, abs_send_time_id: int, audio_level_id: int) -> RtpIn | None:
    """``relay.rtp.parse_rtp``, None instead of ``ValueError`` (the compiled ``parse``)."""
    try:
        return parse_rtp(data, abs_send_time_id, audio_level_id)
    except ValueError:
        return None


class PyTx:
    """One subscriber leg's output (pure Python): protect, then the transport's ``sendto``."""

    __slots__ = (
        "session",
        "fd",
        "addr",
        "dtls",
        "connected",
        "keyed_by",
        "nominated",
        "pair",
        "transport",
        "sent",
        "errors",
    )

    def __init__(
        self,
        session: _Srtp,
        fd: int,
        host: str,
        port: int,
        dtls: Any,
        connected: object,
        keyed_by: object,
        nominated: dict[int, Any],
        pair: object,
        transport: Any,
    ) -> None:
        self.session = session
        self.fd = fd
        self.addr = (host, port)
        self.dtls = dtls
        self.connected = connected
        self.keyed_by = keyed_by
        self.nominated = nominated
        self.pair = pair
        self.transport = transport
        self.sent = 0
        self.errors = 0

    @property
    def valid(self) -> bool:
        """Still connected with the same SRTP keys, on the same nominated pair, and its socket
        is open."""
        dtls = self.dtls
        return (
            dtls._state is self.connected
            and dtls._tx_srtp is self.keyed_by
            and self.nominated.get(1) is self.pair
            and not self.transport.is_closing()
        )

    def send(self, data: bytes) -> None:
        """Protect and send one RTP packet: ``ConnectionError`` when the leg is gone, the SRTP
        error when protecting fails (a broken leg: its consumer is dropped)."""
        if not self.valid:
            raise ConnectionError("not connected")
        out = self.session.protect(data)
        self.transport.sendto(out, self.addr)
        self.sent += 1

    def _protect_send(self, data: bytes) -> None:
        try:
            out = self.session.protect(data)
        except pylibsrtp.Error:
            self.errors += 1
            return
        self.transport.sendto(out, self.addr)
        self.sent += 1


class PyRoute:
    """One consumer's rewrite, NACK history and counters (pure Python)."""

    __slots__ = (
        "ssrc",
        "payload_type",
        "mid_element",
        "abs_send_time_id",
        "audio_level_id",
        "seq_offset",
        "ts_offset",
        "tx",
        "last",
        "packets",
        "octets",
        "_ring",
        "_ring_ast",
        "_mask",
    )

    def __init__(
        self,
        ssrc: int,
        payload_type: int,
        mid_element: bytes,
        abs_send_time_id: int,
        audio_level_id: int,
        history_size: int,
    ) -> None:
        if history_size < 1 or history_size & (history_size - 1):
            raise ValueError("bad route parameters")
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.mid_element = mid_element
        self.abs_send_time_id = abs_send_time_id
        self.audio_level_id = audio_level_id
        self.seq_offset = 0
        self.ts_offset = 0
        self.tx: PyTx | None = None
        self.last: RtpIn | None = None
        self.packets = 0
        self.octets = 0
        self._ring: list[RtpIn | None] = [None] * history_size
        self._ring_ast = [0] * history_size
        """The abs-send-time each kept packet went out with (a resend is the same packet)."""
        self._mask = history_size - 1

    def rewrite(self, packet: RtpLike, abs_send_time: int) -> bytes:
        """``packet`` for this consumer (``abs_send_time`` < 0: without abs-send-time)."""
        return rewrite_rtp(
            packet,
            self.ssrc,
            self.payload_type,
            self.seq_offset,
            self.ts_offset,
            self.mid_element,
            self.abs_send_time_id,
            abs_send_time,
            self.audio_level_id,
            packet.audio_level,  # type: ignore[attr-defined]
        )

    def remember(self, packet: RtpIn, abs_send_time: int) -> None:
        """Count a forwarded packet and keep it for NACKs (the one place per forwarded packet)."""
        slot = (packet.sequence_number + self.seq_offset) & 0xFFFF & self._mask
        self._ring[slot] = packet
        self._ring_ast[slot] = abs_send_time
        self.last = packet
        self.packets += 1
        self.octets += len(packet.payload)

    def history(self, seq: int) -> tuple[RtpIn, int] | None:
        """(packet, abs-send-time) forwarded with outgoing sequence number ``seq``, if kept."""
        slot = seq & 0xFFFF & self._mask
        packet = self._ring[slot]
        if packet is None or (packet.sequence_number + self.seq_offset) & 0xFFFF != seq & 0xFFFF:
            return None
        return packet, self._ring_ast[slot]

    def clear(self) -> None:
        self._ring = [None] * (self._mask + 1)


def py_fan_out(
    packet: RtpIn, consumers: Sequence[Consumer], abs_send_time: int
) -> list[Consumer] | None:
    """Forward ``packet`` to every consumer whose route can send; return the others."""
    slow: list[Consumer] | None = None
    for consumer in consumers:
        route: PyRoute | None = consumer._route  # type: ignore[assignment]
        tx = route.tx if route is not None else None
        if tx is None or not tx.valid:
            if slow is None:
                slow = [consumer]
            else:
                slow.append(consumer)
            continue
        data = route.rewrite(packet, abs_send_time)  # type: ignore[union-attr]
        route.remember(packet, abs_send_time)  # type: ignore[union-attr]
        tx._protect_send(data)
    return slow


# what Inbound.receive hands back to the producer (0: nothing left to do)
IN_PYTHON: Final = 1
"""Not the common case (another payload type or SSRC, no statistics yet): nothing was done,
the producer's Python path takes the packet."""
IN_NACK: Final = 2
"""Packets went missing before this one: send a NACK (``nack.missing``)."""
IN_QUALITY: Final = 4
"""``relay.quality`` needs this packet (a VP8 key frame's first packet, an audio level);
frame ends are counted in the inbound itself."""
IN_SLOW: Final = 8
"""Consumers were left to the Python path: ``slow``, to be sent with ``abs_send_time``."""
IN_SINKS: Final = 32
"""Recorders to write the packet to (``extra``, added by ``__call__``)."""

QUALITY_NONE: Final = 0
QUALITY_VIDEO: Final = 1
"""Video: frame ends (marker bit), counted in the inbound's ``frames`` and ``frame_ts``."""
QUALITY_VP8: Final = 2
"""VP8: frame ends counted, and the first packets of key frames (their resolution) to
relay.quality."""
QUALITY_AUDIO: Final = 3
"""Audio: packets with an audio level (the speech tracker)."""


class PyInbound:
    """One producer's common case in one call (pure Python): a media packet of the media SSRC
    updates the receive statistics and the NACK generator, is counted, and is fanned out; what
    is left for Python comes back as ``IN_*`` flags. The compiled twin is ``_accel.Inbound``.
    One clock read per packet (wall clock: the statistics' arrival and the abs-send-time), and
    a second one on the 1 in ``latency_every`` packets sampled: its forward latency
    (``latency``) goes into ``relay.quality.FORWARD_LATENCY`` here, with no flag (the compiled
    twin counts it in C, which ``FORWARD_LATENCY`` reads)."""

    __slots__ = (
        "payload_type",
        "media_ssrc",
        "stats",
        "nack",
        "quality",
        "latency_every",
        "packets",
        "octets",
        "frames",
        "frame_ts",
        "latency",
        "abs_send_time",
        "slow",
        "view",
        "fallback",
        "hold",
        "extra",
        "_tick",
        "_mask",
    )

    def __init__(self, payload_type: int, quality: int, latency_every: int) -> None:
        if (
            not 0 <= payload_type <= 127
            or not QUALITY_NONE <= quality <= QUALITY_AUDIO
            or latency_every < 1
            or latency_every & (latency_every - 1)
        ):
            raise ValueError("bad inbound parameters")
        self.payload_type = payload_type
        self.quality = quality
        self.latency_every = latency_every
        self.media_ssrc: int | None = None
        self.stats: PyReceiveStatistics | None = None
        self.nack: PyMissingPackets | None = None
        self.packets = 0
        self.octets = 0
        self.frames = 0
        """Video frame ends (marker bits): the common case's, and the Python path's it adds."""
        self.frame_ts: int | None = None
        """The RTP timestamp of the last frame end counted in ``frames``."""
        self.latency = 0.0
        self.abs_send_time = 0
        self.slow: list[Consumer] | None = None
        self.view: Any = None
        """Whose ``consumers`` (a tuple) ``__call__`` fans out to."""
        self.fallback: Any = None
        """``fallback(packet, flags)``: what ``__call__`` leaves to Python."""
        self.hold = False
        """``__call__`` hands every packet to ``fallback(packet, IN_PYTHON)``."""
        self.extra = 0
        """Flags ``__call__`` adds to every packet's (``IN_SINKS``)."""
        self._tick = 0
        self._mask = latency_every - 1

    def __call__(self, packet: RtpIn) -> None:
        """The fast receive path's entry: the common case here, the rest (and the flags of
        what is left) to ``fallback(packet, flags)``."""
        if self.hold:
            flags = IN_PYTHON
        else:
            consumers = self.view.consumers
            if type(consumers) is not tuple:
                raise TypeError("view.consumers must be a tuple")
            flags = self.receive(packet, consumers) | self.extra
        if flags:
            self.fallback(packet, flags)

    def receive(self, packet: RtpIn, consumers: tuple[Consumer, ...]) -> int:
        """Take ``packet`` if it is the common case; the ``IN_*`` flags of what is left."""
        stats = self.stats
        if (
            packet.payload_type != self.payload_type
            or packet.ssrc != self.media_ssrc
            or stats is None
        ):
            return IN_PYTHON
        flags = 0
        now = time.time()
        seq = packet.sequence_number
        stats.add(seq, packet.timestamp, now)
        nack = self.nack
        if nack is not None and nack.add(seq):
            flags = IN_NACK
        payload = packet.payload
        self.packets += 1
        self.octets += len(payload)
        quality = self.quality
        if quality == QUALITY_AUDIO:
            if packet.audio_level is not None:
                flags |= IN_QUALITY
        elif quality:
            if packet.marker:
                self.frames += 1
                self.frame_ts = packet.timestamp
            if (
                quality == QUALITY_VP8
                and payload
                and payload[0] & 0x10
                and vp8_resolution(payload) is not None
            ):
                flags |= IN_QUALITY
        self.slow = None
        if consumers:
            abs_send_time = int((now + NTP_EPOCH_OFFSET) * 262144) & 0xFFFFFF
            slow = py_fan_out(packet, consumers, abs_send_time)
            if slow is not None:
                self.slow = slow
                self.abs_send_time = abs_send_time
                flags |= IN_SLOW
        self._tick += 1
        if not self._tick & self._mask:
            self.latency = latency = max(0.0, time.time() - now)
            FORWARD_LATENCY.observe(latency)
        return flags


def py_abs_send_time_now() -> int:
    """The 24-bit 6.18 fixed-point abs-send-time of now (webrtc abs-send-time extension)."""
    return int((time.time() + NTP_EPOCH_OFFSET) * 262144) & 0xFFFFFF


# --- choosing one ---------------------------------------------------------------------------

_compiled: Any = None
if os.environ.get("PARLEY_PURE_PYTHON", "") in ("", "0"):
    try:
        from . import _accel as _compiled  # type: ignore[attr-defined,no-redef]
    except ImportError:  # not built (no compiler, headers or libsrtp2): the pure twin runs
        _compiled = None

COMPILED: Final = _compiled is not None
IMPLEMENTATION: Final = "compiled" if COMPILED else "python"
"""Which packet path runs: "compiled" (relay/_accel.c) or "python"."""
SRTP_CRYPTO: Final[str] = _compiled.SRTP_CRYPTO if COMPILED else "pylibsrtp"
"""Whose SRTP the packet path runs: "openssl" (the libsrtp scripts/libsrtp.sh built), "system
libsrtp2" (Debian's, on NSS), or "pylibsrtp" (the pure-Python twin)."""
SRTP_GCM: Final[str] = _compiled.SRTP_GCM if COMPILED else "pylibsrtp"
"""Whose AES-GCM the compiled path's libsrtp runs: "parley" (relay/_accel.c's, on Nettle; with the
"openssl" libsrtp and Nettle's headers) or "libsrtp" (its own; ``PARLEY_LIBSRTP_GCM=1``)."""

if _compiled is not None:
    if tuple(_compiled.FORWARD_LATENCY_BOUNDS) != LatencyHistogram.BOUNDS:
        raise ImportError(
            "relay/_accel.c and relay/quality.py disagree on the latency buckets: rebuild"
        )
    _compiled.set_packet_type(RtpIn)
    _compiled.set_view_type(ConsumerView)
    FORWARD_LATENCY.add_source(_compiled.forward_latency)
    Reader: Any = _compiled.Reader
    FastIn: Any = _compiled.FastIn
    io_stats: Any = _compiled.stats
    if os.environ.get("PARLEY_NO_GSO", "") not in ("", "0"):
        _compiled.set_gso(False)
    Session: Any = _compiled.Session
    Tx: Any = _compiled.Tx
    Route: Any = _compiled.Route
    fan_out: Any = _compiled.fan_out
    parse: Any = _compiled.parse
    abs_send_time_now: Any = _compiled.abs_send_time_now
    ReceiveStatistics: Any = _compiled.ReceiveStatistics
    MissingPackets: Any = _compiled.MissingPackets
    Inbound: Any = _compiled.Inbound
    SrtpError: tuple[type[Exception], ...] = (_compiled.Error, pylibsrtp.Error)
else:
    Reader = None
    FastIn = None
    io_stats = dict
    Session = PySession
    Tx = PyTx
    Route = PyRoute
    fan_out = py_fan_out
    parse = py_parse
    abs_send_time_now = py_abs_send_time_now
    ReceiveStatistics = PyReceiveStatistics
    MissingPackets = PyMissingPackets
    Inbound = PyInbound
    SrtpError = (pylibsrtp.Error,)
