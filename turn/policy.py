"""Peer address policy: which XOR-PEER-ADDRESS values a client may reach through a relay.

Two modes (see docs/turn.md):

* **allow-list** (default): a peer is allowed only if its address, exactly as the client wrote it,
  lies in one of the configured networks (for parley: the relay's own media addresses). Allow-list
  entries win over the deny list here, so loopback can be allowed explicitly for tests.
* **general relay** (opt-in): any peer except the always-on deny list below, checked after
  canonicalising the address: IPv4-mapped / IPv4-compatible IPv6, NAT64 ``64:ff9b::/96``, 6to4
  ``2002::/16`` and Teredo ``2001::/32`` are judged by the IPv4 address(es) they carry.

In both modes the server's own listener sockets are refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DENIED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",  # includes 255.255.255.255
    )
)
DENIED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): embedding position is not fixed
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPAT = ipaddress.IPv6Network("::/96")


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if ip.version == 4:
        return []
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    out: list[ipaddress.IPv4Address] = []
    packed = ip.packed
    if ip in IPV4_COMPAT and int(ip) > 1:
        out.append(ipaddress.IPv4Address(packed[12:]))
    if ip in NAT64:
        out.append(ipaddress.IPv4Address(packed[12:]))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    return out


def is_denied(ip: IPAddress, allow_loopback: bool = False) -> bool:
    """True if ``ip`` (after canonicalisation) falls in the always-on deny list."""
    candidates: list[IPAddress] = [ip, *embedded_ipv4(ip)]
    for addr in candidates:
        if allow_loopback and any(addr in net for net in LOOPBACK if net.version == addr.version):
            continue
        nets: Iterable[IPNetwork] = DENIED_V4 if addr.version == 4 else DENIED_V6
        if any(addr in net for net in nets):
            return True
    return False


class PeerPolicy:
    """Decides whether a peer address may be used (CreatePermission, ChannelBind, Send).

    ``allowed``: networks for allow-list mode; ``general_relay``: opt-in open mode with the deny
    list; ``allow_loopback``: test-only, lets loopback through the deny list in general mode;
    ``listeners``: the server's own (host, port) sockets, always refused.
    """

    def __init__(
        self,
        allowed: Iterable[str] = (),
        general_relay: bool = False,
        allow_loopback: bool = False,
        listeners: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allowed)
        self.general_relay = general_relay
        self.allow_loopback = allow_loopback
        self.listeners: set[tuple[str, int]] = set(listeners)
        self._check = lru_cache(maxsize=4096)(self._check_ip)

    def set_listeners(self, listeners: Iterable[tuple[str, int]]) -> None:
        self.listeners = set(listeners)

    def _check_ip(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if not self.general_relay:
            return any(ip.version == net.version and ip in net for net in self.allowed)
        return not is_denied(ip, self.allow_loopback)

    def allows_ip(self, host: str) -> bool:
        """Permission check by IP only (CreatePermission)."""
        return self._check(host)

    def allows(self, addr: tuple[str, int]) -> bool:
        """Check a transport address (ChannelBind, Send): IP policy plus own-listener refusal."""
        if not self._check(addr[0]):
            return False
        for host, port in self.listeners:
            if port == addr[1] and (host == addr[0] or host in ("0.0.0.0", "::")):
                return False
        return True
