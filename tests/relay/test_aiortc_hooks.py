"""The private aiortc/aioice attributes relay/_aiortc.py relies on exist on real objects, so a new
aiortc release fails here, loudly, instead of silently forwarding nothing."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport

from parley.relay import _aiortc
from parley.relay.rtp import RtpIn
from tests.media_client import PatternVideoTrack, peer_connection, wait_for


def test_check_compatibility_passes() -> None:
    _aiortc.check_compatibility()


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
            assert first.payload_type == 97 and first.payload and first.abs_send_time is not None
        else:
            assert await wait_for(lambda: len(got) > 10, timeout=10)
            assert got_fast == []
        await asyncio.sleep(0)
        assert receiver._RTCRtpReceiver__decoder_thread is None
        assert receiver._RTCRtpReceiver__remote_streams is streams
    finally:
        await offerer.close()
        await answerer.close()
