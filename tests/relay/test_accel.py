"""The compiled packet path (relay/_accel.c) against its pure-Python twin (relay/accel.py), byte
for byte: header rewrite, SRTP protect/unprotect (and against pylibsrtp, which aiortc uses), and
a whole fan-out onto real loopback UDP sockets. Skipped when the extension was not built."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.rtcdtlstransport import SRTP_PROFILES, State
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.relay import accel
from parley.relay.rtp import RtpIn, RtpRewriter

try:
    from parley.relay import _accel  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only where the extension was not built
    _accel = None
else:  # what relay/accel.py does when it uses the extension (not with PARLEY_PURE_PYTHON=1)
    _accel.set_packet_type(RtpIn)

needs_compiled = pytest.mark.skipif(_accel is None, reason="the compiled packet path is not built")

PROFILES = [p for p in SRTP_PROFILES]


@st.composite
def packets(draw: st.DrawFn) -> RtpIn:
    return RtpIn(
        payload_type=draw(st.integers(0, 127)),
        marker=draw(st.integers(0, 1)),
        sequence_number=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        csrc=tuple(draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=15))),
        payload=draw(st.binary(max_size=1200)),
        padding_size=draw(st.integers(0, 255)),
        audio_level=draw(st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 127)))),
    )


@st.composite
def route_args(draw: st.DrawFn) -> dict[str, Any]:
    mid = draw(st.one_of(st.none(), st.text("0123456789abc", min_size=1, max_size=16)))
    mid_id = draw(st.integers(1, 14))
    element = RtpRewriter(
        ssrc=0,
        payload_type=0,
        mid=mid,
        mid_id=mid_id,
        abs_send_time_id=None,
        audio_level_id=None,
    ).mid_element
    return {
        "ssrc": draw(st.integers(0, 0xFFFFFFFF)),
        "payload_type": draw(st.integers(0, 127)),
        "mid_element": element,
        "abs_send_time_id": draw(st.integers(0, 14)),
        "audio_level_id": draw(st.integers(0, 14)),
        "history_size": 1 << draw(st.integers(0, 10)),
    }


def both_routes(args: dict[str, Any], seq_offset: int, ts_offset: int) -> tuple[Any, Any]:
    routes = (_accel.Route(**args), accel.PyRoute(**args))
    for route in routes:
        route.seq_offset, route.ts_offset = seq_offset, ts_offset
    return routes


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(
    packet=packets(),
    args=route_args(),
    seq_offset=st.integers(0, 0xFFFF),
    ts_offset=st.integers(0, 0xFFFFFFFF),
    abs_send_time=st.integers(-1, 0xFFFFFF),
)
def test_the_compiled_rewrite_writes_the_same_bytes_as_the_pure_one(
    packet: RtpIn, args: dict[str, Any], seq_offset: int, ts_offset: int, abs_send_time: int
) -> None:
    compiled, pure = both_routes(args, seq_offset, ts_offset)
    ours = compiled.rewrite(packet, abs_send_time)
    assert ours == pure.rewrite(packet, abs_send_time)
    # and aiortc reads it back: the payload unchanged, the header rewritten
    parsed = RtpPacket.parse(ours)
    assert parsed.payload == packet.payload
    assert parsed.ssrc == args["ssrc"] and parsed.payload_type == args["payload_type"]
    assert parsed.sequence_number == (packet.sequence_number + seq_offset) & 0xFFFF
    assert parsed.timestamp == (packet.timestamp + ts_offset) & 0xFFFFFFFF
    assert parsed.csrc == list(packet.csrc) and parsed.padding_size == packet.padding_size


@needs_compiled
@settings(max_examples=100, deadline=None)
@given(
    seqs=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40),
    args=route_args(),
    seq_offset=st.integers(0, 0xFFFF),
    asked=st.integers(0, 0xFFFF),
)
def test_both_histories_keep_and_count_the_same_packets(
    seqs: list[int], args: dict[str, Any], seq_offset: int, asked: int
) -> None:
    compiled, pure = both_routes(args, seq_offset, 0)
    for i, seq in enumerate(seqs):
        packet = RtpIn(
            payload_type=96, marker=0, sequence_number=seq, timestamp=i, ssrc=1, payload=bytes(i)
        )
        compiled.remember(packet, i)
        pure.remember(packet, i)
    for seq in [asked, *((s + seq_offset) & 0xFFFF for s in seqs)]:
        assert compiled.history(seq) == pure.history(seq)
    assert (compiled.packets, compiled.octets, compiled.last) == (
        pure.packets,
        pure.octets,
        pure.last,
    )
    compiled.clear()
    assert compiled.history((seqs[-1] + seq_offset) & 0xFFFF) is None


@needs_compiled
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.openssl_profile.decode())
@settings(max_examples=40, deadline=None)
@given(packet=packets(), seq=st.integers(0, 0xFFFF))
def test_compiled_srtp_matches_pylibsrtp(profile: Any, packet: RtpIn, seq: int) -> None:
    key = os.urandom(profile.key_length + profile.salt_length)
    plain = RtpRewriter(
        ssrc=7, payload_type=96, mid=None, mid_id=None, abs_send_time_id=None, audio_level_id=None
    ).rewrite(packet, None, None)
    compiled = _accel.Session(profile.libsrtp_profile, key, True)
    pure = accel.PySession(profile.libsrtp_profile, key, True)
    protected = compiled.protect(plain)
    assert protected == pure.protect(plain)
    for inbound in (
        _accel.Session(profile.libsrtp_profile, key, False),
        accel.PySession(profile.libsrtp_profile, key, False),
    ):
        assert inbound.unprotect(protected) == plain


_FIELDS = RtpIn.__slots__


def _fields(packet: RtpIn | None) -> tuple[Any, ...] | None:
    return None if packet is None else tuple(getattr(packet, name) for name in _FIELDS)


@st.composite
def rtp_datagrams(draw: st.DrawFn) -> bytes:
    """Mostly well-formed RTP with one-byte or two-byte header extensions, sometimes cut or
    with a stray byte: what a publisher (or a fuzzer) sends after SRTP."""
    first = 0x80 | draw(st.integers(0, 15))
    extension = b""
    if draw(st.booleans()):
        profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x1003, 0x1234]))
        body = draw(st.binary(max_size=24))
        if draw(st.booleans()):  # a real element of the form the profile says
            x_id, value = draw(st.integers(0, 15)), draw(st.binary(min_size=1, max_size=4))
            if profile == 0xBEDE:
                body = bytes([(x_id << 4) | (len(value) - 1)]) + value + body
            else:
                body = bytes([x_id, len(value)]) + value + body
        body += b"\x00" * (-len(body) % 4)
        extension = profile.to_bytes(2, "big") + (len(body) // 4).to_bytes(2, "big") + body
        first |= 0x10
    padding = draw(st.integers(0, 20))
    if padding:
        first |= 0x20
    data = (
        bytes([first, draw(st.integers(0, 255))])
        + draw(st.binary(min_size=10, max_size=10))
        + draw(st.binary(min_size=4 * (first & 0x0F), max_size=4 * (first & 0x0F)))
        + extension
        + draw(st.binary(max_size=60))
        + (bytes(padding - 1) + bytes([padding]) if padding else b"")
    )
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    if draw(st.integers(0, 9)) == 0:
        data = bytes([draw(st.integers(0, 255))]) + data[1:]
    return data


@needs_compiled
@settings(max_examples=600, deadline=None)
@given(
    data=st.one_of(rtp_datagrams(), st.binary(max_size=80)),
    ast_id=st.integers(0, 15),
    level_id=st.integers(0, 15),
)
def test_the_compiled_parse_reads_what_parse_rtp_reads(
    data: bytes, ast_id: int, level_id: int
) -> None:
    assert _fields(_accel.parse(data, ast_id, level_id)) == _fields(
        accel.py_parse(data, ast_id, level_id)
    )
    packet = _accel.parse(data, ast_id, level_id)
    assert packet is None or type(packet) is RtpIn


@needs_compiled
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.openssl_profile.decode())
@settings(max_examples=40, deadline=None)
@given(packet=packets(), seq=st.integers(0, 0xFFFF), level_id=st.integers(0, 14))
def test_compiled_unprotect_parse_matches_unprotect_then_parse(
    profile: Any, packet: RtpIn, seq: int, level_id: int
) -> None:
    key = os.urandom(profile.key_length + profile.salt_length)
    plain = RtpRewriter(
        ssrc=7, payload_type=96, mid=None, mid_id=None, abs_send_time_id=None, audio_level_id=5
    ).rewrite(packet, None, packet.audio_level)
    protected = accel.PySession(profile.libsrtp_profile, key, True).protect(plain)
    compiled = _accel.Session(profile.libsrtp_profile, key, False)
    pure = accel.PySession(profile.libsrtp_profile, key, False)
    assert _fields(compiled.unprotect_parse(protected, 0, level_id)) == _fields(
        pure.unprotect_parse(protected, 0, level_id)
    )
    with pytest.raises(_accel.Error):  # a replay
        compiled.unprotect_parse(protected, 0, level_id)


@needs_compiled
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.openssl_profile.decode())
def test_compiled_unprotect_rejects_a_forged_packet(profile: Any) -> None:
    key = os.urandom(profile.key_length + profile.salt_length)
    tx = _accel.Session(profile.libsrtp_profile, key, True)
    plain = bytes([0x80, 96, 0, 1]) + bytes(8) + b"payload of some length"
    protected = tx.protect(plain)
    forgeries = []
    for at in (1, 5, 12, 20, len(protected) - 1):  # header (AAD), payload, tag
        data = bytearray(protected)
        data[at] ^= 1
        forgeries.append(bytes(data))
    forgeries += [protected[:-1], protected[:12]]
    for forged in forgeries:
        rx = _accel.Session(profile.libsrtp_profile, key, False)
        with pytest.raises(_accel.Error):
            rx.unprotect(forged)
        assert rx.unprotect(protected) == plain  # a forgery leaves the session as it was
        with pytest.raises(_accel.Error):
            rx.unprotect(protected)  # a replay
    with pytest.raises(ValueError):
        _accel.Session(profile.libsrtp_profile, b"short", True)


@needs_compiled
def test_the_aes_gcm_in_use_is_named_and_libsrtps_can_be_kept() -> None:
    """With libsrtp on OpenSSL the relay's own AES-GCM on Nettle (scripts/setup.sh installs
    nettle-dev) takes libsrtp's place (it passed libsrtp's test vectors; the tests above compare
    its bytes with pylibsrtp's and check that forgeries fail);
    PARLEY_LIBSRTP_GCM=1 keeps libsrtp's, for measuring."""
    expected = "parley" if _accel.SRTP_CRYPTO == "openssl" else "libsrtp"
    assert _accel.SRTP_GCM == expected
    code = "from parley.relay import _accel; print(_accel.SRTP_GCM)"
    env = dict(os.environ, PARLEY_LIBSRTP_GCM="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "libsrtp", out.stderr


class _Leg:
    """A subscriber leg as ``accel.Tx`` checks it, on a real loopback UDP socket pair."""

    def __init__(self) -> None:
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.sink.settimeout(2)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.closing = False
        self.srtp = object()
        self.dtls = SimpleNamespace(_state=State.CONNECTED, _tx_srtp=self.srtp)
        self.pair = object()
        self.nominated = {1: self.pair}

    def is_closing(self) -> bool:
        return self.closing

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sock.sendto(data, addr)

    def tx(self, tx_type: Any, session: Any) -> Any:
        host, port = self.sink.getsockname()
        return tx_type(
            session,
            self.sock.fileno(),
            host,
            port,
            self.dtls,
            State.CONNECTED,
            self.srtp,
            self.nominated,
            self.pair,
            self,
        )

    def received(self, count: int) -> list[bytes]:
        return [self.sink.recv(4096) for _ in range(count)]

    def close(self) -> None:
        self.sock.close()
        self.sink.close()


@needs_compiled
@settings(max_examples=30, deadline=None)
@given(
    stream=st.lists(packets(), min_size=1, max_size=5),
    args=st.lists(route_args(), min_size=1, max_size=3),
    abs_send_time=st.integers(-1, 0xFFFFFF),
)
def test_a_compiled_fan_out_sends_the_same_datagrams_as_the_pure_one(
    stream: list[RtpIn], args: list[dict[str, Any]], abs_send_time: int
) -> None:
    profile = PROFILES[0]
    for i, packet in enumerate(stream):  # a stream: SRTP refuses to protect a replayed seq
        packet.sequence_number = 100 + i
    implementations = (
        (_accel.Route, _accel.Tx, _accel.Session, _accel.fan_out),
        (accel.PyRoute, accel.PyTx, accel.PySession, accel.py_fan_out),
    )
    keys = [os.urandom(profile.key_length + profile.salt_length) for _ in args]
    sent: list[list[list[bytes]]] = []
    for route_type, tx_type, session_type, fan_out in implementations:
        legs = [_Leg() for _ in args]
        try:
            consumers = []
            for leg, key, kwargs in zip(legs, keys, args, strict=True):
                route = route_type(**kwargs)
                route.seq_offset, route.ts_offset = 1000, 5
                route.tx = leg.tx(tx_type, session_type(profile.libsrtp_profile, key, True))
                consumers.append(SimpleNamespace(_route=route))
            waiting = SimpleNamespace(_route=None)  # not synced yet: handed back
            for packet in stream:
                assert fan_out(packet, (waiting, *consumers), abs_send_time) == [waiting]
            sent.append([leg.received(len(stream)) for leg in legs])
            assert all(c._route.packets == len(stream) for c in consumers)
        finally:
            for leg in legs:
                leg.close()
    assert sent[0] == sent[1]


@needs_compiled
def test_a_leg_that_is_no_longer_valid_is_handed_back() -> None:
    profile = PROFILES[0]
    key = os.urandom(profile.key_length + profile.salt_length)
    packet = RtpIn(payload_type=96, marker=0, sequence_number=1, timestamp=1, ssrc=1, payload=b"x")
    for route_type, tx_type, session_type, fan_out in (
        (_accel.Route, _accel.Tx, _accel.Session, _accel.fan_out),
        (accel.PyRoute, accel.PyTx, accel.PySession, accel.py_fan_out),
    ):
        leg = _Leg()
        try:
            route = route_type(1, 96, b"", 0, 0, 16)
            route.tx = leg.tx(tx_type, session_type(profile.libsrtp_profile, key, True))
            consumer = SimpleNamespace(_route=route)
            assert fan_out(packet, (consumer,), -1) is None
            leg.nominated[1] = object()  # a new nominated pair
            assert fan_out(packet, (consumer,), -1) == [consumer]
            leg.nominated[1] = leg.pair
            leg.closing = True  # the socket is closing
            assert fan_out(packet, (consumer,), -1) == [consumer]
            leg.closing = False
            leg.dtls._tx_srtp = object()  # aiortc's keys changed
            assert fan_out(packet, (consumer,), -1) == [consumer]
            leg.dtls._tx_srtp = leg.srtp
            leg.dtls._state = State.CLOSED
            assert fan_out(packet, (consumer,), -1) == [consumer]
            with pytest.raises(ConnectionError):
                route.tx.send(route.rewrite(packet, -1))
            assert route.packets == 1
        finally:
            leg.close()


def test_the_packet_path_in_use_is_named() -> None:
    if _accel is None:
        assert accel.IMPLEMENTATION == "python"
        return
    forced = os.environ.get("PARLEY_PURE_PYTHON", "") not in ("", "0")
    assert accel.IMPLEMENTATION == ("python" if forced else "compiled")


async def test_real_peers_are_forwarded_through_the_packet_path_in_use() -> None:
    """Two aiortc participants through a real router: every consumer sends on an ``accel.Tx``
    of the implementation in use (not the per-packet Python fallback), and media flows."""
    from tests.media_client import wait_for
    from tests.relay.harness import session

    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        await ann.publish()
        ok = await wait_for(lambda: bob.client.frames_from("ann", "video") >= 30, timeout=15)
        assert ok, dict(bob.client.frames)
        for kind in ("video", "audio"):
            consumer = bob.consumer_of(ann.producer(kind))
            route = consumer._route
            assert route is not None and isinstance(route.tx, accel.Tx), (kind, route)
            assert route.tx.valid and route.tx.sent > 0 and route.packets > 0
