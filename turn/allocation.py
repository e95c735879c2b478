"""Allocation table: allocations, permissions, channel bindings and their expiry (RFC 8656 §7–§12).

Sans-I/O: times are passed in. The I/O shell may attach an opaque ``handle`` (its relay socket) and
``client_send`` callable to an :class:`Allocation`; the core never calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

Address = tuple[str, int]


class FiveTuple(NamedTuple):
    """Client-side 5-tuple identifying an allocation (RFC 8656 §2): transport, client, server."""

    transport: str  # "udp", "tcp" or "tls"
    client: Address
    server: Address

    def __str__(self) -> str:
        return f"{self.transport}:{self.client[0]}:{self.client[1]}"


class Channel:
    """A channel binding: number ↔ peer transport address, with expiry (RFC 8656 §12)."""

    __slots__ = ("number", "peer", "expires")

    def __init__(self, number: int, peer: Address, expires: float) -> None:
        self.number = number
        self.peer = peer
        self.expires = expires


class Allocation:
    """One relayed transport address owned by one client 5-tuple."""

    __slots__ = (
        "id",
        "five_tuple",
        "username",
        "account",
        "key",
        "relay",
        "advertised",
        "expires",
        "permissions",
        "channels",
        "peer_channels",
        "stream",
        "rate",
        "tokens",
        "tokens_at",
        "handle",
        "client_send",
        "closed",
    )

    def __init__(
        self,
        id: int,
        five_tuple: FiveTuple,
        username: str,
        account: str,
        key: bytes,
        relay: Address,
        advertised: Address,
        expires: float,
        rate: int,
        now: float,
    ) -> None:
        self.id = id
        self.five_tuple = five_tuple
        self.username = username
        self.account = account
        self.key = key
        self.relay = relay
        self.advertised = advertised
        self.expires = expires
        #: peer IP (as the client wrote it) -> expiry
        self.permissions: dict[str, float] = {}
        self.channels: dict[int, Channel] = {}
        self.peer_channels: dict[Address, Channel] = {}
        #: pad ChannelData sent to the client (TCP/TLS, RFC 8656 §12.5)
        self.stream = five_tuple.transport != "udp"
        #: token bucket, bytes per second (0 = unlimited)
        self.rate = rate
        self.tokens = float(rate)
        self.tokens_at = now
        self.handle: Any = None
        self.client_send: Callable[[bytes], Any] | None = None
        #: set when the allocation leaves the table (shells may cache references to it)
        self.closed = False

    def __repr__(self) -> str:
        return f"[alloc {self.id} {self.username} {self.five_tuple}]"

    def permitted(self, peer: Address, now: float) -> bool:
        """Is traffic with ``peer`` allowed: live permission for its IP, or a live channel.

        A bound channel keeps its permission alive (aioice re-binds only every 500 s and never
        sends CreatePermission; coturn behaves the same).
        """
        expires = self.permissions.get(peer[0])
        if expires is not None and expires > now:
            return True
        channel = self.peer_channels.get(peer)
        return channel is not None and channel.expires > now

    def admit(self, size: int, now: float) -> bool:
        """Token bucket check for ``size`` bytes; False means drop (bandwidth cap)."""
        rate = self.rate
        if not rate:
            return True
        tokens = self.tokens + (now - self.tokens_at) * rate
        if tokens > rate:
            tokens = rate
        self.tokens_at = now
        if tokens < size:
            self.tokens = tokens
            return False
        self.tokens = tokens - size
        return True

    def bind_channel(self, number: int, peer: Address, expires: float) -> None:
        channel = self.channels.get(number)
        if channel is None:
            channel = Channel(number, peer, expires)
            self.channels[number] = channel
            self.peer_channels[peer] = channel
        else:
            channel.expires = expires

    def prune(self, now: float) -> float:
        """Drop expired permissions and channels; return the next expiry among those left."""
        nxt = self.expires
        for host, expires in list(self.permissions.items()):
            if expires <= now:
                del self.permissions[host]
            elif expires < nxt:
                nxt = expires
        for number, channel in list(self.channels.items()):
            if channel.expires <= now:
                del self.channels[number]
                self.peer_channels.pop(channel.peer, None)
            elif channel.expires < nxt:
                nxt = channel.expires
        return nxt


class AllocationTable:
    """All allocations, indexed by client 5-tuple and by relay address, with per-account counts."""

    def __init__(self) -> None:
        self.by_tuple: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}
        self.per_account: dict[str, int] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self.by_tuple)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self.by_tuple.values()))

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def add(self, allocation: Allocation) -> None:
        self.by_tuple[allocation.five_tuple] = allocation
        self.by_relay[allocation.relay] = allocation
        self.per_account[allocation.account] = self.per_account.get(allocation.account, 0) + 1

    def remove(self, allocation: Allocation) -> bool:
        """Remove ``allocation``; False if it was already gone."""
        if self.by_tuple.get(allocation.five_tuple) is not allocation:
            return False
        del self.by_tuple[allocation.five_tuple]
        allocation.closed = True
        self.by_relay.pop(allocation.relay, None)
        left = self.per_account.get(allocation.account, 1) - 1
        if left:
            self.per_account[allocation.account] = left
        else:
            self.per_account.pop(allocation.account, None)
        return True

    def count(self, account: str) -> int:
        return self.per_account.get(account, 0)
