"""The private aiortc/aioice attributes relay/_aiortc.py relies on exist on real objects, so a new
aiortc release fails here, loudly, instead of silently forwarding nothing."""

from __future__ import annotations

import asyncio
import gc
import logging
from types import SimpleNamespace

import pytest
from aioice import Connection
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport

from parley.relay import _aiortc, accel
from parley.relay.rtp import RtpIn
from tests.media_client import PatternVideoTrack, peer_connection, wait_for
from tests.relay.harness import malformed_stun


def test_check_compatibility_passes() -> None:
    _aiortc.check_compatibility()


async def test_the_probe_passes_on_real_loopback_peer_connections() -> None:
    await _aiortc.probe(timeout=10)


def hide(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    """Make ``name`` vanish from every instance of ``cls`` (as a rename in a new aiortc would),
    while aiortc's own assignments still succeed."""

    def get(self: object) -> None:
        raise AttributeError(name)

    def put(self: object, value: object) -> None:
        self.__dict__["_hidden" + name] = value

    monkeypatch.setattr(cls, name, property(get, put), raising=False)


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (RTCDtlsTransport, "_rx_srtp"),
        (RTCRtpReceiver, "_RTCRtpReceiver__remote_streams"),
        (RTCRtpReceiver, "_RTCRtpReceiver__rtcp_ssrc"),
        (RTCRtpSender, "_stream_id"),
        (RTCRtpTransceiver, "_offerDirection"),
        (RTCRtpTransceiver, "_headerExtensions"),
    ],
)
async def test_the_probe_names_an_instance_attribute_that_disappeared(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str
) -> None:
    hide(monkeypatch, cls, name)
    with pytest.raises(_aiortc.HookError, match=name):
        await _aiortc.probe(timeout=5)


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (RTCRtpReceiver, "_send_rtcp_pli"),
        (RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder"),
        (RTCRtpSender, "_send_rtcp"),
        (RTCDtlsTransport, "_send_rtp"),
        (Connection, "get_component_candidates"),
        (RTCPeerConnection, "_RTCPeerConnection__connect"),
    ],
)
async def test_the_probe_names_a_method_that_disappeared(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str
) -> None:
    monkeypatch.delattr(cls, name)
    with pytest.raises(_aiortc.HookError, match=name):
        await _aiortc.probe(timeout=5)


async def test_the_probe_checks_the_nack_generator_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Forgetful:
        missing: set[int] = set()

        def add(self, seq: int) -> bool:
            return False

    monkeypatch.setattr(accel, "MissingPackets", Forgetful)
    with pytest.raises(_aiortc.HookError, match="NACK generator"):
        await _aiortc.probe(timeout=5)


def test_accessors_raise_hook_error_instead_of_returning_a_default() -> None:
    bare = SimpleNamespace()
    for accessor in (
        _aiortc.receiver_rtcp_ssrc,
        _aiortc.transceiver_offer_direction,
        _aiortc.transceiver_codecs,
        _aiortc.transceiver_header_extensions,
        _aiortc.sender_ssrcs,
        _aiortc.dtls_is_connected,
        _aiortc.stop_decoder,
    ):
        with pytest.raises(_aiortc.HookError, match="has no"):
            accessor(bare)  # type: ignore[arg-type]


def test_the_socket_callback_never_raises_into_aioice(caplog: pytest.LogCaptureFixture) -> None:
    stats = _aiortc.DatagramStats()

    def broken(data: bytes, addr: object) -> None:
        raise RuntimeError("a bug behind the socket callback")

    guard = _aiortc.DatagramGuard(broken, stats)
    with caplog.at_level(logging.DEBUG, logger="parley.relay._aiortc"):
        for _ in range(500):
            guard.datagram_received(b"\x00\x01 not rtp", ("127.0.0.1", 9))
    assert stats.errors == 500
    # logged once with its traceback, then rate-limited (not one traceback per packet)
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None


