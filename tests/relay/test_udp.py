"""Media sockets read in batches (relay/udp.py over relay/_accel.c's Reader): every datagram is
delivered once, in order, with its sender's address; what fan-outs send during a batch leaves at
its end (one sendmmsg per destination, UDP GSO for equal-size runs) as the very same datagrams
the pure-Python fan-out sends one by one. Skipped when the extension was not built."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.rtcdtlstransport import SRTP_PROFILES
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.relay import accel, udp
from parley.relay.rtp import RtpIn, RtpRewriter, parse_rtp
from tests.relay.test_accel import _fields, _Leg, packets
from tests.relay.test_rtpstats import inbound_packets

needs_reader = pytest.mark.skipif(accel.Reader is None, reason="the compiled path is not built")


@contextlib.contextmanager
def loopback_sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A bound, non-blocking socket to read from and one to send to it, on 127.0.0.1."""
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        inbound.bind(("127.0.0.1", 0))
        inbound.setblocking(False)
        yield inbound, sender
    finally:
        inbound.close()
        sender.close()


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.lost = asyncio.Event()
        self.errors: list[Exception] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


async def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@needs_reader
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_every_datagram_arrives_once_in_order_with_its_address(host: str) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await udp.create_batched_endpoint(loop, Recorder, (host, 0))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for s in senders:
            s.bind((host, 0))
        target = transport.get_extra_info("sockname")
        sizes = [0, 1, 1200, 60000, *range(20, 90)]
        sent = []
        for i, size in enumerate(sizes):  # all queued before the loop reads: batches of 32
            data = bytes([i & 0xFF]) * size
            sender = senders[i % 3 == 0]
            sender.sendto(data, target)
            sent.append((data, sender.getsockname()))
        assert await wait_until(lambda: len(protocol.got) == len(sent))
        assert protocol.got == sent
        assert transport._reader.reads <= 5 < len(sent)
        # the transport's own sendto (DTLS, STUN, RTCP) and what it tells about itself
        transport.sendto(b"back", senders[0].getsockname())
        senders[0].settimeout(2)
        assert senders[0].recvfrom(100) == (b"back", target)
        assert isinstance(transport.get_extra_info("socket"), socket.socket)
        assert not transport.is_closing()
    finally:
        transport.close()
        for s in senders:
            s.close()
    assert transport.is_closing()
    await asyncio.wait_for(protocol.lost.wait(), 5)
    assert transport.get_extra_info("socket").fileno() == -1


