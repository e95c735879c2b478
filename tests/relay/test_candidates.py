"""Trickled ICE candidate lines from a participant (relay/candidates.py): untrusted text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.relay.candidates import parse_candidate
from parley.relay.errors import InvalidCandidate

CHROMIUM_HOST = (
    "candidate:3453512733 1 udp 2122260223 10.201.0.2 51034 typ host generation 0 "
    "ufrag 8+jV network-id 1 network-cost 10"
)
FIREFOX_RELAY = "candidate:5 1 UDP 8331263 127.0.0.1 49920 typ relay raddr 127.0.0.1 rport 49920"


def test_browser_candidates_parse() -> None:
    host = parse_candidate(CHROMIUM_HOST)
    assert (host.ip, host.port, host.type, host.protocol) == ("10.201.0.2", 51034, "host", "udp")
    relay = parse_candidate(FIREFOX_RELAY)
    assert (relay.type, relay.protocol, relay.relatedPort) == ("relay", "udp", 49920)
    mdns = parse_candidate(
        "candidate:1 1 udp 2122260223 0b2c4f7a-6e3d-4f1a-9c2b-1d2e3f4a5b6c.local 5000 typ host"
    )
    assert mdns.ip.endswith(".local")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "candidate:",
        "candidate:1 1 udp 1 1.2.3.4 5000 host",  # no "typ"
        "candidate:1 0 udp 1 1.2.3.4 5000 typ host",  # component 0
        "candidate:1 1 sctp 1 1.2.3.4 5000 typ host",
        "candidate:1 1 udp -1 1.2.3.4 5000 typ host",
        "candidate:1 1 udp 1 1.2.3 5000 typ host",
        "candidate:1 1 udp 1 1.2.3.4 70000 typ host",
        "candidate:1 1 udp 1 1.2.3.4 5000 typ hots",
        "candidate:1 1 udp 1 1.2.3.4 5000 typ srflx raddr nowhere rport 1",
        "candidate:1 1 udp 1 1.2.3.4 5000 typ srflx raddr 1.2.3.4 rport x",
        "candidate:1 1 udp 1 1.2.3.4 5000 typ host " + "x" * 2000,
    ],
)
def test_malformed_candidates_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(InvalidCandidate):
        parse_candidate(text)


@given(st.text(max_size=300))
def test_any_text_is_a_candidate_or_invalid_candidate(text: str) -> None:
    try:
        candidate = parse_candidate(text)
    except InvalidCandidate:
        return
    assert 0 <= candidate.port <= 65535 and candidate.type in ("host", "srflx", "prflx", "relay")


@given(
    st.lists(
        st.sampled_from(
            [
                "1",
                "udp",
                "2122260223",
                "10.0.0.1",
                "5000",
                "typ",
                "host",
                "raddr",
                "rport",
                "x",
                "99999",
                "",
                "candidate:",
                "::1",
                "a.local",
            ]
        ),
        max_size=14,
    )
)
def test_candidate_like_token_soup_never_raises_anything_else(tokens: list[str]) -> None:
    try:
        parse_candidate(" ".join(tokens))
    except InvalidCandidate:
        pass
