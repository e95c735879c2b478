"""Codec tests: RFC 5769 vectors, a captured aioice Allocate round-trip, Hypothesis fuzzing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.turn import stun
from parley.turn.credentials import long_term_key
from parley.turn.errors import StunError

DATA = Path(__file__).parent.parent / "data"


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 §2.1 sample request (short-term credential; SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME)
SAMPLE_REQUEST = h("""
00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
00 24 00 04 6e 00 01 ff
80 29 00 08 93 2f f9 b1 51 26 3b 36
00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
80 28 00 04 e5 7a 3b cf
""")
SAMPLE_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = h("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")

# RFC 5769 §2.2 sample IPv4 response
IPV4_RESPONSE = h("""
01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
00 20 00 08 00 01 a1 47 e1 12 a6 43
00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
80 28 00 04 c0 7d 4c 96
""")

# RFC 5769 §2.3 sample IPv6 response
IPV6_RESPONSE = h("""
01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
80 28 00 04 c8 fb 0b 4c
""")

# RFC 5769 §2.4 sample request with long-term authentication
LONG_TERM_REQUEST = h("""
00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66
""")


def test_rfc5769_sample_request_parses_and_verifies() -> None:
    msg = stun.parse(SAMPLE_REQUEST)
    assert (msg.method, msg.cls, msg.transaction_id) == (stun.BINDING, stun.REQUEST, TID)
    assert msg.get(stun.SOFTWARE) == "STUN test client"
    assert msg.get(stun.PRIORITY) == 0x6E0001FF
    assert msg.get(stun.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert msg.get(stun.USERNAME) == "evtj:h6vY"
    assert msg.check_integrity(SAMPLE_PASSWORD)
    assert not msg.check_integrity(b"wrong password")
    assert msg.get(stun.FINGERPRINT) == 0xE57A3BCF


def test_rfc5769_sample_request_encodes_byte_for_byte() -> None:
    msg = stun.parse(SAMPLE_REQUEST)
    assert msg.encode(SAMPLE_PASSWORD, fingerprint=True, pad=b" ") == SAMPLE_REQUEST
    assert bytes(msg).replace(b"h6vY\x00\x00\x00", b"h6vY   ") == SAMPLE_REQUEST


@pytest.mark.parametrize(
    ("vector", "address"),
    [
        (IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_responses_parse_and_encode(vector: bytes, address: tuple[str, int]) -> None:
    msg = stun.parse(vector)
    assert (msg.method, msg.cls) == (stun.BINDING, stun.SUCCESS)
    assert msg.get(stun.XOR_MAPPED_ADDRESS) == address
    assert msg.get(stun.SOFTWARE) == "test vector"
    assert msg.check_integrity(SAMPLE_PASSWORD)
    built = stun.Message(
        stun.BINDING,
        stun.SUCCESS,
        TID,
        {stun.SOFTWARE: "test vector", stun.XOR_MAPPED_ADDRESS: address},
    )
    assert built.encode(SAMPLE_PASSWORD, fingerprint=True, pad=b" ") == vector


def test_rfc5769_long_term_request() -> None:
    msg = stun.parse(LONG_TERM_REQUEST)
    assert msg.get(stun.USERNAME) == "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert msg.get(stun.NONCE) == "f//499k954d6OL34oL9FSTvy64sA"
    assert msg.get(stun.REALM) == "example.org"
    # the password "The\u00adM\u00aatr\u2168" is "TheMatrIX" after SASLprep
    key = long_term_key(msg.get(stun.USERNAME), "example.org", "TheMatrIX")
    assert (
        key
        == hashlib.md5(
            "\u30de\u30c8\u30ea\u30c3\u30af\u30b9:example.org:TheMatrIX".encode()
        ).digest()
    )
    assert msg.check_integrity(key)
    assert bytes(msg) == LONG_TERM_REQUEST


def test_captured_aioice_allocate_round_trips_byte_for_byte() -> None:
    raw = bytes.fromhex((DATA / "turn_aioice_allocate.hex").read_text().strip())
    msg = stun.parse(raw)
    assert (msg.method, msg.cls) == (stun.ALLOCATE, stun.REQUEST)
    assert msg.get(stun.REQUESTED_TRANSPORT) == 17
    assert msg.get(stun.LIFETIME) == 600
    assert msg.get(stun.USERNAME) == "alice"
    assert msg.check_integrity(long_term_key("alice", "parley", "s3cret"))
    assert bytes(msg) == raw
    # re-encoding with fresh integrity and fingerprint reproduces the client's bytes as well
    assert msg.encode(long_term_key("alice", "parley", "s3cret"), fingerprint=True) == raw


def test_corrupted_fingerprint_is_rejected() -> None:
    bad = bytearray(IPV4_RESPONSE)
    bad[-1] ^= 1
    with pytest.raises(StunError, match="FINGERPRINT mismatch"):
        stun.parse(bytes(bad))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x01\x00", "shorter than 20"),
        (b"\x80" + IPV4_RESPONSE[1:], "top two bits"),
        (IPV4_RESPONSE[:4] + b"\x00\x00\x00\x00" + IPV4_RESPONSE[8:], "magic cookie"),
        (IPV4_RESPONSE[:-4], "does not match"),
        (b"\x00\x01\x00\x04" + IPV4_RESPONSE[4:20] + b"\x00\x06\x00\x08", "past the end"),
        (b"\x00\x01\x00\x08" + IPV4_RESPONSE[4:20] + b"\x00\x20\x00\x04\x00\x05\x00\x00", "family"),
    ],
)
def test_malformed_messages_raise_exact_errors(data: bytes, message: str) -> None:
    with pytest.raises(StunError, match=message):
        stun.parse(data)


def test_channel_data_round_trip_and_padding() -> None:
    cd = stun.ChannelData(0x4001, b"abcde")
    assert cd.encode() == b"\x40\x01\x00\x05abcde"
    assert cd.encode(pad=True) == b"\x40\x01\x00\x05abcde\x00\x00\x00"
    assert stun.ChannelData.parse(cd.encode(pad=True)) == cd
    assert stun.stream_frame_length(cd.encode(pad=True)) == 12
    with pytest.raises(StunError):
        stun.ChannelData.parse(b"\x40\x01\x00\x09abc")


def test_error_code_and_unknown_attributes_round_trip() -> None:
    tid = bytes(12)
    msg = stun.Message(
        stun.ALLOCATE,
        stun.ERROR,
        tid,
        {
            stun.ERROR_CODE: stun.ErrorCode(420, "Unknown Attribute"),
            stun.UNKNOWN_ATTRIBUTES: (0x7777, 0x0031),
        },
    )
    again = stun.parse(msg.encode(fingerprint=True))
    assert again.get(stun.ERROR_CODE) == stun.ErrorCode(420, "Unknown Attribute")
    assert again.get(stun.UNKNOWN_ATTRIBUTES) == (0x7777, 0x0031)


# --- Hypothesis -------------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_parse_random_bytes_raises_only_stun_error(data: bytes) -> None:
    try:
        stun.parse(data)
    except StunError:
        pass


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """A syntactically plausible header (cookie, aligned length) over random attribute bytes."""
    body = draw(st.binary(max_size=120))
    body += b"\x00" * (-len(body) % 4)
    msg_type = draw(st.integers(0, 0x3FFF))
    tid = draw(st.binary(min_size=12, max_size=12))
    return (
        msg_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + stun.COOKIE_BYTES + tid + body
    )


@settings(max_examples=1500, deadline=None)
@given(framed())
def test_parse_framed_garbage_raises_only_stun_error(data: bytes) -> None:
    try:
        msg = stun.parse(data)
    except StunError:
        return
    bytes(msg)  # whatever parsed must serialise again


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, len(LONG_TERM_REQUEST) - 1), st.integers(1, 255))
def test_single_byte_mutations_of_a_real_request(index: int, xor: int) -> None:
    data = bytearray(LONG_TERM_REQUEST)
    data[index] ^= xor
    try:
        msg = stun.parse(bytes(data))
    except StunError:
        return
    msg.check_integrity(b"key")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_channel_data_parse_raises_only_stun_error(data: bytes) -> None:
    try:
        stun.ChannelData.parse(data)
    except StunError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([stun.ALLOCATE, stun.REFRESH, stun.CHANNEL_BIND, stun.BINDING]),
    st.sampled_from([stun.REQUEST, stun.SUCCESS, stun.ERROR, stun.INDICATION]),
    st.binary(min_size=12, max_size=12),
    st.text(max_size=30),
    st.integers(0, 2**32 - 1),
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
)
def test_encode_parse_round_trip(
    method: int, cls: int, tid: bytes, name: str, lifetime: int, peer: tuple[str, int]
) -> None:
    msg = stun.Message(
        method,
        cls,
        tid,
        {stun.USERNAME: name, stun.LIFETIME: lifetime, stun.XOR_PEER_ADDRESS: peer},
    )
    data = msg.encode(b"k", fingerprint=True)
    again = stun.parse(data)
    assert (again.method, again.cls, again.transaction_id) == (method, cls, tid)
    assert again.get(stun.USERNAME) == name
    assert again.get(stun.LIFETIME) == lifetime
    assert again.get(stun.XOR_PEER_ADDRESS) == peer
    assert again.check_integrity(b"k")