@needs_reader
async def test_nothing_is_delivered_after_close() -> None:
    loop = asyncio.get_running_loop()

    class ClosesOnFirst(Recorder):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            transport.close()

    transport, protocol = await udp.create_batched_endpoint(loop, ClosesOnFirst, ("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for i in range(5):
            sender.sendto(bytes([i]), transport.get_extra_info("sockname"))
        await asyncio.wait_for(protocol.lost.wait(), 5)
    assert [data for data, _ in protocol.got] == [b"\x00"]


@needs_reader
async def test_a_leg_on_a_batched_socket_is_no_longer_sent_on_once_it_closes() -> None:
    """A Tx on a BatchedDatagramTransport reads its Reader's closed flag rather than calling
    is_closing(): the two agree, before and after close()."""
    loop = asyncio.get_running_loop()
    transport, _ = await udp.create_batched_endpoint(loop, Recorder, ("127.0.0.1", 0))
    leg = _Leg()
    profile = SRTP_PROFILES[0]
    key = os.urandom(profile.key_length + profile.salt_length)
    packet = RtpIn(payload_type=96, marker=0, sequence_number=1, timestamp=1, ssrc=1, payload=b"x")
    try:
        host, port = leg.sink.getsockname()
        route = accel.Route(1, 96, b"", 0, 0, 16)
        route.tx = accel.Tx(
            accel.Session(profile.libsrtp_profile, key, True),
            transport.get_extra_info("socket").fileno(),
            host,
            port,
            leg.dtls,
            leg.dtls._state,
            leg.srtp,
            leg.nominated,
            leg.pair,
            transport,
        )
        consumer = SimpleNamespace(_route=route)
        assert not transport.is_closing()
        assert accel.fan_out(packet, (consumer,), -1) is None
        assert len(leg.received(1)) == 1
        transport.close()
        assert transport.is_closing()
        assert accel.fan_out(packet, (consumer,), -1) == [consumer]
    finally:
        leg.close()
        transport.close()


@needs_reader
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_exception_stays_in_the_reader_but_an_interrupt_goes_on() -> None:
    with loopback_sockets() as (inbound, sender):
        seen: list[bytes] = []

        class Raises:
            def datagram_received(self, data: bytes, addr: Any) -> None:
                seen.append(data)
                if data == b"bug":
                    raise RuntimeError("a bug in one datagram's handling")
                if data == b"stop":
                    raise KeyboardInterrupt

        reader = accel.Reader(inbound.fileno(), Raises())
        for data in (b"bug", b"next"):
            sender.sendto(data, inbound.getsockname())
        while reader.datagrams < 2:
            reader()  # the RuntimeError is reported as unraisable, the next datagram handled
        assert seen == [b"bug", b"next"]
        sender.sendto(b"stop", inbound.getsockname())
        with pytest.raises(KeyboardInterrupt):
            for _ in range(100):
                reader()


def _stream(sizes: list[int]) -> list[RtpIn]:
    return [
        RtpIn(
            payload_type=96,
            marker=int(i == len(sizes) - 1),
            sequence_number=100 + i,
            timestamp=3000,
            ssrc=1234,
            payload=bytes([i]) * size,
        )
        for i, size in enumerate(sizes)
    ]


def _consumers(legs: list[_Leg], keys: list[bytes], compiled: bool) -> list[Any]:
    profile = SRTP_PROFILES[0]
    consumers = []
    for leg, key in zip(legs, keys, strict=True):
        if compiled:
            route: Any = accel.Route(5678, 100, b"\x10a", 3, 0, 64)
            route.tx = leg.tx(accel.Tx, accel.Session(profile.libsrtp_profile, key, True))
        else:
            route = accel.PyRoute(5678, 100, b"\x10a", 3, 0, 64)
            route.tx = leg.tx(accel.PyTx, accel.PySession(profile.libsrtp_profile, key, True))
        route.seq_offset, route.ts_offset = 7, 9
        consumers.append(SimpleNamespace(_route=route))
    return consumers


@needs_reader
@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.one_of(st.just(1000), st.integers(0, 1200)), min_size=1, max_size=12),
    subscribers=st.integers(1, 3),
    gso=st.booleans(),
)
def test_a_batch_goes_out_as_the_same_datagrams_as_one_by_one(
    sizes: list[int], subscribers: int, gso: bool
) -> None:
    """The publisher's datagrams of one batch are fanned out inside the drain (queued), then
    sent batched; every subscriber gets what the pure fan-out sends, in the same order."""
    profile = SRTP_PROFILES[0]
    keys = [os.urandom(profile.key_length + profile.salt_length) for _ in range(subscribers)]
    stream = _stream(sizes)

    # the pure path, one sendto per packet
    legs = [_Leg() for _ in range(subscribers)]
    try:
        consumers = tuple(_consumers(legs, keys, compiled=False))
        for packet in stream:
            assert accel.py_fan_out(packet, consumers, 77) is None
        expected = [leg.received(len(stream)) for leg in legs]
    finally:
        for leg in legs:
            leg.close()

    # the compiled path inside a Reader's drain
    legs = [_Leg() for _ in range(subscribers)]
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    accel_module: Any = accel._compiled
    accel_module.set_gso(gso)
    try:
        inbound.bind(("127.0.0.1", 0))
        inbound.setblocking(False)
        consumers = tuple(_consumers(legs, keys, compiled=True))

        class Forward:
            def datagram_received(self, data: bytes, addr: Any) -> None:
                assert accel.fan_out(parse_rtp(data, 0, 0), consumers, 77) is None

        for packet in stream:
            sender.sendto(
                accel.PyRoute(1234, 96, b"", 0, 0, 1).rewrite(packet, -1), inbound.getsockname()
            )
        before = accel.io_stats()
        reader = accel.Reader(inbound.fileno(), Forward())
        while reader.datagrams < len(stream):
            reader()
        after = accel.io_stats()
        got = [leg.received(len(stream)) for leg in legs]
        assert got == expected
        assert after["datagrams_out"] - before["datagrams_out"] == len(stream) * subscribers
        if not gso or len(stream) == 1:
            assert after["gso_messages"] == before["gso_messages"]
        if gso and sizes[:2] == [1000, 1000]:
            assert after["gso_messages"] > before["gso_messages"]
        # one send call per subscriber per batch, not one per packet
        assert after["sends"] - before["sends"] == subscribers * reader.reads
    finally:
        accel_module.set_gso(True)
        for leg in legs:
            leg.close()
        inbound.close()
        sender.close()


