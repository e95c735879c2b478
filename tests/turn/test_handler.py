"""The sans-I/O core, driven without a loop or socket: auth, errors, lifetimes, caching, relaying."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.turn import stun
from parley.turn.allocation import FiveTuple
from parley.turn.credentials import long_term_key, rest_credentials
from parley.turn.handler import (
    AllocationClosed,
    AllocationCreated,
    Output,
    RelayRequest,
    ToClient,
    ToPeer,
    TurnHandler,
)
from tests.turn.conftest import SECRET, make_config
from tests.turn.test_policy import REFUSED

CLIENT = FiveTuple("udp", ("192.0.2.10", 40000), ("127.0.0.1", 3478))
REALM = "parley.test"
PEER = ("127.0.0.1", 5000)
T0 = 1_800_000_000.0


class Driver:
    """Plays client and I/O shell around a :class:`TurnHandler`."""

    def __init__(
        self,
        handler: TurnHandler,
        ft: FiveTuple = CLIENT,
        user: str = "alice",
        password: str = "s3cret",
    ) -> None:
        self.handler = handler
        self.ft = ft
        self.user = user
        self.password = password
        self.nonce: str | None = None
        self.relay_port = 50000
        self.created: list[Any] = []

    def feed(self, data: bytes, now: float) -> list[Output]:
        outputs = self.handler.handle(data, self.ft, now)
        done: list[Output] = []
        for out in outputs:
            if isinstance(out, RelayRequest):
                self.relay_port += 1
                done.extend(self.handler.relay_bound(out, ("127.0.0.1", self.relay_port), now))
            else:
                done.append(out)
        return done

    def request(
        self,
        method: int,
        attrs: dict[int, Any],
        now: float,
        auth: bool = True,
        tid: bytes | None = None,
        password: str | None = None,
    ) -> stun.Message:
        tid = tid or os.urandom(12)
        attrs = dict(attrs)
        key = None
        if auth and self.nonce is not None:
            attrs.update({stun.USERNAME: self.user, stun.REALM: REALM, stun.NONCE: self.nonce})
            key = long_term_key(self.user, REALM, password or self.password)
        data = stun.Message(method, stun.REQUEST, tid, attrs).encode(key, fingerprint=True)
        replies = [o for o in self.feed(data, now) if isinstance(o, ToClient)]
        assert len(replies) == 1
        msg = stun.parse(replies[0].data)
        assert msg.transaction_id == tid
        return msg

    def authed(self, method: int, attrs: dict[int, Any], now: float, **kw: Any) -> stun.Message:
        if self.nonce is None:
            challenge = self.request(method, attrs, now, auth=False)
            assert error(challenge) == 401
            self.nonce = challenge.get(stun.NONCE)
        return self.request(method, attrs, now, **kw)

    def allocate(self, now: float = T0, **attrs: Any) -> stun.Message:
        base: dict[int, Any] = {stun.REQUESTED_TRANSPORT: 17}
        base.update(attrs.get("extra", {}))
        return self.authed(stun.ALLOCATE, base, now)


def error(msg: stun.Message) -> int | None:
    if msg.cls != stun.ERROR:
        return None
    return int(msg.get(stun.ERROR_CODE).code)


def make_handler(**overrides: Any) -> TurnHandler:
    return TurnHandler(make_config(**overrides), nonce_key=b"k" * 32)


def test_binding_needs_no_auth_and_returns_xor_mapped_address() -> None:
    d = Driver(make_handler())
    resp = d.request(stun.BINDING, {}, T0, auth=False)
    assert resp.cls == stun.SUCCESS
    assert resp.get(stun.XOR_MAPPED_ADDRESS) == CLIENT.client
    assert stun.SOFTWARE not in resp  # no SOFTWARE by default


def test_allocate_without_credentials_gets_401_with_realm_and_nonce_and_creates_nothing() -> None:
    h = make_handler()
    d = Driver(h)
    resp = d.request(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17}, T0, auth=False)
    assert error(resp) == 401
    assert resp.get(stun.REALM) == REALM
    assert len(resp.get(stun.NONCE)) == 16
    assert stun.MESSAGE_INTEGRITY not in resp
    assert len(h.allocations) == 0


def test_allocate_with_static_user_succeeds_and_response_is_signed() -> None:
    d = Driver(make_handler())
    resp = d.allocate()
    assert resp.cls == stun.SUCCESS
    assert resp.get(stun.XOR_RELAYED_ADDRESS) == ("127.0.0.1", 50001)
    assert resp.get(stun.XOR_MAPPED_ADDRESS) == CLIENT.client
    assert resp.get(stun.LIFETIME) == 600
    assert resp.check_integrity(long_term_key("alice", REALM, "s3cret"))


def test_bad_password_gets_401() -> None:
    d = Driver(make_handler(), password="wrong")
    assert error(d.allocate()) == 401


def test_rest_credentials_are_accepted_until_they_expire() -> None:
    user, password = rest_credentials(SECRET, "bob", ttl=60, now=T0)
    assert user == f"{int(T0) + 60}:bob"
    d = Driver(make_handler(), user=user, password=password)
    assert d.allocate(T0).cls == stun.SUCCESS
    late = Driver(
        make_handler(), ft=CLIENT._replace(client=("192.0.2.11", 1)), user=user, password=password
    )
    assert error(late.allocate(T0 + 61)) == 401


def test_rest_credential_signed_with_another_secret_is_refused() -> None:
    user, password = rest_credentials("not-our-secret", "bob", ttl=600, now=T0)
    assert error(Driver(make_handler(), user=user, password=password).allocate()) == 401


def test_stale_nonce_gets_438_with_a_fresh_nonce() -> None:
    d = Driver(make_handler(nonce_lifetime=600))
    assert d.allocate(T0).cls == stun.SUCCESS
    resp = d.request(stun.REFRESH, {stun.LIFETIME: 600}, T0 + 601)
    assert error(resp) == 438
    assert resp.get(stun.NONCE) != d.nonce
    d.nonce = resp.get(stun.NONCE)
    assert d.request(stun.REFRESH, {stun.LIFETIME: 600}, T0 + 602).cls == stun.SUCCESS


def test_forged_nonce_is_refused() -> None:
    d = Driver(make_handler())
    d.nonce = "AAAAAAAAAAAA3q2-7w=="[:16]
    assert error(d.request(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17}, T0)) == 438


def test_tcp_relay_request_gets_442() -> None:
    d = Driver(make_handler())
    resp = d.authed(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 6}, T0)
    assert error(resp) == 442


def test_missing_requested_transport_gets_400() -> None:
    d = Driver(make_handler())
    assert error(d.authed(stun.ALLOCATE, {}, T0)) == 400


def test_unknown_comprehension_required_attribute_gets_420_with_unknown_attributes() -> None:
    d = Driver(make_handler())
    resp = d.authed(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17, 0x0031: b"\x00" * 4}, T0)
    assert error(resp) == 420
    assert resp.get(stun.UNKNOWN_ATTRIBUTES) == (0x0031,)


def test_ipv6_relay_family_request_on_ipv4_server_gets_440() -> None:
    d = Driver(make_handler())
    resp = d.authed(
        stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17, stun.REQUESTED_ADDRESS_FAMILY: 2}, T0
    )
    assert error(resp) == 440


def test_second_allocate_on_same_five_tuple_gets_437_but_retransmission_gets_cached_answer() -> (
    None
):
    d = Driver(make_handler())
    first = d.allocate()
    assert first.cls == stun.SUCCESS
    # retransmission: same transaction id, same 5-tuple -> the very same response bytes
    tid = os.urandom(12)
    again = d.request(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17}, T0, tid=tid)
    assert error(again) == 437
    repeat = d.request(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17}, T0 + 1, tid=tid)
    assert error(repeat) == 437


def test_retransmitted_allocate_gets_the_same_success_response() -> None:
    h = make_handler()
    d = Driver(h)
    challenge = d.request(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17}, T0, auth=False)
    d.nonce = challenge.get(stun.NONCE)
    tid = os.urandom(12)
    key = long_term_key("alice", REALM, "s3cret")
    attrs = {
        stun.REQUESTED_TRANSPORT: 17,
        stun.USERNAME: "alice",
        stun.REALM: REALM,
        stun.NONCE: d.nonce,
    }
    data = stun.Message(stun.ALLOCATE, stun.REQUEST, tid, attrs).encode(key, fingerprint=True)
    first = d.feed(data, T0)
    second = d.feed(data, T0 + 0.5)
    assert [type(o) for o in first] == [AllocationCreated, ToClient]
    assert [type(o) for o in second] == [ToClient]
    assert first[1].data == second[0].data  # type: ignore[union-attr]
    assert len(h.allocations) == 1


def test_user_and_total_quotas_give_486() -> None:
    h = make_handler(user_quota=2, total_quota=3)
    for i in range(2):
        assert Driver(h, ft=CLIENT._replace(client=("192.0.2.1", i))).allocate().cls == stun.SUCCESS
    assert error(Driver(h, ft=CLIENT._replace(client=("192.0.2.1", 9))).allocate()) == 486
    user, pw = rest_credentials(SECRET, "bob", 600, T0)
    assert (
        Driver(h, ft=CLIENT._replace(client=("192.0.2.2", 1)), user=user, password=pw)
        .allocate()
        .cls
        == stun.SUCCESS
    )
    assert (
        error(
            Driver(
                h, ft=CLIENT._replace(client=("192.0.2.2", 2)), user=user, password=pw
            ).allocate()
        )
        == 486
    )


def test_requests_without_allocation_get_437() -> None:
    d = Driver(make_handler())
    assert error(d.authed(stun.CREATE_PERMISSION, {stun.XOR_PEER_ADDRESS: PEER}, T0)) == 437
    assert error(d.request(stun.REFRESH, {}, T0)) == 437


@pytest.mark.parametrize("general", [False, True])
@pytest.mark.parametrize("peer", REFUSED)
def test_refused_peers_get_403_on_create_permission_and_channel_bind(
    general: bool, peer: str
) -> None:
    d = Driver(make_handler(general_relay=general))
    d.allocate()
    if peer == "127.0.0.1" and not general:  # the explicitly allow-listed relay media address
        ok = d.request(stun.CREATE_PERMISSION, {stun.XOR_PEER_ADDRESS: (peer, 80)}, T0)
        assert ok.cls == stun.SUCCESS
        return
    assert error(d.request(stun.CREATE_PERMISSION, {stun.XOR_PEER_ADDRESS: (peer, 80)}, T0)) == 403
    resp = d.request(
        stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4000, stun.XOR_PEER_ADDRESS: (peer, 80)}, T0
    )
    assert error(resp) == 403
    assert d.handler.stats()["turn_peer_refused"] == 2


def test_public_ipv6_peer_on_ipv4_allocation_gets_443() -> None:
    d = Driver(make_handler(general_relay=True))
    d.allocate()
    resp = d.request(stun.CREATE_PERMISSION, {stun.XOR_PEER_ADDRESS: ("2001:4860::8888", 1)}, T0)
    assert error(resp) == 443


def test_permission_cap_gives_508() -> None:
    d = Driver(make_handler(allowed_peers=("127.0.0.0/8",), max_permissions=2))
    d.allocate()
    for i in (1, 2):
        assert (
            d.request(stun.CREATE_PERMISSION, {stun.XOR_PEER_ADDRESS: (f"127.0.0.{i}", 1)}, T0).cls
            == stun.SUCCESS
        )
    resp = d.request(stun.CREATE_PERMISSION, {stun.XOR_PEER_ADDRESS: ("127.0.0.3", 1)}, T0)
    assert error(resp) == 508


def test_wrong_user_on_existing_allocation_gets_441() -> None:
    h = make_handler(users=(("alice", "s3cret"), ("mallory", "pw")))
    d = Driver(h)
    d.allocate()
    m = Driver(h, user="mallory", password="pw")
    m.nonce = d.nonce
    assert error(m.request(stun.REFRESH, {}, T0)) == 441


def _relay(d: Driver) -> Any:
    return d.handler.allocations.by_tuple[d.ft]


def test_send_indication_needs_permission_and_data_indication_comes_back() -> None:
    d = Driver(make_handler())
    d.allocate()
    send = stun.Message(
        stun.SEND,
        stun.INDICATION,
        os.urandom(12),
        {stun.XOR_PEER_ADDRESS: PEER, stun.DATA_ATTR: b"hi"},
    ).encode()
    assert d.feed(send, T0) == []  # no permission yet: dropped silently
    alloc = _relay(d)
    assert d.handler.peer_data(alloc, b"nope", PEER, T0) is None
    assert d.request(stun.CREATE_PERMISSION, {stun.XOR_PEER_ADDRESS: PEER}, T0).cls == stun.SUCCESS
    [out] = d.feed(send, T0)
    assert isinstance(out, ToPeer) and (out.peer, out.data) == (PEER, b"hi")
    back = stun.parse(d.handler.peer_data(alloc, b"yo", PEER, T0 + 1) or b"")
    assert (back.method, back.cls) == (stun.DATA, stun.INDICATION)
    assert back.get(stun.XOR_PEER_ADDRESS) == PEER and back.get(stun.DATA_ATTR) == b"yo"
    # permissions last 300 s
    assert d.handler.peer_data(alloc, b"late", PEER, T0 + 301) is None


# coturn's turnutils_uclient picks its channel from all of 0x4000-0x7FFF
@pytest.mark.parametrize("number", [0x4000, 0x4001, 0x7FFF])
def test_channel_bind_installs_permission_and_keeps_it_alive_past_300s(number: int) -> None:
    d = Driver(make_handler())
    d.allocate()
    resp = d.request(
        stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: number, stun.XOR_PEER_ADDRESS: PEER}, T0
    )
    assert resp.cls == stun.SUCCESS
    alloc = _relay(d)
    channel = number.to_bytes(2, "big")
    # aioice re-binds only every 500 s and never sends CreatePermission: still flowing at 450 s
    out = d.handler.peer_data(alloc, b"abc", PEER, T0 + 450)
    assert out == channel + b"\x00\x03abc"
    hit = d.handler.channel_data(d.ft, channel + b"\x00\x02hi", T0 + 450)
    assert hit is not None and hit[1:] == (PEER, b"hi")
    # channels expire at 600 s
    assert d.handler.channel_data(d.ft, channel + b"\x00\x02hi", T0 + 601) is None


def test_channel_data_to_stream_clients_is_padded() -> None:
    tcp = FiveTuple("tcp", ("192.0.2.10", 40001), ("127.0.0.1", 3478))
    d = Driver(make_handler(), ft=tcp)
    d.allocate()
    d.request(stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4001, stun.XOR_PEER_ADDRESS: PEER}, T0)
    assert (
        d.handler.peer_data(_relay(d), b"abcde", PEER, T0) == b"\x40\x01\x00\x05abcde\x00\x00\x00"
    )


def test_channel_bind_conflicts_get_400() -> None:
    d = Driver(make_handler(allowed_peers=("127.0.0.0/8",)))
    d.allocate()
    d.request(stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4001, stun.XOR_PEER_ADDRESS: PEER}, T0)
    other = ("127.0.0.2", 5000)
    assert (
        error(
            d.request(
                stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4001, stun.XOR_PEER_ADDRESS: other}, T0
            )
        )
        == 400
    )
    assert (
        error(
            d.request(
                stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4002, stun.XOR_PEER_ADDRESS: PEER}, T0
            )
        )
        == 400
    )
    assert (
        error(
            d.request(
                stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x3FFF, stun.XOR_PEER_ADDRESS: other}, T0
            )
        )
        == 400
    )
    assert (
        error(
            d.request(
                stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x8000, stun.XOR_PEER_ADDRESS: other}, T0
            )
        )
        == 400
    )


def test_refresh_extends_lifetime_and_zero_deletes() -> None:
    d = Driver(make_handler())
    d.allocate()
    resp = d.request(stun.REFRESH, {stun.LIFETIME: 99999}, T0 + 100)
    assert resp.get(stun.LIFETIME) == 3600
    assert _relay(d).expires == T0 + 3700
    tid = os.urandom(12)
    key = long_term_key("alice", REALM, "s3cret")
    data = stun.Message(
        stun.REFRESH,
        stun.REQUEST,
        tid,
        {
            stun.LIFETIME: 0,
            stun.USERNAME: "alice",
            stun.REALM: REALM,
            stun.NONCE: d.nonce,
        },
    ).encode(key)
    outs = d.feed(data, T0 + 200)
    assert [type(o) for o in outs] == [ToClient, AllocationClosed]
    assert len(d.handler.allocations) == 0


def test_allocations_expire_through_the_timer() -> None:
    h = make_handler()
    d = Driver(h)
    d.allocate()
    assert h.next_deadline() is not None and h.next_deadline() <= T0 + 600  # type: ignore[operator]
    assert h.handle_timer(T0 + 599) == []
    outs = h.handle_timer(T0 + 600)
    assert [type(o) for o in outs] == [AllocationClosed]
    assert h.stats()["turn_total_allocations"] == 0
    assert h.stats()["turn_allocations_expired"] == 1


def test_bandwidth_cap_drops_excess() -> None:
    d = Driver(make_handler(max_bps=1000))
    d.allocate()
    d.request(stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4001, stun.XOR_PEER_ADDRESS: PEER}, T0)
    frame = b"\x40\x01\x01\x90" + b"x" * 400
    passed = sum(d.handler.channel_data(d.ft, frame, T0) is not None for _ in range(10))
    assert passed == 2  # 1000 bytes of burst = two 400-byte packets
    assert d.handler.channel_data(d.ft, frame, T0 + 1) is not None


def test_stats_count_relayed_packets_and_bytes() -> None:
    d = Driver(make_handler())
    d.allocate()
    d.request(stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4001, stun.XOR_PEER_ADDRESS: PEER}, T0)
    d.handler.channel_data(d.ft, b"\x40\x01\x00\x04abcd", T0)
    d.handler.peer_data(_relay(d), b"xyz", PEER, T0)
    s = d.handler.stats()
    assert (s["turn_traffic_rcvp"], s["turn_traffic_rcvb"]) == (1, 4)
    assert (s["turn_traffic_peer_sentp"], s["turn_traffic_peer_sentb"]) == (1, 4)
    assert (s["turn_traffic_peer_rcvp"], s["turn_traffic_sentp"], s["turn_traffic_sentb"]) == (
        1,
        1,
        3,
    )
    assert s["turn_total_allocations"] == 1


def test_software_attribute_only_when_configured() -> None:
    d = Driver(make_handler(software="parley-turn"))
    assert d.request(stun.BINDING, {}, T0, auth=False).get(stun.SOFTWARE) == "parley-turn"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_handler_never_raises_on_garbage(data: bytes) -> None:
    h = make_handler()
    h.handle(data, CLIENT, T0)
    h.handle(b"\x00\x03" + data, CLIENT, T0)


def test_allocate_retransmitted_while_relay_is_being_bound_is_not_doubled() -> None:
    h = make_handler()
    d = Driver(h)
    challenge = d.request(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17}, T0, auth=False)
    tid = os.urandom(12)
    key = long_term_key("alice", REALM, "s3cret")
    attrs = {
        stun.REQUESTED_TRANSPORT: 17,
        stun.USERNAME: "alice",
        stun.REALM: REALM,
        stun.NONCE: challenge.get(stun.NONCE),
    }
    data = stun.Message(stun.ALLOCATE, stun.REQUEST, tid, attrs).encode(key)
    [request] = h.handle(data, CLIENT, T0)
    assert isinstance(request, RelayRequest)
    assert h.handle(data, CLIENT, T0 + 0.1) == []  # still binding: dropped, client retransmits
    outs = h.relay_bound(request, ("127.0.0.1", 50000), T0 + 0.2)
    reply = [o for o in outs if isinstance(o, ToClient)][0]
    [again] = h.handle(data, CLIENT, T0 + 0.5)
    assert isinstance(again, ToClient) and again.data == reply.data
    assert len(h.allocations) == 1


def test_closed_allocation_is_flagged_for_shell_caches() -> None:
    d = Driver(make_handler())
    d.allocate()
    d.request(stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: 0x4001, stun.XOR_PEER_ADDRESS: PEER}, T0)
    alloc = _relay(d)
    assert d.handler.channel_peer(alloc, 0x4001, 3, T0) == PEER
    d.handler.connection_lost(d.ft)
    assert alloc.closed
    assert d.handler.channel_peer(alloc, 0x4001, 3, T0) is None
