"""Micro-benchmarks of the per-packet work (pytest-benchmark; not in the default test run):
``python -m pytest bench/ --benchmark-columns=min,median,mean,ops``.

Everything is set up outside the timed function; only the inner call is timed. The relay's
packet path is async but never suspends when its transport does not block, so it is driven to
completion with ``coro.send(None)`` inside one running event loop (no ``asyncio.run`` per
iteration). The subscriber's DTLS transport is a stand-in (bench/fakes.py, shared with the
loop-free unit tests) whose fast sender does the real SRTP protect (pylibsrtp) and stops short of
the socket.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.rtcdtlstransport import SRTP_PROFILES
from aiortc.rtcrtpparameters import RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtpPacket,
    pack_remb_fci,
)

from parley.bench.fakes import EXTENSIONS, FakeSsl, drive, srtp_pair, video_packet
from parley.bench.fakes import forwarding_setup as _forwarding_setup
from parley.relay.producer import Producer, abs_send_time_now
from parley.relay.rtp import RtpIn
from parley.turn import stun
from parley.turn.allocation import Allocation, AllocationTable, FiveTuple


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    import uvloop

    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def forwarding_setup(
    loop: asyncio.AbstractEventLoop, consumers: int, real_socket: bool = False
) -> tuple[Producer, RtpPacket]:
    """A video producer with ``consumers`` synced consumers (bench/fakes.py), and a packet."""

    async def setup() -> tuple[Producer, RtpPacket]:
        producer, _, packet = _forwarding_setup(consumers, real_socket)
        return producer, packet

    return loop.run_until_complete(setup())


def bench_in_loop(loop: asyncio.AbstractEventLoop, benchmark: Any, fn: Callable[[], None]) -> None:
    async def main() -> None:
        benchmark(fn)

    loop.run_until_complete(main())


@pytest.mark.parametrize("consumers", [1, 10, 20])
def test_forward_video_packet(
    benchmark: Any, loop: asyncio.AbstractEventLoop, consumers: int
) -> None:
    """The producer's per-packet entry → accel.fan_out (rewrite + history + SRTP protect + sendto on a real
    loopback socket) per consumer; ``packet_path`` in extra_info says compiled or python."""
    from parley.relay import accel

    producer, packet = forwarding_setup(loop, consumers, real_socket=True)
    incoming = RtpIn.from_aiortc(packet)

    # what the fast receive path calls per packet (hooked on the producer's receiver:
    # Producer.forward, or the compiled accel.Inbound itself)
    entry = producer._receiver.__dict__["_parley_forward"]

    def forward() -> None:
        incoming.sequence_number = (incoming.sequence_number + 1) & 0xFFFF
        entry(incoming)

    bench_in_loop(loop, benchmark, forward)
    benchmark.extra_info["consumers"] = consumers
    benchmark.extra_info["packet_path"] = accel.IMPLEMENTATION
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["per_consumer_us"] = benchmark.stats.stats.median * 1e6 / consumers


class _Receiver:
    """An aiortc receiver as the fast path sees it (hashable, for RtpRouter's sets)."""

    _parley_forward: Callable[[Any], None]


def _guarded_fast_path(loop: asyncio.AbstractEventLoop) -> tuple[Any, Any, list[Any]]:
    """A socket guard whose FastReceive routes the publisher's SSRC (aiortc's RtpRouter) to a
    producer with one consumer on a real socket; the publisher's SRTP session; the consumers."""
    from aiortc.rtcdtlstransport import RtpRouter

    from parley.bench.fakes import PUBLISHER_SSRC
    from parley.relay._aiortc import DatagramGuard, FastReceive

    consumers: list[Any] = []
    ssl = FakeSsl()
    tx, rx = srtp_pair(ssl.key(0))

    async def setup() -> DatagramGuard:
        producer, outs, _ = _forwarding_setup(1, True)
        consumers.extend(outs)
        router = RtpRouter()
        receiver = _Receiver()
        receiver._parley_forward = producer._receiver.__dict__["_parley_forward"]
        router.register_receiver(receiver, ssrcs=[PUBLISHER_SSRC], payload_types=[96])  # type: ignore[arg-type]
        guard = DatagramGuard(lambda data, addr: None)
        dtls = SimpleNamespace(
            _rx_srtp=rx, _rtp_router=router, _ssl=ssl, _role="server", _srtp_profiles=SRTP_PROFILES
        )
        guard.fast = FastReceive(dtls)  # type: ignore[arg-type]
        return guard

    return loop.run_until_complete(setup()), tx, consumers


def test_fast_receive_datagram(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """One SRTP datagram through the socket guard and the fast path: unprotect, parse, aiortc's
    RtpRouter, Producer.forward and one consumer (rewrite + SRTP protect)."""
    guard, tx, consumers = _guarded_fast_path(loop)
    assert guard.fast is not None
    guard.fast.abs_send_time_id = 2
    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=EXTENSIONS))
    datagrams = iter(
        [tx.protect(video_packet(seq, False).serialize(ext)) for seq in range(3, 20003)]
    )
    addr = ("127.0.0.1", 9)

    def receive() -> None:
        guard.datagram_received(next(datagrams), addr)

    async def main() -> None:
        benchmark.pedantic(receive, rounds=20000, iterations=1)

    loop.run_until_complete(main())
    assert consumers[0].packets > 20000, consumers[0].packets  # every datagram was forwarded


