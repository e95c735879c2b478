"""Hypothesis properties for the signaling parsers of untrusted input (issue 12): WebSocket JSON,
join tokens and publish-offer SDP raise only their documented errors, never anything else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.relay import MediaConfig, RelayError
from parley.relay.errors import InvalidSdp
from parley.relay.fanout import FanOut
from parley.relay.transport import (
    DIRECTIONS,
    PublishTransport,
    check_offer,
    parse_sdp,
    with_default_directions,
)
from parley.signaling import messages, tokens
from parley.signaling.errors import InvalidToken, SignalingError

SECRET = b"0123456789abcdef0123456789abcdef"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
TYPES = st.sampled_from(["join", "offer", "answer", "leave", "end", "dance", "", None, 1])
FIELDS = st.sampled_from(["type", "token", "name", "pc", "sdp", "sources"])

SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
)


@settings(max_examples=300)
@given(st.text(max_size=300) | st.binary(max_size=300).map(bytes))
def test_any_frame_parses_or_raises_a_signaling_error(text: str | bytes) -> None:
    try:
        messages.parse(text)
    except SignalingError:
        pass


@settings(max_examples=300)
@given(
    st.dictionaries(FIELDS, json_values, max_size=6),
    TYPES,
)
def test_any_json_object_parses_or_raises_a_signaling_error(
    data: dict[str, Any], kind: object
) -> None:
    data["type"] = kind
    try:
        message = messages.parse(json.dumps(data))
    except SignalingError as exc:
        assert exc.code in (
            "bad_request", "invalid_json", "invalid_sdp", "unknown_message_type",
        )  # fmt: skip
        return
    assert type(message).__name__.lower() == kind


@given(st.integers(1, 200_000), st.sampled_from("[{"))
def test_nesting_of_any_depth_is_invalid_json_or_accepted(depth: int, bracket: str) -> None:
    try:
        messages.parse(bracket * depth)
    except SignalingError as exc:
        assert exc.code in ("invalid_json", "bad_request")  # bad_request: message too large


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_any_token_text_verifies_or_raises_invalid_token(text: str) -> None:
    try:
        tokens.verify(SECRET, text, now=0)
    except InvalidToken:
        pass


@given(st.integers(0, 2000), st.integers(0, 255))
def test_a_token_with_one_byte_changed_is_refused(position: int, value: int) -> None:
    token, _ = tokens.mint(SECRET, session_id="s_1", role="agent", name="", now=0, ttl=60)
    position %= len(token)
    changed = token[:position] + chr(value) + token[position + 1 :]
    try:
        claims = tokens.verify(SECRET, changed, now=1)
    except InvalidToken:
        return
    # base64url padding bits may absorb a change in the last character of a part
    assert claims.session_id == "s_1" and claims.role == "agent"


def sdp_mutations() -> st.SearchStrategy[str]:
    lines = SDP.split("\r\n")
    return st.lists(
        st.tuples(
            st.integers(0, len(lines) - 1),
            st.sampled_from(["drop", "dup", "junk", "mid"]),
            st.text(max_size=12),
        ),
        max_size=4,
    ).map(lambda edits: _mutate(lines, edits))


def _mutate(lines: list[str], edits: list[tuple[int, str, str]]) -> str:
    out = list(lines)
    for index, op, text in edits:
        index %= max(1, len(out))
        if op == "drop" and out:
            out.pop(index)
        elif op == "dup" and out:
            out.insert(index, out[index])
        elif op == "junk":
            out.insert(index, text)
        elif op == "mid":
            out.insert(index, f"a=mid:{text}")
    return "\r\n".join(out)


@settings(max_examples=300)
@given(sdp_mutations())
def test_mutated_offers_parse_and_check_or_raise_invalid_sdp(sdp: str) -> None:
    normalized = with_default_directions(sdp)
    try:
        parsed = parse_sdp(normalized)
        check_offer(parsed, [("0", "audio")])
    except InvalidSdp:
        return
    mids = [m.rtp.muxId for m in parsed.media]
    assert len(set(mids)) == len(mids) and all(mids)
    assert all(m.direction in DIRECTIONS for m in parsed.media)


@given(sdp_mutations())
def test_default_directions_only_add_lines_and_are_idempotent(sdp: str) -> None:
    once = with_default_directions(sdp)
    assert with_default_directions(once) == once
    original = [line for line in sdp.replace("\r\n", "\n").split("\n")]
    added = once.split("\r\n") if once != sdp else original
    for line in original:
        assert line in added


class PublishBench:
    """A real aiortc offer (audio + video) and a loop to run real PublishTransports on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.offer = self.loop.run_until_complete(self._offer())

    async def _offer(self) -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        await pc.close()
        return sdp

    async def attempt(self, mutated: str) -> tuple[str, str]:
        """Apply ``mutated``, then the valid offer; the outcome of each."""
        transport = PublishTransport(
            peer_id="p",
            config=MediaConfig(),
            on_producer=lambda producer: None,
            on_producer_closed=lambda producer: None,
            on_failed=lambda: None,
            fanout=FanOut(),
        )
        outcomes = []
        try:
            for sdp in (mutated, self.offer):
                try:
                    await transport.handle_offer(sdp, {})
                    outcomes.append("answered")
                except RelayError as exc:
                    outcomes.append(exc.code)
        finally:
            await transport.close()
        return outcomes[0], outcomes[1]


@pytest.fixture(scope="module")
def bench() -> Iterator[PublishBench]:
    b = PublishBench()
    yield b
    b.loop.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(
    st.tuples(
        st.integers(0, 200),
        st.sampled_from(["drop", "dup", "junk", "mid"]),
        st.text(alphabet=st.characters(codec="ascii"), max_size=12),
    ),
    min_size=1, max_size=3,
))  # fmt: skip
def test_a_mutated_offer_never_wedges_a_real_publish_connection(
    bench: PublishBench, edits: list[tuple[int, str, str]]
) -> None:
    first, second = bench.loop.run_until_complete(
        asyncio.wait_for(bench.attempt(_mutate(bench.offer.split("\r\n"), edits)), 20)
    )
    assert first in ("answered", "invalid_sdp", "no_media", "negotiation_error"), first
    # the valid offer is answered, unless the mutated one was (and negotiated other m-lines)
    assert second == "answered" or (first == "answered" and second == "invalid_sdp"), (
        first,
        second,
    )
    assert second != "negotiation_error"