def test_the_socket_callback_drops_empty_datagrams_and_malformed_stun() -> None:
    stats = _aiortc.DatagramStats()
    seen: list[bytes] = []
    guard = _aiortc.DatagramGuard(lambda data, addr: seen.append(data), stats)
    guard.datagram_received(b"", ("127.0.0.1", 9))
    assert stats.empty == 1 and seen == []

    from aioice import stun

    def aioice_parse(data: bytes, addr: object) -> None:
        stun.parse_message(data)

    guard = _aiortc.DatagramGuard(aioice_parse, stats)
    guard.datagram_received(malformed_stun(), ("127.0.0.1", 9))
    assert stats.malformed_stun == 1 and stats.errors == 0


async def _connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection]:
    offerer, answerer = peer_connection(), peer_connection()
    offerer.addTransceiver(PatternVideoTrack(), direction="sendonly")
    offer = await offerer.createOffer()
    _aiortc.configure_host_candidates(offerer, ["127.0.0.1"], None)
    await offerer.setLocalDescription(offer)
    await answerer.setRemoteDescription(
        RTCSessionDescription(sdp=offerer.localDescription.sdp, type="offer")
    )
    _aiortc.configure_host_candidates(answerer, ["127.0.0.1"], None)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(
        RTCSessionDescription(sdp=answerer.localDescription.sdp, type="answer")
    )
    ok = await wait_for(
        lambda: offerer.connectionState == "connected" and answerer.connectionState == "connected",
        timeout=10,
    )
    assert ok
    return offerer, answerer


async def test_private_attributes_exist_on_real_negotiated_objects() -> None:
    offerer, answerer = await _connected_pair()
    try:
        sending = offerer.getTransceivers()[0]
        receiving = answerer.getTransceivers()[0]
        sender, receiver = sending.sender, receiving.receiver
        assert isinstance(sender, RTCRtpSender) and isinstance(receiver, RTCRtpReceiver)

        # name-mangled receiver state
        assert isinstance(receiver._RTCRtpReceiver__remote_streams, dict)
        assert callable(receiver._RTCRtpReceiver__stop_decoder)
        assert isinstance(receiver._RTCRtpReceiver__rtcp_ssrc, int)
        assert _aiortc.receiver_rtcp_ssrc(receiver) is not None
        # sender SSRCs and the msid stream id
        ssrc, rtx_ssrc = _aiortc.sender_ssrcs(sender)
        assert isinstance(ssrc, int) and isinstance(rtx_ssrc, int)
        assert isinstance(sender._stream_id, str)
        # negotiated parameters on the transceivers
        codecs = _aiortc.transceiver_codecs(receiving)
        assert codecs and codecs[0].mimeType.lower() == "video/vp8"
        uris = {e.uri for e in _aiortc.transceiver_header_extensions(sending)}
        assert "urn:ietf:params:rtp-hdrext:sdes:mid" in uris
        # the remote offer said sendonly: seen from the receiving side that is "recvonly"
        assert _aiortc.transceiver_offer_direction(receiving) == "recvonly"
        # the DTLS transport: state, router table and the send hook
        dtls = receiver.transport
        assert isinstance(dtls, RTCDtlsTransport)
        assert _aiortc.dtls_is_connected(dtls)
        assert isinstance(dtls._rtp_router.ssrc_table, dict)
        assert dtls._rtp_router.route_rtp.__name__ == "route_rtp"
        # ICE: the peer connection's transports and aioice's connection
        ice_transports = offerer._RTCPeerConnection__iceTransports
        assert ice_transports
        for ice in ice_transports:
            connection = ice.iceGatherer._connection
            assert connection._parley_hosts == ["127.0.0.1"]
            assert isinstance(connection._protocols, list)
            assert all(c.ip == "127.0.0.1" for c in ice.iceGatherer.getLocalCandidates())
    finally:
        await offerer.close()
        await answerer.close()