def _frame_packet(seq: int) -> Any:
    """Packet ``seq`` of 4-packet delta frames, each burst's last the frame's end (marker)."""
    packet = video_packet(seq, False, timestamp=3000 * (seq // 4))
    packet.marker = int(seq % 4 == 3)
    return packet


@pytest.mark.parametrize("path", ["fastin", "guard", "fastin-cold"])
def test_reader_burst(benchmark: Any, loop: asyncio.AbstractEventLoop, path: str) -> None:
    """One wakeup of a media socket's reader with a video frame's 4 SRTP datagrams queued (the
    last with the frame's marker bit):
    ``recvmmsg``, then each datagram through ``accel.FastIn`` straight from the buffer
    (``fastin``) or as bytes through the socket guard and ``FastReceive`` (``guard``, the path
    before FastIn), the producer and one consumer, and the batch's send (one GSO message to a
    real loopback socket). The 4 ``sendto`` of the set-up are not timed. ``fastin-cold`` also
    writes 8 MiB between wakeups (more than this machine's L2), as the relay's caches are at N = 1,
    where a wakeup comes every 33 ms and the core idles or runs others in between."""
    import socket

    import numpy

    from parley.relay import accel

    if accel.Reader is None or accel.FastIn is None:
        pytest.skip("the compiled path is not built")
    guard, tx, consumers = _guarded_fast_path(loop)
    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=EXTENSIONS))
    datagrams = iter([tx.protect(_frame_packet(seq).serialize(ext)) for seq in range(3, 40009)])
    fast = guard.fast
    assert fast is not None
    guard.datagram_received(next(datagrams), ("127.0.0.1", 9))  # makes the SRTP context
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbound.bind(("127.0.0.1", 0))
    inbound.setblocking(False)
    target = inbound.getsockname()
    protocol = SimpleNamespace(datagram_received=guard.datagram_received)
    reader = accel.Reader(inbound.fileno(), protocol)
    if path.startswith("fastin"):
        reader.fast = fast.taker
    cold = path.endswith("-cold")
    scratch = numpy.zeros(8 << 20, dtype=numpy.uint8)
    rounds = 3000 if cold else 9000

    def burst() -> None:
        if cold:
            numpy.add(scratch, 1, out=scratch)
        for _ in range(4):
            sender.sendto(next(datagrams), target)

    async def main() -> None:
        benchmark.pedantic(reader, setup=burst, rounds=rounds, iterations=1)

    try:
        loop.run_until_complete(main())
    finally:
        inbound.close()
        sender.close()
    assert reader.datagrams == 4 * rounds
    assert (reader.taken == 4 * rounds) == path.startswith("fastin")
    assert consumers[0].packets > 4 * rounds, consumers[0].packets  # every datagram forwarded
    benchmark.extra_info["path"] = path