@needs_reader
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("profile", SRTP_PROFILES, ids=lambda p: p.openssl_profile.decode())
def test_the_reader_hands_srtp_packets_to_its_fast_path_and_the_rest_to_the_protocol(
    profile: Any,
) -> None:
    """``Reader.fast``: RTP unprotected in place, parsed, routed through aiortc's tables (a
    known SSRC whose payload type is its receiver's) to ``_parley_forward``; what the tables
    do not settle to ``route``; RTCP, STUN and DTLS to the protocol, in arrival order; a
    packet that fails SRTP is counted; a handler's exception costs one packet and calls
    ``failed(addr)``; an interrupt goes on."""
    key = os.urandom(profile.key_length + profile.salt_length)
    outbound = accel.Session(profile.libsrtp_profile, key, True)
    order: list[tuple[str, Any]] = []

    class Receiver:
        def __init__(self, name: str) -> None:
            self._parley_forward = lambda packet: order.append((name, packet))

    class Protocol:
        def datagram_received(self, data: bytes, addr: Any) -> None:
            order.append(("protocol", data))

    video, audio = Receiver("video"), Receiver("audio")
    silent = object()  # a receiver without the fast path: its packets are dropped
    ssrc_table: dict[int, Any] = {1234: video, 4321: audio, 77: silent}
    pt_table: dict[int, set[Any]] = {96: {video, silent}, 111: {audio}}
    routed: list[Any] = []
    failed: list[Any] = []
    taker = accel.FastIn(routed.append, failed.append)
    taker.audio_level_id = 1

    def rtp(
        ssrc: int, pt: int, seq: int, payload: bytes, level: tuple[bool, int] | None = None
    ) -> bytes:
        packet = RtpIn(
            payload_type=pt,
            marker=1,
            sequence_number=seq,
            timestamp=90 * seq,
            ssrc=ssrc,
            payload=payload,
            audio_level=level,
        )
        return accel.PyRoute(ssrc, pt, b"", 0, 1 if level is not None else 0, 1).rewrite(packet, -1)

    with loopback_sockets() as (inbound, sender):
        sender.bind(("127.0.0.1", 0))
        reader = accel.Reader(inbound.fileno(), Protocol())
        assert reader.fast is None
        reader.fast = taker
        assert reader.fast is taker and not taker.keyed

        def deliver(*datagrams: bytes) -> None:
            target = reader.datagrams + len(datagrams)
            for data in datagrams:
                sender.sendto(data, inbound.getsockname())
            for _ in range(1000):
                if reader.datagrams >= target:
                    break
                reader()
            assert reader.datagrams == target

        # before set_keys every datagram is the protocol's
        early = outbound.protect(rtp(1234, 96, 1, b"early"))
        deliver(early)
        assert order == [("protocol", early)] and reader.taken == 0
        order.clear()

        taker.set_keys(accel.Session(profile.libsrtp_profile, key, False), ssrc_table, pt_table)
        rtcp = bytes([0x80, 200, 0, 6]) + bytes(24)
        stun = bytes([0x00, 0x01, 0x00, 0x00]) + bytes(16)
        deliver(
            outbound.protect(rtp(1234, 96, 2, b"v" * 1000)),
            rtcp,
            outbound.protect(rtp(4321, 111, 3, b"a" * 80, level=(True, 42))),
            stun,
            outbound.protect(rtp(999, 96, 4, b"unknown ssrc")),
            outbound.protect(rtp(1234, 100, 5, b"not its payload type")),
            outbound.protect(rtp(77, 96, 6, b"no fast path")),
            rtp(1234, 96, 7, b"never protected" * 4),
        )
        assert [name for name, _ in order] == ["video", "protocol", "audio", "protocol"]
        assert order[1][1] == rtcp and order[3][1] == stun
        packet = order[0][1]
        assert (packet.ssrc, packet.payload_type, packet.sequence_number, packet.marker) == (
            1234,
            96,
            2,
            1,
        )
        assert packet.timestamp == 180 and packet.payload == b"v" * 1000
        assert (
            order[2][1].audio_level
            == parse_rtp(rtp(4321, 111, 3, b"a" * 80, level=(True, 42)), 0, 1).audio_level
        )
        assert order[2][1].audio_level is not None and order[2][1].payload == b"a" * 80
        assert [(p.ssrc, p.payload_type) for p in routed] == [(999, 96), (1234, 100)]
        assert taker.routed == 2 and taker.unprotect_errors == 1
        assert reader.taken == taker.taken == 6 and reader.datagrams == 9

        # a handler's bug costs its packet and calls failed(addr); the next one is handled
        order.clear()

        def buggy(packet: Any) -> None:
            if packet.sequence_number == 8:
                raise RuntimeError("a bug in one packet's handling")
            order.append(("video", packet))

        video._parley_forward = buggy
        deliver(outbound.protect(rtp(1234, 96, 8, b"x")), outbound.protect(rtp(1234, 96, 9, b"y")))
        assert failed == [sender.getsockname()]
        assert [p.sequence_number for _, p in order] == [9]

        def interrupted(packet: Any) -> None:
            raise KeyboardInterrupt

        video._parley_forward = interrupted
        sender.sendto(outbound.protect(rtp(1234, 96, 10, b"z")), inbound.getsockname())
        with pytest.raises(KeyboardInterrupt):
            for _ in range(1000):
                reader()
        reader.close()
        assert reader.fast is None


