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
from tests.media_client import wait_for

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


# --- our own consent checks -----------------------------------------------------------------

usernames = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
    min_size=4,
    max_size=32,
)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=12, max_size=12),
    usernames,
    usernames,
    st.binary(min_size=1, max_size=40),
    st.booleans(),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)
def test_our_consent_check_is_aioices_byte_for_byte(
    transaction_id: bytes,
    remote: str,
    local: str,
    key: bytes,
    controlling: bool,
    tie_breaker: int,
    priority: int,
) -> None:
    """What ``Connection.query_consent`` sends: ``build_request`` then ``request`` signs it."""
    message = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=transaction_id,
    )
    message.attributes["USERNAME"] = f"{remote}:{local}"
    message.attributes["PRIORITY"] = priority
    message.attributes["ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"] = tie_breaker
    message.add_message_integrity(key)
    ours = icecheck.binding_request(
        transaction_id, f"{remote}:{local}".encode(), key, controlling, tie_breaker, priority
    )
    assert ours == bytes(message)


def aioice_error(transaction_id: bytes, code: int, key: bytes = KEY) -> bytes:
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.ERROR,
        transaction_id=transaction_id,
    )
    response.attributes["ERROR-CODE"] = (code, "Role Conflict")
    response.add_message_integrity(key)
    return bytes(response)


def aioice_verdict(data: bytes, transaction_id: bytes, key: bytes) -> bool | None:
    """What aioice's ``StunProtocol.datagram_received`` and ``Transaction`` make of ``data``:
    a success (True) or a failure (False) of the transaction, or nothing (None)."""
    try:
        message = stun.parse_message(data)
    except (ValueError, struct.error):
        return None
    if message.transaction_id != transaction_id or message.message_method != stun.Method.BINDING:
        return None
    if message.message_class not in (stun.Class.RESPONSE, stun.Class.ERROR):
        return None
    if not message.check_message_integrity(key):
        return None
    return message.message_class == stun.Class.RESPONSE


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=12, max_size=12), hosts, st.integers(1, 65535))
def test_the_verdict_on_an_answer_is_aioices(transaction_id: bytes, host: str, port: int) -> None:
    success = aioice_response(transaction_id, host, port)
    assert icecheck.response_verdict(success, transaction_id, KEY) is True
    error = aioice_error(transaction_id, 487)
    assert icecheck.response_verdict(error, transaction_id, KEY) is False
    other = bytes(12) if transaction_id != bytes(12) else b"\x01" * 12
    assert icecheck.response_verdict(success, other, KEY) is None  # another transaction
    assert icecheck.response_verdict(success, transaction_id, b"wrong") is None  # not signed by it


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.data())
def test_a_changed_byte_of_an_answer_gets_aioices_verdict(transaction_id: bytes, data: Any) -> None:
    raw = bytearray(aioice_response(transaction_id, "127.0.0.1", 40000))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    verdict = icecheck.response_verdict(bytes(raw), transaction_id, KEY)
    # never more lenient than aioice (which, unlike us, takes a FINGERPRINT whose length
    # runs past the message's end)
    assert verdict is None or verdict == aioice_verdict(bytes(raw), transaction_id, KEY)
    if at < len(raw) - 8:
        assert verdict is None  # signed bytes, or MESSAGE-INTEGRITY itself


def test_answers_aioice_would_not_accept_are_not_ours() -> None:
    tid = bytes(range(12))
    full = aioice_response(tid, "127.0.0.1", 5000)
    unsigned = full[:2] + struct.pack("!H", len(full) - 20 - 32) + full[4:-32]
    assert stun.parse_message(unsigned).check_message_integrity(KEY) is False
    assert icecheck.response_verdict(unsigned, tid, KEY) is None
    no_fingerprint = full[:2] + struct.pack("!H", len(full) - 20 - 8) + full[4:-8]
    assert icecheck.response_verdict(no_fingerprint, tid, KEY) is True  # aioice accepts it too
    assert stun.parse_message(no_fingerprint).check_message_integrity(KEY)
    request_back = b"\x00\x01" + full[2:]  # a request is no answer
    assert icecheck.response_verdict(request_back, tid, KEY) is None
    assert icecheck.response_verdict(full[:-4], tid, KEY) is None  # cut short
    assert icecheck.response_verdict(b"", tid, KEY) is None