@pytest.mark.parametrize("answer", ["guard", "aioice"])
def test_consent_check(benchmark: Any, loop: asyncio.AbstractEventLoop, answer: str) -> None:
    """One connectivity check of an established pair (what each peer sends every 4-6 s on
    each leg, RFC 7675) into the media socket's guard, answered on a real loopback socket:
    by relay/icecheck.py (``guard``) or by aioice (``aioice``, the path before)."""
    from parley.bench.fakes import connected_ice_agents
    from parley.relay import _aiortc

    async def main() -> None:
        a, b = await connected_ice_agents()
        try:
            guard = _aiortc._guard(b._nominated[1].protocol)
            stats = _aiortc.DatagramStats()
            guard.stats = stats
            if answer == "aioice":
                guard.checks = None
            pair = a._nominated[1]
            local = pair.protocol.transport.get_extra_info("sockname")
            addr = (local[0], local[1])
            assert a.remote_password is not None
            key = a.remote_password.encode()
            requests = [a.build_request(pair, nominate=False) for _ in range(6000)]
            for request in requests:
                request.add_message_integrity(key)  # and FINGERPRINT, as aioice sends it
            checks = iter([bytes(request) for request in requests])
            benchmark.pedantic(
                lambda data: guard.datagram_received(data, addr),
                setup=lambda: ((next(checks),), {}),
                rounds=5000,
                iterations=1,
            )
            assert stats.checks_answered == (5000 if answer == "guard" else 0)
            assert stats.errors == 0
        finally:
            await a.close()
            await b.close()

    loop.run_until_complete(main())
    benchmark.extra_info["answer"] = answer


def test_inbound_srtp_unprotect_and_parse(benchmark: Any) -> None:
    """What aiortc does before the producer sees a packet: SRTP unprotect + RtpPacket.parse."""
    tx, rx = srtp_pair()
    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=EXTENSIONS))
    plain = [video_packet(seq, False).serialize(ext) for seq in range(1, 20001)]
    protected = iter([tx.protect(p) for p in plain])

    def inbound() -> None:
        RtpPacket.parse(rx.unprotect(next(protected)), ext)

    benchmark.pedantic(inbound, rounds=20000, iterations=1)