@needs_reader
@settings(max_examples=40, deadline=None)
@given(
    stream=st.lists(packets(), min_size=1, max_size=6),
    profile=st.sampled_from(SRTP_PROFILES),
    level_id=st.sampled_from([0, 5]),
)
def test_fast_in_hands_on_what_the_pure_receive_path_parses(
    stream: list[RtpIn], profile: Any, level_id: int
) -> None:
    """Byte for byte: what a Reader's FastIn forwards from real datagrams is what the pure
    twin's ``unprotect_parse`` makes of them; a datagram that looks like RTCP (marker set,
    payload type 64-95) goes to the protocol on both paths, as DatagramGuard decides."""
    key = os.urandom(profile.key_length + profile.salt_length)
    sender_srtp = accel.PySession(profile.libsrtp_profile, key, True)
    pure = accel.PySession(profile.libsrtp_profile, key, False)
    datagrams = []
    for i, packet in enumerate(stream):
        packet.ssrc = 0x1000 + i  # one SRTP stream each: no replay window between them
        plain = RtpRewriter(
            ssrc=packet.ssrc,
            payload_type=packet.payload_type,
            mid=None,
            mid_id=None,
            abs_send_time_id=None,
            audio_level_id=5,
        ).rewrite(packet, None, packet.audio_level)
        datagrams.append(sender_srtp.protect(plain))
    rtcp_like = [191 < d[1] < 224 for d in datagrams]
    expected = [
        None if looks_rtcp else _fields(pure.unprotect_parse(d, 0, level_id))
        for d, looks_rtcp in zip(datagrams, rtcp_like, strict=True)
    ]

    forwarded: list[Any] = []
    protocol = Recorder()

    class Receiver:
        _parley_forward = staticmethod(forwarded.append)

    receiver = Receiver()
    taker = accel.FastIn(lambda packet: pytest.fail("routed"), lambda addr: pytest.fail("failed"))
    taker.audio_level_id = level_id
    taker.set_keys(
        accel.Session(profile.libsrtp_profile, key, False),
        {p.ssrc: receiver for p in stream},
        {p.payload_type: {receiver} for p in stream},
    )
    with loopback_sockets() as (inbound, sender):
        reader = accel.Reader(inbound.fileno(), protocol)
        reader.fast = taker
        for data in datagrams:
            sender.sendto(data, inbound.getsockname())
        for _ in range(1000):
            if reader.datagrams >= len(datagrams):
                break
            reader()
    assert [_fields(p) for p in forwarded] == [e for e in expected if e is not None]
    assert [data for data, _ in protocol.got] == [
        d for d, looks_rtcp in zip(datagrams, rtcp_like, strict=True) if looks_rtcp
    ]
    assert taker.unprotect_errors == taker.malformed == 0


