"""Stand-ins for aiortc's transports, shared by the micro-benchmarks (bench/test_micro.py) and
the loop-free unit tests (tests/relay/test_units.py): a real Producer and real Consumers, wired
through a real router fan-out table, whose subscriber "transport" does the real SRTP protect
(pylibsrtp) and stops short of the socket.

Only what the relay's fence (relay/_aiortc.py) reads is provided; a fake missing an attribute
fails with the fence's HookError, like a changed aiortc would.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

import aioice
from aiortc.rtcdtlstransport import SRTP_PROFILES, State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from parley.relay.config import MediaConfig
from parley.relay.consumer import Consumer
from parley.relay.fanout import FanOut
from parley.relay.producer import Producer, abs_send_time_now
from parley.relay.rtp import RtpIn

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
VP8_RTX = RTCRtpCodecParameters(
    mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
EXTENSIONS = [
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(
        id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
    ),
]
PUBLISHER_SSRC = 1234


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that does not suspend to completion, synchronously (no loop needed)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the coroutine suspended")


class FakeSsl:
    """The DTLS session as :func:`relay._aiortc.srtp_keys` reads it: keying material for the
    profile two aiortc peers pick (AEAD_AES_256_GCM); the compiled packet path makes its own
    SRTP contexts from it."""

    profile = SRTP_PROFILES[0]

    def __init__(self) -> None:
        self.material = os.urandom(2 * (self.profile.key_length + self.profile.salt_length))

    def get_selected_srtp_profile(self) -> bytes:
        return self.profile.openssl_profile

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        assert label == b"EXTRACTOR-dtls_srtp" and length == len(self.material)
        return self.material

    def key(self, index: int) -> bytes:
        return self.profile.get_key_and_salt(self.material, index)


def srtp_pair(key: bytes | None = None) -> tuple[Session, Session]:
    """An outbound and an inbound SRTP session sharing one key."""
    profile = FakeSsl.profile
    if key is None:
        key = os.urandom(profile.key_length + profile.salt_length)
    tx = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_profile)
    tx.allow_repeat_tx = True  # as aiortc's: a NACKed packet may be resent as it was
    rx = Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile.libsrtp_profile)
    return Session(policy=tx), Session(policy=rx)


class NullSocket:
    """Where a consumer's ``sendto`` goes: kept (or only counted), not sent."""

    def __init__(self, keep: bool = False) -> None:
        self.sent = 0
        self.keep = keep
        self.datagrams: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent += 1
        if self.keep:
            self.datagrams.append(data)


class SinkTransport(asyncio.DatagramTransport):
    """A real non-blocking UDP socket on loopback sending to a bound socket nobody reads (the
    kernel drops what does not fit): the micro-benchmarks' subscriber socket, so that the
    compiled path's ``sendto`` and the pure one's pay the same kernel work."""

    def __init__(self) -> None:
        super().__init__()
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sent = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sink.getsockname()
        return host, port

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent += 1
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()
        self.sink.close()


class FakeDtls:
    """A subscriber's DTLS transport as the relay's fast sender sees it: SRTP protect, then the
    nominated pair's socket (a :class:`NullSocket`, or with ``real_socket`` a
    :class:`SinkTransport`). ``rx`` unprotects what was sent."""

    def __init__(self, keep: bool = False, real_socket: bool = False) -> None:
        self._state = State.CONNECTED
        self._ssl = FakeSsl()
        self._role = "client"
        self._srtp_profiles = SRTP_PROFILES
        self.session, self.rx = srtp_pair(self._ssl.key(0))
        self._tx_srtp = self.session
        address = ("127.0.0.1", 9)
        self.socket: Any = NullSocket(keep)
        if real_socket:
            sink = SinkTransport()
            address, self.socket = sink.address, sink
        pair = SimpleNamespace(protocol=SimpleNamespace(transport=self.socket), remote_addr=address)
        self.transport = SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair}))
        self._rtp_router = SimpleNamespace(ssrc_table={}, senders={})
        self.sent = 0
        self._plain: list[bytes] = []

    async def _send_rtp(self, data: bytes) -> None:
        self.session.protect(data)
        self.sent += 1

    def received(self) -> list[bytes]:
        """Everything that reached the socket so far, SRTP-unprotected (RTP and RTCP)."""
        for data in self.socket.datagrams[len(self._plain) :]:
            if 191 < data[1] < 224:
                self._plain.append(self.rx.unprotect_rtcp(data))
            else:
                self._plain.append(self.rx.unprotect(data))
        return list(self._plain)


class FakeReceiver(SimpleNamespace):
    """The publisher's aiortc receiver: records the feedback the producer sends upstream."""

    def __init__(self) -> None:
        super().__init__(transport=SimpleNamespace(_rtp_router=SimpleNamespace(ssrc_table={})))
        self.plis: list[int] = []
        self.nacks: list[tuple[int, list[int]]] = []
        self.rtcp: list[Any] = []
        self._RTCRtpReceiver__remote_streams: dict[int, Any] = {}
        self._RTCRtpReceiver__rtcp_ssrc = 4321
        # what the relay's RTCP stand-in reads and keeps (relay/_aiortc.py _ticked_rtcp)
        self._RTCRtpReceiver__lsr: dict[int, int] = {}
        self._RTCRtpReceiver__lsr_time: dict[int, float] = {}
        self._RTCRtpReceiver__rtcp_started = asyncio.Event()
        self._RTCRtpReceiver__rtcp_exited = asyncio.Event()

    async def _handle_rtp_packet(self, packet: Any, arrival_time_ms: int) -> None:
        return None

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        return None

    async def receive(self, parameters: Any) -> None:
        return None

    def _RTCRtpReceiver__stop_decoder(self) -> None:
        return None

    async def _send_rtcp(self, packet: Any) -> None:
        self.rtcp.append(packet)

    async def _send_rtcp_pli(self, media_ssrc: int) -> None:
        self.plis.append(media_ssrc)

    async def _send_rtcp_nack(self, media_ssrc: int, lost: list[int]) -> None:
        self.nacks.append((media_ssrc, lost))