@pytest.mark.parametrize("ours", ["controlling", "controlled"])
async def test_our_consent_checks_replace_aioices_and_expire_when_unanswered(ours: str) -> None:
    """Real aioice agents: ours cancels aioice's consent task, its checks are answered by the
    other agent (aioice itself, which validates them), and once that agent is gone the
    connection closes when consent expires."""
    a, b = await connected_ice_agents()
    mine, other = (a, b) if ours == "controlling" else (b, a)
    try:
        stats = _aiortc.DatagramStats()
        for protocol in mine._protocols:
            _aiortc._guard(protocol).stats = stats
        aioice_task = mine._query_consent_task
        assert aioice_task is not None and not aioice_task.done()
        consent = _aiortc.ConsentFreshness(mine, interval=0.1, expiry=0.6, period=0.05, stats=stats)
        consent.start()
        assert await wait_for(lambda: stats.consent_answered >= 4, timeout=5)
        assert consent.taken and aioice_task.cancelled()
        assert stats.consent_answered >= 4
        assert stats.consent_sent - stats.consent_answered <= 1  # at most one in flight
        assert not mine._closing
        await other.close()  # nobody answers from now on
        assert await wait_for(lambda: mine._closing, timeout=5)
        assert mine._closing and stats.consent_expired == 1
        assert not consent._tick or not consent._tick.active
    finally:
        await a.close()
        await b.close()


async def test_a_late_or_foreign_answer_is_not_taken() -> None:
    """An answer from another address, or to a check no longer pending, stays aioice's."""
    a, b = await connected_ice_agents()
    try:
        consent = _aiortc.ConsentFreshness(a, interval=10, period=0.05)
        guard = _aiortc._guard(a._nominated[1].protocol)
        pair = a._nominated[1]
        assert not consent.response_received(b"x" * 64, pair.remote_addr, guard)  # none pending
        consent.pending = (b"\x05" * 12, pair, guard)
        answer = aioice_response(b"\x05" * 12, "127.0.0.1", 1, key=a.remote_password.encode())
        assert not consent.response_received(answer, ("127.0.0.2", pair.remote_addr[1]), guard)
        other_guard = _aiortc.DatagramGuard(lambda data, addr: None)
        assert not consent.response_received(answer, pair.remote_addr, other_guard)
        assert consent.response_received(answer, pair.remote_addr, guard)
        assert consent.pending is None
        assert not consent.response_received(answer, pair.remote_addr, guard)  # answered once
    finally:
        await a.close()
        await b.close()


async def test_a_relayed_calls_legs_check_consent_themselves() -> None:
    """In a real call through a Router, every leg of the relay takes its consent checks over
    from aioice, and the clients (aioice agents) answer them."""
    from tests.relay.harness import session

    async with session("ann", "bob") as (_, p):
        ann, bob = p["ann"], p["bob"]
        await ann.publish()
        assert await wait_for(lambda: bob.client.frames_from("ann", "video") >= 5, timeout=15)
        legs = [ann.peer.publish.pc, ann.peer.subscribe.pc, bob.peer.subscribe.pc]
        consents = [
            connection.__dict__["_parley_consent"]
            for pc in legs
            for _, connection in _aiortc._connections(pc)
        ]
        assert consents and await wait_for(lambda: all(c.taken for c in consents), timeout=3)
        for consent in consents:
            task = consent.connection._query_consent_task
            assert task is not None and task.cancelled()
        before = _aiortc.DATAGRAMS.consent_answered
        # the first check of each leg is due 4-6 s after it was taken over
        assert await wait_for(
            lambda: _aiortc.DATAGRAMS.consent_answered >= before + len(consents), timeout=8
        )
        assert all(not c.connection._closing for c in consents)