@needs_reader
def test_a_reader_called_inside_a_batch_reads_nothing_and_the_batch_stays_whole() -> None:
    """The receive buffers hold the batch while its handlers run: a nested call must not read
    over them. Every datagram still arrives once, in order."""
    with loopback_sockets() as (inbound, sender):
        seen: list[bytes] = []

        sent = [bytes([i]) * (100 + i) for i in range(10)]

        class Nested:
            def datagram_received(self, data: bytes, addr: Any) -> None:
                seen.append(data)
                if data == sent[0]:  # more arrive meanwhile, and the handler reads the socket
                    for later in sent[5:]:
                        sender.sendto(later, inbound.getsockname())
                    reader()

        reader = accel.Reader(inbound.fileno(), Nested())
        for data in sent[:5]:
            sender.sendto(data, inbound.getsockname())
        for _ in range(1000):
            if reader.datagrams >= 10:
                break
            reader()
        assert seen == sent


# --- FastIn straight into the producer's compiled Inbound --------------------------------------


def _inbound_side(quality: int, with_nack: bool, key: bytes, profile: Any) -> Any:
    """A compiled Inbound like a producer's, whose one consumer sends on a real loopback leg."""
    from parley.relay import _accel  # type: ignore[attr-defined]

    leg = _Leg()
    route = _accel.Route(5678, 100, b"", 0, 7, 64)
    route.seq_offset, route.ts_offset = 1000, 5
    route.tx = leg.tx(_accel.Tx, _accel.Session(profile.libsrtp_profile, key, True))
    inbound = _accel.Inbound(96, quality, 4)
    inbound.media_ssrc = 1234
    inbound.stats = _accel.ReceiveStatistics(90000)
    inbound.nack = _accel.MissingPackets() if with_nack else None
    left: list[tuple[Any, int]] = []
    inbound.view = SimpleNamespace(consumers=(SimpleNamespace(_route=route),))
    inbound.fallback = lambda packet, flags: left.append((_fields(packet), flags))
    return SimpleNamespace(inbound=inbound, leg=leg, route=route, left=left)


class _Receiver:
    """An aiortc receiver as RtpRouter keeps it (hashable), with the producer's fast path."""

    def __init__(self, forward: Any) -> None:
        self._parley_forward = forward


def _state(side: Any) -> tuple[Any, ...]:
    inbound = side.inbound
    return (
        inbound.packets,
        inbound.octets,
        inbound.frames,
        inbound.frame_ts,
        inbound.stats.packets_received,
        inbound.stats.max_seq,
        None if inbound.nack is None else inbound.nack.missing,
        side.route.packets,
        side.route.octets,
        side.route.tx.sent,
        side.left,
    )