def fake_receiver() -> Any:
    return FakeReceiver()


def fake_transceiver(
    mid: str,
    codecs: list[RTCRtpCodecParameters] | None = None,
    keep: bool = False,
    real_socket: bool = False,
) -> Any:
    """A negotiated ``sendonly`` transceiver of a subscriber."""

    async def noop(*args: Any) -> None:
        return None

    sender = SimpleNamespace(
        transport=FakeDtls(keep, real_socket),
        _ssrc=int.from_bytes(os.urandom(4), "big"),
        _rtx_ssrc=int.from_bytes(os.urandom(4), "big"),
        _stream_id="stream",
        _handle_rtcp_packet=noop,
        _send_rtcp=noop,
        track=None,
        _RTCRtpSender__cname="fake",
        _RTCRtpSender__rtcp_started=asyncio.Event(),
        _RTCRtpSender__rtcp_exited=asyncio.Event(),
    )
    return SimpleNamespace(
        mid=mid,
        kind="video",
        sender=sender,
        _codecs=list(codecs or [VP8]),
        _headerExtensions=EXTENSIONS,
    )


def video_packet(seq: int, keyframe: bool, timestamp: int = 3000) -> RtpPacket:
    """An aiortc RtpPacket of VP8 (a keyframe's first packet or a delta frame's)."""
    payload = (b"\x10\x10" if keyframe else b"\x10\x11") + bytes(1040)
    packet = RtpPacket(
        payload_type=96,
        sequence_number=seq,
        timestamp=timestamp,
        ssrc=PUBLISHER_SSRC,
        payload=payload,
    )
    packet.extensions.mid = "0"
    packet.extensions.abs_send_time = abs_send_time_now()
    return packet


def video_in(seq: int, keyframe: bool = False, timestamp: int = 3000) -> RtpIn:
    """The same packet as the fast path hands it to the producer."""
    return RtpIn.from_aiortc(video_packet(seq, keyframe, timestamp))


def make_producer(
    fanout: FanOut | None = None,
    *,
    kind: str = "video",
    codecs: list[RTCRtpCodecParameters] | None = None,
    receiver: Any = None,
) -> Producer:
    table = fanout if fanout is not None else FanOut()
    return Producer(
        id="p",
        peer_id="pub",
        kind=kind,
        source="camera" if kind == "video" else "microphone",
        mid="0",
        receiver=receiver if receiver is not None else fake_receiver(),
        codecs=list(codecs or ([VP8] if kind == "video" else [OPUS])),
        ssrcs=[PUBLISHER_SSRC],
        rtx_ssrcs={},
        config=MediaConfig(addresses=("127.0.0.1",)),
        fanout=table,
        on_close=lambda p: None,
    )


def make_consumer(
    producer: Producer,
    fanout: FanOut,
    index: int = 0,
    *,
    codecs: list[RTCRtpCodecParameters] | None = None,
    keep: bool = False,
    history_size: int = 1024,
    real_socket: bool = False,
) -> Consumer:
    """A negotiated consumer of ``producer``, entered in ``fanout``."""
    consumer = Consumer(
        id=f"c{index}",
        producer=producer,
        peer_id=f"sub{index}",
        transceiver=fake_transceiver(str(index + 1), codecs, keep, real_socket),
        history_size=history_size,
    )
    consumer.activate()
    fanout.add(consumer)
    return consumer


def forwarding_setup(
    consumers: int, real_socket: bool = False
) -> tuple[Producer, list[Consumer], RtpPacket]:
    """A video producer with ``consumers`` synced consumers, and the next packet to forward
    (``real_socket``: each subscriber has a real loopback UDP socket, see
    :class:`SinkTransport`, so the compiled path sends too)."""
    fanout = FanOut()
    producer = make_producer(fanout)
    outs = [make_consumer(producer, fanout, i, real_socket=real_socket) for i in range(consumers)]
    # first packet marks the consumers ready, the keyframe syncs them
    for seq, key in ((1, False), (2, True)):
        drive(producer.handle_rtp(video_packet(seq, key), 0))
    assert all(c.packets == 1 for c in outs), [c.packets for c in outs]
    return producer, outs, video_packet(3, False)


async def connected_ice_agents() -> tuple[aioice.Connection, aioice.Connection]:
    """Two real aioice agents (controlling, controlled) connected on 127.0.0.1."""
    a = aioice.Connection(ice_controlling=True, components=1, use_ipv6=False)
    b = aioice.Connection(ice_controlling=False, components=1, use_ipv6=False)
    for agent in (a, b):
        # host candidates on loopback (aioice leaves loopback out of its own list)
        stock = agent.get_component_candidates

        async def loopback(component: int, addresses: Any = None, timeout: int = 5) -> Any:  # noqa: ASYNC109
            return await stock(component=component, addresses=["127.0.0.1"], timeout=timeout)  # noqa: B023

        agent.get_component_candidates = loopback  # type: ignore[method-assign]
        await agent.gather_candidates()
    for mine, other in ((a, b), (b, a)):
        for candidate in other.local_candidates:
            await mine.add_remote_candidate(candidate)
        await mine.add_remote_candidate(None)
        mine.remote_username = other.local_username
        mine.remote_password = other.local_password
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
    return a, b