@pytest.mark.parametrize("fast", [False, True])
async def test_receiver_hook_diverts_packets_and_stops_the_decoder(fast: bool) -> None:
    """hook_receiver's handlers get decrypted packets, through aiortc's path or (once
    install_fast_receive ran) the fast path; the stock decoder thread is stopped."""
    offerer = peer_connection()
    answerer = peer_connection()
    got: list[int] = []
    got_fast: list[RtpIn] = []
    streams: dict[int, object] = {}

    async def on_rtp(packet: object, arrival_time_ms: int) -> None:
        got.append(arrival_time_ms)

    def on_fast_rtp(packet: RtpIn) -> None:
        got_fast.append(packet)

    async def on_rtcp(packet: object) -> None:
        pass

    offerer.addTransceiver(PatternVideoTrack(), direction="sendonly")
    offer = await offerer.createOffer()
    _aiortc.configure_host_candidates(offerer, ["127.0.0.1"], None)
    await offerer.setLocalDescription(offer)
    await answerer.setRemoteDescription(
        RTCSessionDescription(sdp=offerer.localDescription.sdp, type="offer")
    )
    receiver = answerer.getTransceivers()[0].receiver
    _aiortc.hook_receiver(receiver, on_rtp, on_rtcp, streams, on_fast_rtp)  # type: ignore[arg-type]
    _aiortc.configure_host_candidates(answerer, ["127.0.0.1"], None)
    await answerer.setLocalDescription(await answerer.createAnswer())
    if fast:
        _aiortc.install_fast_receive(answerer)
    await offerer.setRemoteDescription(
        RTCSessionDescription(sdp=answerer.localDescription.sdp, type="answer")
    )
    try:
        if fast:
            assert await wait_for(lambda: len(got_fast) > 10, timeout=10)
            assert got == []  # no RTP took aiortc's path
            first = got_fast[0]
            # (the publisher's abs-send-time is not parsed: nothing reads it)
            assert first.payload_type == 97 and first.payload and first.abs_send_time is None
        else:
            assert await wait_for(lambda: len(got) > 10, timeout=10)
            assert got_fast == []
        await asyncio.sleep(0)
        assert receiver._RTCRtpReceiver__decoder_thread is None
        assert receiver._RTCRtpReceiver__remote_streams is streams
    finally:
        await offerer.close()
        await answerer.close()


async def _close_during_the_dtls_handshake(cls: type[RTCPeerConnection]) -> list[object]:
    """Close a ``cls`` answerer of two bundled transceivers once ICE completes, i.e. while its
    connect task waits for the DTLS handshake; what asyncio's exception handler saw."""
    loop = asyncio.get_running_loop()
    seen: list[object] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx.get("exception") or ctx))
    try:
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        offerer, answerer = RTCPeerConnection(config), cls(config)
        offerer.addTransceiver("audio", direction="sendonly")
        offerer.addTransceiver("video", direction="sendonly")
        _aiortc.configure_host_candidates(offerer, ["127.0.0.1"], None)
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        _aiortc.configure_host_candidates(answerer, ["127.0.0.1"], None)
        ice_done = asyncio.Event()

        @answerer.on("iceconnectionstatechange")
        def _state() -> None:
            if answerer.iceConnectionState == "completed":
                ice_done.set()

        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await asyncio.wait_for(ice_done.wait(), 10)
        await answerer.close()
        await offerer.close()
        for _ in range(3):  # the connect task ends, and its exception is reported when collected
            await asyncio.sleep(0.05)
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    return seen


async def test_stock_aiortc_logs_an_unretrieved_error_when_a_close_overtakes_connecting() -> None:
    """The control: what the soak logged about once an hour ("Task exception was never
    retrieved ... RTCIceTransport is closed"), made certain by closing mid-handshake."""
    seen = await _close_during_the_dtls_handshake(RTCPeerConnection)
    assert any("RTCIceTransport is closed" in repr(e) for e in seen), seen


async def test_the_relays_peer_connection_ends_that_connect_task_quietly() -> None:
    for _ in range(3):
        assert await _close_during_the_dtls_handshake(_aiortc.PeerConnection) == []