def test_rewrite_only(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """The consumer's header rewrite alone (no SRTP)."""
    producer, packet = forwarding_setup(loop, 1)
    rewriter = producer.consumers[0]._rewriter
    assert rewriter is not None
    benchmark(rewriter.rewrite, packet, abs_send_time_now(), None)


def test_consumer_rtcp_compound(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """A subscriber's RR + REMB compound: parse, then the consumer's handler."""
    producer, _ = forwarding_setup(loop, 1)
    consumer = producer.consumers[0]
    ssrc = consumer._rewriter.ssrc if consumer._rewriter else 0
    rr = RtcpRrPacket(
        ssrc=99,
        reports=[
            RtcpReceiverInfo(
                ssrc=ssrc,
                fraction_lost=0,
                packets_lost=0,
                highest_sequence=10,
                jitter=3,
                lsr=0,
                dlsr=0,
            )
        ],
    )
    remb = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=99, media_ssrc=0, fci=pack_remb_fci(1_000_000, [ssrc])
    )
    data = bytes(rr) + bytes(remb)

    def handle() -> None:
        for packet in RtcpPacket.parse(data):
            drive(consumer.handle_rtcp(packet))

    bench_in_loop(loop, benchmark, handle)


# --- TURN -----------------------------------------------------------------------------------

ALLOCATE_HEX = os.path.join(
    os.path.dirname(__file__), "..", "tests", "data", "turn_aioice_allocate.hex"
)


def test_stun_parse_allocate(benchmark: Any) -> None:
    """A captured aioice Allocate request (with MESSAGE-INTEGRITY)."""
    with open(ALLOCATE_HEX) as f:
        data = bytes.fromhex(f.read().strip())
    benchmark(stun.parse, data)


def test_stun_build_with_integrity_and_fingerprint(benchmark: Any) -> None:
    message = stun.Message(
        method=stun.ALLOCATE,
        cls=stun.SUCCESS,
        transaction_id=os.urandom(12),
        attributes={
            stun.XOR_RELAYED_ADDRESS: ("127.0.0.1", 50000),
            stun.XOR_MAPPED_ADDRESS: ("127.0.0.1", 40000),
            stun.LIFETIME: 600,
            stun.SOFTWARE: "parley",
        },
    )
    key = os.urandom(16)
    benchmark(message.encode, key, fingerprint=True)


def test_stun_send_indication_parse(benchmark: Any) -> None:
    """A Send indication carrying a 1 kB media packet (the TURN data path without channels)."""
    data = stun.Message(
        method=stun.SEND,
        cls=stun.INDICATION,
        transaction_id=os.urandom(12),
        attributes={stun.XOR_PEER_ADDRESS: ("127.0.0.1", 50000), stun.DATA_ATTR: bytes(1060)},
    ).encode()
    benchmark(stun.parse, data)


def test_channel_data_parse(benchmark: Any) -> None:
    data = stun.ChannelData(0x4001, bytes(1061)).encode(pad=True)
    benchmark(stun.ChannelData.parse, data)


def test_channel_data_build_padded(benchmark: Any) -> None:
    message = stun.ChannelData(0x4001, bytes(1061))
    benchmark(message.encode, True)


SERVER = ("127.0.0.1", 3478)


def allocation_table(transport: str) -> AllocationTable:
    """1000 allocations, each with a channel bound to its own peer."""
    table = AllocationTable()
    for i in range(1000):
        alloc = Allocation(
            id=table.new_id(),
            five_tuple=FiveTuple(transport, ("127.0.0.1", 10000 + i), SERVER),
            username=f"u{i}",
            account=f"a{i}",
            key=b"k" * 16,
            relay=("127.0.0.1", 50000 + i),
            advertised=("127.0.0.1", 50000 + i),
            expires=1e9,
            rate=0,
            now=0.0,
        )
        alloc.bind_channel(0x4001, ("127.0.0.1", 40000 + i), 1e9)
        table.add(alloc)
    return table


def test_allocation_lookup_and_permission(benchmark: Any) -> None:
    """Find the allocation of a client 5-tuple among 1000 and check a peer's channel."""
    table = allocation_table("tcp")
    ft = FiveTuple("tcp", ("127.0.0.1", 10500), SERVER)
    peer = ("127.0.0.1", 40500)

    def lookup() -> bool:
        alloc = table.by_tuple[ft]
        return alloc.permitted(peer, 100.0) and alloc.admit(1100, 100.0)

    assert lookup()
    benchmark(lookup)


def test_allocation_lookup_by_relay(benchmark: Any) -> None:
    """Peer → client direction: the allocation of a relayed address, and its channel."""
    table = allocation_table("udp")
    relay, peer = ("127.0.0.1", 50500), ("127.0.0.1", 40500)

    def lookup() -> Any:
        return table.by_relay[relay].peer_channels.get(peer)

    assert lookup() is not None
    benchmark(lookup)


def test_remb_estimator_add(benchmark: Any) -> None:
    """aiortc's RemoteBitrateEstimator, which the producer feeds every video packet."""
    from aiortc.rate import RemoteBitrateEstimator

    estimator = RemoteBitrateEstimator()
    state = {"ms": 0, "ast": 0}

    def add() -> None:
        state["ms"] += 8  # 120 pps
        state["ast"] = (state["ast"] + 2097) & 0xFFFFFF  # 8 ms in 6.18 fixed point
        estimator.add(
            abs_send_time=state["ast"], arrival_time_ms=state["ms"], payload_size=1042, ssrc=1
        )

    benchmark(add)


def test_audio_level_tracking(benchmark: Any) -> None:
    """The per-packet cost of talk time and speaking (one tracker for both): an audio
    producer's UpstreamQuality.on_packet with an RFC 6464 level, speech and silence mixed."""
    from parley.relay.quality import UpstreamQuality

    quality = UpstreamQuality("audio", "audio/opus", 48000)
    packet = SimpleNamespace(audio_level=(True, 30), timestamp=0, marker=False, payload=b"")
    levels = [(True, 30), (False, 127)] * 25
    count = [0]

    def on_packet() -> None:
        count[0] += 1
        packet.audio_level = levels[count[0] % 50]
        packet.timestamp = (packet.timestamp + 960) & 0xFFFFFFFF
        quality.on_packet(packet, count[0] * 0.02)

    benchmark(on_packet)


def test_speaking_tick(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """The server's speaking check (every 100 ms per session with a microphone, on the shared
    100 ms tick, off the packet path) over a session of 10 participants with a microphone each
    (5 speaking)."""
    from parley.relay.speech import SpeechTracker
    from parley.signaling.presence import Presence

    trackers = []
    participants = []
    for n in range(10):
        tracker = SpeechTracker(48000)
        if n % 2:
            tracker.on_level(20, 0, 0.0)
        trackers.append(tracker)
        producer = SimpleNamespace(quality=SimpleNamespace(speech=tracker), closed=False)
        peer = SimpleNamespace(producers=[producer])
        participants.append(SimpleNamespace(id=f"p{n}", peer=peer, muted=set()))

    async def broadcast(message: dict[str, Any]) -> None:
        return None

    session = SimpleNamespace(id="s", connected=lambda: participants, broadcast=broadcast)
    presence = Presence(session)  # type: ignore[arg-type]

    def tick() -> None:
        presence._check_speaking(0.1)

    bench_in_loop(loop, benchmark, tick)
