"""relay/icecheck.py: the steady-state answer to an ICE connectivity check, byte for byte what
aioice answers, and aioice's own answer for everything else; with real aioice agents."""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from typing import Any

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.bench.fakes import connected_ice_agents
from parley.relay import _aiortc, icecheck

USERNAME = b"abcd:wxyz"
KEY = b"local-password-of-22-chars"


def request(
    transaction_id: bytes,
    *,
    controlling: bool = True,
    username: bytes = USERNAME,
    key: bytes = KEY,
    use_candidate: bool = False,
    tie_breaker: int = 0x0102030405060708,
) -> bytes:
    """A check as aioice's ``Connection.build_request`` sends it (the peer's side)."""
    message = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=transaction_id,
    )
    message.attributes["USERNAME"] = username.decode()
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"] = tie_breaker
    if use_candidate:
        message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(key)
    return bytes(message)


def aioice_response(transaction_id: bytes, host: str, port: int, key: bytes = KEY) -> bytes:
    """What aioice's ``Connection.request_received`` sends back."""
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = (host, port)
    response.add_message_integrity(key)
    return bytes(response)


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=12, max_size=12),
    hosts,
    st.integers(1, 65535),
    st.booleans(),
    st.integers(0, 2**64 - 1),
)
def test_the_answer_is_aioices_byte_for_byte(
    transaction_id: bytes, host: str, port: int, controlling: bool, tie_breaker: int
) -> None:
    data = request(transaction_id, controlling=not controlling, tie_breaker=tie_breaker)
    answer = icecheck.binding_response(data, host, port, USERNAME, KEY, controlling)
    assert answer == aioice_response(transaction_id, host, port)
    parsed = stun.parse_message(answer)  # aioice checks the FINGERPRINT
    assert parsed.check_message_integrity(KEY)
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == (host, port)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.data())
def test_any_changed_byte_leaves_the_check_to_aioice(transaction_id: bytes, data: Any) -> None:
    raw = bytearray(request(transaction_id))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    assert icecheck.binding_response(bytes(raw), "127.0.0.1", 9, USERNAME, KEY, False) is None


def test_what_could_change_the_agent_or_fails_its_checks_goes_to_aioice() -> None:
    tid = bytes(range(12))

    def answer(data: bytes, controlling: bool = False) -> bytes | None:
        return icecheck.binding_response(data, "127.0.0.1", 5000, USERNAME, KEY, controlling)

    assert answer(request(tid)) is not None
    assert answer(request(tid, use_candidate=True)) is None  # nomination: aioice's state
    assert answer(request(tid, controlling=True), controlling=True) is None  # role conflict
    assert answer(request(tid, controlling=False)) is None  # the same, the other way
    assert answer(request(tid, key=b"another-password")) is None
    assert answer(request(tid, username=b"abcd:other")) is None
    full = request(tid)
    assert answer(full[:-8]) is None  # no FINGERPRINT (and a header that says otherwise)
    unsigned = full[:2] + struct.pack("!H", len(full) - 20 - 32) + full[4:-32]
    assert answer(unsigned) is None  # neither MESSAGE-INTEGRITY nor FINGERPRINT
    assert answer(b"\x00\x01" + full[2:40]) is None  # cut short
    indication = b"\x00\x11" + full[2:]  # a Binding indication, not a request
    assert answer(indication) is None
    assert answer(b"") is None and answer(bytes(100)) is None


def _sign(body: bytes, tid: bytes, key: bytes) -> bytes:
    """A request of our own making (attributes aioice cannot encode), signed as RFC 8489 says."""
    header = struct.pack("!HHI12s", 1, len(body) + 24, icecheck.COOKIE, tid)
    mac = hmac.new(key, header + body, hashlib.sha1).digest()
    signed = struct.pack("!HHI12s", 1, len(body) + 32, icecheck.COOKIE, tid) + body
    signed += struct.pack("!HH", 0x0008, 20) + mac
    crc = zlib.crc32(signed) ^ 0x5354554E
    return signed + struct.pack("!HHI", 0x8028, 4, crc)


def test_an_optional_attribute_is_answered_and_an_unknown_required_one_is_not() -> None:
    tid = b"\x07" * 12
    base = (
        struct.pack("!HH", 0x0006, len(USERNAME))
        + USERNAME
        + b"\x00" * (-len(USERNAME) % 4)
        + struct.pack("!HHI", 0x0024, 4, 1853824767)
        + struct.pack("!HHQ", 0x802A, 8, 42)
    )
    chrome = _sign(base + struct.pack("!HHHH", 0xC057, 4, 1, 10), tid, KEY)  # GOOG-NETWORK-INFO
    assert stun.parse_message(chrome).check_message_integrity(KEY)  # valid to aioice too
    answer = icecheck.binding_response(chrome, "127.0.0.1", 5000, USERNAME, KEY, False)
    assert answer == aioice_response(tid, "127.0.0.1", 5000)
    required = _sign(base + struct.pack("!HHI", 0x0030, 4, 0), tid, KEY)
    assert icecheck.binding_response(required, "127.0.0.1", 5000, USERNAME, KEY, False) is None


async def test_a_real_agents_consent_checks_are_answered_by_the_guard() -> None:
    """aioice's controlling agent checks consent of the pair (what query_consent sends) and
    accepts the guard's answer; a nominating check still goes to aioice."""
    a, b = await connected_ice_agents()
    try:
        relay_pair = b._nominated[1]
        guard = _aiortc._guard(relay_pair.protocol)
        assert guard.checks is not None
        stats = _aiortc.DatagramStats()
        guard.stats = stats
        pair = a._nominated[1]
        for _ in range(3):
            check = a.build_request(pair, nominate=False)
            response, _addr = await pair.protocol.request(
                check,
                pair.remote_addr,
                integrity_key=a.remote_password.encode(),
                retransmissions=0,
            )
            assert response.message_class == stun.Class.RESPONSE
        assert stats.checks_answered == 3
        check = a.build_request(pair, nominate=True)
        await pair.protocol.request(
            check, pair.remote_addr, integrity_key=a.remote_password.encode(), retransmissions=0
        )
        assert stats.checks_answered == 3  # aioice answered that one
        await b.close()
        with pytest.raises(stun.TransactionError):
            # a closing agent answers nothing, and neither does the guard for it
            await pair.protocol.request(
                a.build_request(pair, nominate=False),
                pair.remote_addr,
                integrity_key=a.remote_password.encode(),
                retransmissions=0,
            )
        assert stats.checks_answered == 3
    finally:
        await a.close()
        await b.close()
