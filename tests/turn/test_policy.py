"""Peer policy: canonicalisation and the always-on deny list, allow-list mode."""

from __future__ import annotations

import ipaddress

import pytest

from parley.turn.policy import PeerPolicy, embedded_ipv4

#: one address of each refused class, in several encodings (coturn-secure-config's probe + §2.3)
REFUSED = [
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "240.0.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fc00::1",
    "fd00::2",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "::169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 -> 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 -> 127.0.0.1
    "2002:7f00:1::1",  # 6to4 -> 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 -> 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45 (obfuscated)
    "2001:0:7f00:1:8000:63bf:3fff:fdd2",  # Teredo with server 127.0.0.1
]
ALLOWED_PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("peer", REFUSED)
def test_general_relay_refuses_every_encoding_of_a_denied_address(peer: str) -> None:
    policy = PeerPolicy(general_relay=True)
    assert not policy.allows_ip(peer)
    assert not policy.allows((peer, 5000))


@pytest.mark.parametrize("peer", ALLOWED_PUBLIC)
def test_general_relay_allows_public_addresses(peer: str) -> None:
    assert PeerPolicy(general_relay=True).allows((peer, 5000))


@pytest.mark.parametrize("peer", REFUSED + ALLOWED_PUBLIC)
def test_allow_list_mode_refuses_everything_not_listed(peer: str) -> None:
    policy = PeerPolicy(allowed=["203.0.113.7/32"])
    assert not policy.allows_ip(peer)


def test_allow_list_entry_wins_over_deny_list_only_in_allow_list_mode() -> None:
    assert PeerPolicy(allowed=["127.0.0.1/32"]).allows(("127.0.0.1", 4000))
    assert not PeerPolicy(allowed=["127.0.0.1/32"]).allows(("::ffff:127.0.0.1", 4000))
    assert not PeerPolicy(allowed=["127.0.0.1/32"], general_relay=True).allows(("127.0.0.1", 4000))


def test_allow_loopback_test_option_lets_loopback_through_general_mode_only() -> None:
    policy = PeerPolicy(general_relay=True, allow_loopback=True)
    assert policy.allows(("127.0.0.1", 4000))
    assert not policy.allows(("169.254.169.254", 80))
    assert not policy.allows(("::ffff:10.0.0.1", 80))


def test_own_listener_sockets_are_refused_even_when_allow_listed() -> None:
    policy = PeerPolicy(allowed=["127.0.0.1/32"], listeners=[("127.0.0.1", 3478)])
    assert not policy.allows(("127.0.0.1", 3478))
    assert policy.allows(("127.0.0.1", 3479))


def test_embedded_ipv4_extraction() -> None:
    def emb(text: str) -> list[str]:
        return [str(a) for a in embedded_ipv4(ipaddress.ip_address(text))]

    assert emb("::ffff:1.2.3.4") == ["1.2.3.4"]
    assert emb("64:ff9b::102:304") == ["1.2.3.4"]
    assert emb("2002:102:304::1") == ["1.2.3.4"]
    assert "192.0.2.45" in emb("2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert emb("2001:4860:4860::8888") == []