@needs_reader
@settings(max_examples=60, deadline=None)
@given(
    stream=inbound_packets(),
    extras=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), min_size=40, max_size=40),
    quality=st.sampled_from(
        [accel.QUALITY_NONE, accel.QUALITY_VIDEO, accel.QUALITY_VP8, accel.QUALITY_AUDIO]
    ),
    with_nack=st.booleans(),
    profile=st.sampled_from(SRTP_PROFILES),
)
def test_fast_in_gives_the_producers_inbound_what_calling_it_gives(
    stream: list[RtpIn], extras: list[tuple[int, int]], quality: int, with_nack: bool, profile: Any
) -> None:
    """A Reader's FastIn hands a producer's compiled Inbound the fields it parsed, without the
    Inbound reading them back from the packet object: the counts, statistics, NACK state, what
    is left to the fallback (with the same flags) and the bytes sent to the consumer are what
    calling the Inbound with the parsed packet gives."""
    seen: set[tuple[int, int]] = set()
    packets = []
    for packet, (csrcs, padding) in zip(stream, extras, strict=False):
        if (packet.ssrc, packet.sequence_number) in seen:
            continue  # SRTP refuses a replay; the reference would take it
        seen.add((packet.ssrc, packet.sequence_number))
        packet.csrc = tuple(range(1, csrcs + 1))
        packet.padding_size = padding
        packets.append(packet)
    key = os.urandom(profile.key_length + profile.salt_length)
    out_key = os.urandom(profile.key_length + profile.salt_length)
    sender_srtp = accel.PySession(profile.libsrtp_profile, key, True)
    datagrams = [
        sender_srtp.protect(
            RtpRewriter(
                ssrc=p.ssrc,
                payload_type=p.payload_type,
                mid=None,
                mid_id=None,
                abs_send_time_id=None,
                audio_level_id=5,
            ).rewrite(p, None, p.audio_level)
        )
        for p in packets
    ]
    direct = _inbound_side(quality, with_nack, out_key, profile)
    called = _inbound_side(quality, with_nack, out_key, profile)
    receiver = _Receiver(direct.inbound)
    taker = accel.FastIn(lambda packet: pytest.fail("routed"), lambda addr: pytest.fail("failed"))
    taker.audio_level_id = 5
    taker.set_keys(
        accel.Session(profile.libsrtp_profile, key, False),
        {1234: receiver, 99: receiver},
        {96: {receiver}, 97: {receiver}},
    )
    reference = accel.PySession(profile.libsrtp_profile, key, False)
    try:
        with loopback_sockets() as (inbound, sender):
            reader = accel.Reader(inbound.fileno(), Recorder())
            reader.fast = taker
            for data in datagrams:
                sender.sendto(data, inbound.getsockname())
            for _ in range(1000):
                if reader.datagrams >= len(datagrams):
                    break
                reader()
        for data in datagrams:
            assert called.inbound(reference.unprotect_parse(data, 0, 5)) is None
        assert taker.taken == len(datagrams) and taker.unprotect_errors == 0
        assert _state(direct) == _state(called)
        sent = direct.route.tx.sent
        assert direct.leg.received(sent) == called.leg.received(sent)
    finally:
        direct.leg.close()
        called.leg.close()


def _srtp_sender(profile: Any, key: bytes) -> Any:
    """seq -> one SRTP datagram of SSRC 1234, payload type 96, as a publisher sends it."""
    srtp = accel.PySession(profile.libsrtp_profile, key, True)
    route = accel.PyRoute(1234, 96, b"", 0, 0, 1)

    def datagram(seq: int) -> bytes:
        packet = RtpIn(
            payload_type=96, marker=0, sequence_number=seq, timestamp=0, ssrc=1234, payload=b"m"
        )
        return srtp.protect(route.rewrite(packet, -1))

    return datagram


@needs_reader
def test_a_leg_python_closes_inside_a_batch_is_not_sent_on_for_the_rest_of_it() -> None:
    """Inside one Reader batch a leg is checked once until Python runs again: when the protocol's
    handler of a datagram, or a producer's fallback, closes the leg between two packets of the
    same batch, the later packet is handed back (IN_SLOW) instead of sent on it."""
    profile = SRTP_PROFILES[0]
    key = os.urandom(profile.key_length + profile.salt_length)
    out_key = os.urandom(profile.key_length + profile.salt_length)
    datagram = _srtp_sender(profile, key)

    side = _inbound_side(accel.QUALITY_NONE, False, out_key, profile)
    receiver = _Receiver(side.inbound)
    taker = accel.FastIn(lambda packet: pytest.fail("routed"), lambda addr: pytest.fail("failed"))
    taker.set_keys(
        accel.Session(profile.libsrtp_profile, key, False), {1234: receiver}, {96: {receiver}}
    )
    stun = bytes([0x00, 0x01, 0x00, 0x00]) + bytes(16)

    class Closer:
        def datagram_received(self, data: bytes, addr: Any) -> None:
            side.leg.closing = True  # e.g. aiortc's DTLS handling a close_notify

    def slow_seqs() -> list[int]:
        return [fields[2] for fields, flags in side.left if flags & accel.IN_SLOW]

    try:
        with loopback_sockets() as (inbound, sender):
            reader = accel.Reader(inbound.fileno(), Closer())
            reader.fast = taker

            def batch(*datagrams: bytes) -> None:
                target = reader.datagrams + len(datagrams)
                for data in datagrams:
                    sender.sendto(data, inbound.getsockname())
                for _ in range(1000):
                    if reader.datagrams >= target:
                        break
                    reader()
                assert reader.datagrams == target

            batch(datagram(1), datagram(2), stun, datagram(3))
            assert side.route.tx.sent == 2 and slow_seqs() == [3]
            side.leg.closing = False
            side.left.clear()

            def closing_fallback(packet: Any, flags: int) -> None:
                side.left.append((_fields(packet), flags))
                side.leg.closing = True  # what the Python path did closed the leg

            side.inbound.fallback = closing_fallback
            side.inbound.extra = accel.IN_SINKS  # every packet goes on to Python (a recorder)
            batch(datagram(4), datagram(5))
            assert side.route.tx.sent == 3 and slow_seqs() == [5]
    finally:
        side.leg.close()


@needs_reader
def test_fast_in_sees_a_table_python_changes_inside_a_batch() -> None:
    """FastIn remembers its last lookup of the router's tables only until Python runs: when the
    protocol's handler of a datagram in the middle of a batch takes the SSRC out of the table
    (its producer went away), the packets after it go to route() instead."""
    profile = SRTP_PROFILES[0]
    key = os.urandom(profile.key_length + profile.salt_length)
    out_key = os.urandom(profile.key_length + profile.salt_length)
    datagram = _srtp_sender(profile, key)

    side = _inbound_side(accel.QUALITY_NONE, False, out_key, profile)
    receiver = _Receiver(side.inbound)
    routed: list[int] = []
    taker = accel.FastIn(
        lambda packet: routed.append(packet.sequence_number), lambda addr: pytest.fail("failed")
    )
    ssrc_table = {1234: receiver}
    taker.set_keys(accel.Session(profile.libsrtp_profile, key, False), ssrc_table, {96: {receiver}})
    stun = bytes([0x00, 0x01, 0x00, 0x00]) + bytes(16)

    class Remover:
        def datagram_received(self, data: bytes, addr: Any) -> None:
            ssrc_table.pop(1234, None)

    try:
        with loopback_sockets() as (inbound, sender):
            reader = accel.Reader(inbound.fileno(), Remover())
            reader.fast = taker
            datagrams = (datagram(1), datagram(2), stun, datagram(3), datagram(4))
            for data in datagrams:
                sender.sendto(data, inbound.getsockname())
            for _ in range(1000):
                if reader.datagrams >= len(datagrams):
                    break
                reader()
            assert reader.datagrams == len(datagrams)
            assert side.route.tx.sent == 2 and routed == [3, 4]
    finally:
        side.leg.close()
