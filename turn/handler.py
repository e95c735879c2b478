"""The sans-I/O TURN request handler (RFC 8656 on RFC 8489).

Inputs: bytes from a client with their :class:`FiveTuple` (:meth:`TurnHandler.handle`), datagrams
from a peer arriving on a relay socket (:meth:`TurnHandler.peer_data`), a relay socket bound or not
(:meth:`relay_bound` / :meth:`relay_failed`), a closed client connection
(:meth:`connection_lost`) and timer ticks (:meth:`next_deadline` / :meth:`handle_timer`).
Outputs: :class:`ToClient`, :class:`ToPeer`, :class:`RelayRequest`, :class:`AllocationCreated`,
:class:`AllocationClosed`. Time is always an argument; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import stun
from .allocation import Address, Allocation, AllocationTable, FiveTuple
from .config import TurnConfig
from .credentials import AuthResult, LongTermAuth, NonceFactory
from .errors import ProtocolError, StunError
from .metrics import Counters
from .policy import PeerPolicy

logger = logging.getLogger(__name__)

UDP_PROTOCOL = 17
CACHE_SECONDS = 40.0  # RFC 8489 §6.3.1: ~ Ti = 39.5 s
CACHE_MAX = 50_000
PRUNE_INTERVAL = 5.0
SOURCES_MAX = 10_000
"""Source addresses whose unauthenticated-answer budget is remembered (oldest forgotten first)."""

AuthCallback = Callable[[str, str, float], Sequence[AuthResult]]


@dataclass(slots=True)
class ToClient:
    """Send ``data`` to the client identified by ``five_tuple``."""

    five_tuple: FiveTuple
    data: bytes


@dataclass(slots=True)
class ToPeer:
    """Send ``data`` from ``allocation``'s relay socket to ``peer``."""

    allocation: Allocation
    peer: Address
    data: bytes


@dataclass(slots=True)
class RelayRequest:
    """Event: bind a UDP relay socket, then call :meth:`TurnHandler.relay_bound` or ``relay_failed``."""

    five_tuple: FiveTuple
    family: int  # 4 or 6
    even_port: bool
    message: stun.Message
    auth: AuthResult
    username: str
    lifetime: int


@dataclass(slots=True)
class AllocationCreated:
    """Event: ``allocation`` now exists (the shell may attach its relay socket as ``handle``)."""

    allocation: Allocation


@dataclass(slots=True)
class AllocationClosed:
    """Event: ``allocation`` is gone; close its relay socket."""

    allocation: Allocation
    reason: str


Output = ToClient | ToPeer | RelayRequest | AllocationCreated | AllocationClosed


class _Unauthorized(ProtocolError):
    """401/438 answers carry REALM and NONCE."""


class SourceBudget:
    """Per source IP token buckets for answers to unauthenticated requests (sans-I/O: the time is
    an argument). Bounded: the least recently seen sources are forgotten first."""

    def __init__(self, rate: float, burst: float, max_sources: int = SOURCES_MAX) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, source: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        buckets = self._buckets
        entry = buckets.pop(source, None)
        if entry is None:
            tokens = self.burst
            while len(buckets) >= self.max_sources:
                del buckets[next(iter(buckets))]
        else:
            tokens = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
        allowed = tokens >= 1.0
        buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class TurnHandler:
    """TURN server core. ``auth`` maps (username, realm, now) to candidate keys (default: config)."""

    def __init__(
        self,
        config: TurnConfig,
        auth: AuthCallback | None = None,
        nonce_key: bytes | None = None,
        policy: PeerPolicy | None = None,
    ) -> None:
        self.config = config
        self.realm = config.realm
        self.auth: AuthCallback = auth or LongTermAuth(dict(config.users), config.secrets)
        self.nonces = NonceFactory(nonce_key or os.urandom(32), config.nonce_lifetime)
        self.policy = policy or PeerPolicy(
            config.allowed_peers, config.general_relay, config.allow_loopback_peers
        )
        self.allocations = AllocationTable()
        self.counters = Counters()
        self.relay_family = ipaddress.ip_address(config.relay_address).version
        self.advertised_host = config.relay_advertised_address or config.relay_address
        self._cache: dict[tuple[FiveTuple, bytes], tuple[float, bytes]] = {}
        self._deadline: float | None = None
        self._rng = random.Random()
        #: 5-tuples whose relay socket is being bound (between RelayRequest and relay_bound),
        #: with the quota account they count against
        self._pending: dict[FiveTuple, str] = {}
        self.unauthenticated = SourceBudget(
            config.unauthenticated_rate, config.unauthenticated_burst
        )
        #: answers to unauthenticated requests dropped by the per-source budget
        self.unauthenticated_dropped = 0

    # ------------------------------------------------------------------ inputs

    def handle(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Output]:
        """Process one STUN message or ChannelData from a client."""
        if data and (data[0] & 0xC0) == 0x40:
            out = self.channel_data(five_tuple, data, now)
            return [ToPeer(*out)] if out is not None else []
        try:
            msg = stun.parse(data)
        except StunError as exc:
            self.counters.malformed_messages += 1
            logger.debug("< %s malformed: %s", five_tuple, exc)
            return []
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("< %s %r", five_tuple, msg)
        if msg.cls == stun.REQUEST:
            return self._request(msg, five_tuple, now)
        if msg.cls == stun.INDICATION and msg.method == stun.SEND:
            return self._send_indication(msg, five_tuple, now)
        return []

    def channel_data(
        self, five_tuple: FiveTuple, data: bytes, now: float
    ) -> tuple[Allocation, Address, bytes] | None:
        """Fast path for ChannelData from a client: (allocation, peer, payload) or None to drop."""
        if len(data) < 4:
            return None
        length = (data[2] << 8) | data[3]
        if length > len(data) - 4:
            return None
        route = self.channel_route(five_tuple, (data[0] << 8) | data[1], length, now)
        if route is None:
            return None
        return route[0], route[1], data[4 : 4 + length]

    def channel_route(
        self, five_tuple: FiveTuple, number: int, length: int, now: float
    ) -> tuple[Allocation, Address] | None:
        """Where ChannelData ``number`` with ``length`` payload bytes goes, or None to drop."""
        alloc = self.allocations.by_tuple.get(five_tuple)
        if alloc is None:
            return None
        peer = self.channel_peer(alloc, number, length, now)
        return None if peer is None else (alloc, peer)

    def channel_peer(
        self, alloc: Allocation, number: int, length: int, now: float
    ) -> Address | None:
        """The peer for ChannelData ``number`` on ``alloc`` (counted), or None to drop.

        The shells call this directly with an allocation they cached for the client, so the
        per-packet path neither hashes a 5-tuple nor copies the payload more than once.
        """
        channel = alloc.channels.get(number)
        counters = self.counters
        if (
            channel is None
            or channel.expires <= now
            or alloc.closed
            or not alloc.admit(length, now)
        ):
            counters.dropped_packets += 1
            return None
        counters.traffic_rcvp += 1
        counters.traffic_rcvb += length
        counters.traffic_peer_sentp += 1
        counters.traffic_peer_sentb += length
        return channel.peer

    def peer_data(self, alloc: Allocation, data: bytes, peer: Address, now: float) -> bytes | None:
        """A datagram from ``peer`` on ``alloc``'s relay socket: bytes for the client, or None."""
        counters = self.counters
        counters.traffic_peer_rcvp += 1
        counters.traffic_peer_rcvb += len(data)
        channel = alloc.peer_channels.get(peer)
        size = len(data)
        if channel is not None and channel.expires > now:
            if not alloc.admit(size, now):
                counters.dropped_packets += 1
                return None
            out = struct.pack("!HH", channel.number, size) + data
            if alloc.stream and size & 3:
                out += b"\x00" * (4 - (size & 3))
        else:
            expires = alloc.permissions.get(peer[0])
            if expires is None or expires <= now or not alloc.admit(size, now):
                counters.dropped_packets += 1
                return None
            tid = self._rng.getrandbits(96).to_bytes(12, "big")
            msg = stun.Message(
                stun.DATA,
                stun.INDICATION,
                tid,
                {stun.XOR_PEER_ADDRESS: peer, stun.DATA_ATTR: data},
            )
            out = msg.encode(fingerprint=self.config.fingerprint)
        counters.traffic_sentp += 1
        counters.traffic_sentb += size
        return out

    def relay_bound(self, request: RelayRequest, relay: Address, now: float) -> list[Output]:
        """The shell bound ``relay`` for ``request``: create the allocation and answer success."""
        ft = request.five_tuple
        self._pending.pop(ft, None)
        msg = request.message
        alloc = Allocation(
            self.allocations.new_id(),
            ft,
            request.username,
            request.auth.account,
            request.auth.key,
            relay,
            (self.advertised_host, relay[1]),
            now + request.lifetime,
            self.config.max_bps,
            now,
        )
        self.allocations.add(alloc)
        self.counters.allocations_created += 1
        self._lower_deadline(alloc.expires)
        logger.info(
            "%r created relay %s:%d lifetime %ds", alloc, *alloc.advertised, request.lifetime
        )
        attrs: dict[int, Any] = {
            stun.XOR_RELAYED_ADDRESS: alloc.advertised,
            stun.LIFETIME: request.lifetime,
            stun.XOR_MAPPED_ADDRESS: ft.client,
        }
        data = self._respond(msg, stun.SUCCESS, attrs, alloc.key)
        self._remember(ft, msg, data, now)
        return [AllocationCreated(alloc), ToClient(ft, data)]

    def relay_failed(self, request: RelayRequest, now: float) -> list[Output]:
        """No relay port could be bound: 508 Insufficient Capacity."""
        self._pending.pop(request.five_tuple, None)
        logger.warning("no relay port free for %s", request.five_tuple)
        data = self._error(request.message, ProtocolError(508), request.auth.key)
        self._remember(request.five_tuple, request.message, data, now)
        return [ToClient(request.five_tuple, data)]

    def connection_lost(self, five_tuple: FiveTuple) -> list[Output]:
        """A TCP/TLS client connection closed: its allocation goes with it (RFC 8656 §3.1)."""
        alloc = self.allocations.by_tuple.get(five_tuple)
        if alloc is None:
            return []
        return self._close(alloc, "connection closed")

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` should next be called (absolute time), or None."""
        return self._deadline

    def handle_timer(self, now: float) -> list[Output]:
        """Expire allocations, permissions, channels and cached responses due by ``now``."""
        outputs: list[Output] = []
        nxt: float | None = None
        for alloc in self.allocations:
            if alloc.expires <= now:
                self.counters.allocations_expired += 1
                outputs.extend(self._close(alloc, "expired"))
                continue
            due = alloc.prune(now)
            nxt = due if nxt is None or due < nxt else nxt
        for key, (expires, _) in list(self._cache.items()):
            if expires <= now:
                del self._cache[key]
        if self._cache:
            prune = now + PRUNE_INTERVAL
            nxt = prune if nxt is None or prune < nxt else nxt
        self._deadline = nxt
        return outputs

    def stats(self) -> dict[str, int]:
        """Counters named like coturn's Prometheus metrics."""
        self.counters.total_allocations = len(self.allocations)
        stats = self.counters.as_dict()
        stats["turn_unauthenticated_dropped"] = self.unauthenticated_dropped
        return stats

    # ------------------------------------------------------------------ requests

    def _request(self, msg: stun.Message, ft: FiveTuple, now: float) -> list[Output]:
        if msg.method == stun.BINDING:
            if not self._budget(ft, now):
                return []
            attrs: dict[int, Any] = {stun.XOR_MAPPED_ADDRESS: ft.client}
            return [ToClient(ft, self._respond(msg, stun.SUCCESS, attrs, None))]
        cached = self._cache.get((ft, msg.transaction_id))
        if cached is not None and cached[0] > now:
            return [ToClient(ft, cached[1])]
        alloc = self.allocations.by_tuple.get(ft)
        try:
            auth, username = self._authenticate(msg, ft, alloc, now)
        except _Unauthorized as exc:
            if exc.code == 401:
                self.counters.auth_failures += 1
            if not self._budget(ft, now):
                return []
            return [ToClient(ft, self._challenge(msg, exc, ft, now))]
        except ProtocolError as exc:
            return [ToClient(ft, self._error(msg, exc, None))]
        try:
            unknown = stun.unknown_comprehension_required(msg)
            if unknown:
                err = self._error(
                    msg, ProtocolError(420), auth.key, {stun.UNKNOWN_ATTRIBUTES: unknown}
                )
                return [ToClient(ft, err)]
            if msg.method == stun.ALLOCATE:
                outputs = self._allocate(msg, ft, alloc, auth, username, now)
            elif alloc is None:
                raise ProtocolError(437)
            elif msg.method == stun.REFRESH:
                outputs = self._refresh(msg, ft, alloc, now)
            elif msg.method == stun.CREATE_PERMISSION:
                outputs = self._create_permission(msg, ft, alloc, now)
            elif msg.method == stun.CHANNEL_BIND:
                outputs = self._channel_bind(msg, ft, alloc, now)
            else:
                raise ProtocolError(400, "Unsupported method")
        except ProtocolError as exc:
            if exc.code == 403:
                self.counters.peer_refused += 1
            data = self._error(msg, exc, auth.key)
            self._remember(ft, msg, data, now)
            return [ToClient(ft, data)]
        for out in outputs:
            if isinstance(out, ToClient):
                self._remember(ft, msg, out.data, now)
        return outputs

    def _authenticate(
        self, msg: stun.Message, ft: FiveTuple, alloc: Allocation | None, now: float
    ) -> tuple[AuthResult, str]:
        """Long-term credential check (RFC 8489 §9.2.4); raises 400/401/438/441."""
        if stun.MESSAGE_INTEGRITY not in msg and stun.MESSAGE_INTEGRITY_SHA256 not in msg:
            raise _Unauthorized(401)
        username = msg.get(stun.USERNAME)
        realm = msg.get(stun.REALM)
        nonce = msg.get(stun.NONCE)
        if username is None or realm is None or nonce is None:
            raise ProtocolError(400, "Missing USERNAME, REALM or NONCE")
        if not self.nonces.check(nonce, _who(ft), now):
            raise _Unauthorized(438)
        if alloc is not None and username == alloc.username:
            # requests on an existing allocation reuse its key: a REST username that expires during
            # a call does not kill the call (eturnal's default, non-strict expiry)
            if msg.check_integrity(alloc.key):
                return AuthResult(alloc.key, alloc.account), username
            raise _Unauthorized(401)
        if realm != self.realm:
            raise _Unauthorized(401)
        for candidate in self.auth(username, realm, now):
            if msg.check_integrity(candidate.key):
                if alloc is not None:
                    raise ProtocolError(441)
                return candidate, username
        raise _Unauthorized(401)

    def _allocate(
        self,
        msg: stun.Message,
        ft: FiveTuple,
        alloc: Allocation | None,
        auth: AuthResult,
        username: str,
        now: float,
    ) -> list[Output]:
        """RFC 8656 §7.2."""
        if alloc is not None:
            raise ProtocolError(437)
        transport = msg.get(stun.REQUESTED_TRANSPORT)
        if transport is None:
            raise ProtocolError(400, "Missing REQUESTED-TRANSPORT")
        if transport != UDP_PROTOCOL:
            raise ProtocolError(442)
        family = msg.get(stun.REQUESTED_ADDRESS_FAMILY)
        if stun.RESERVATION_TOKEN in msg:
            if stun.EVEN_PORT in msg or family is not None:
                raise ProtocolError(400, "RESERVATION-TOKEN with EVEN-PORT or address family")
            raise ProtocolError(508, "No such reservation")
        wanted = {None: 4, stun.FAMILY_IPV4: 4, stun.FAMILY_IPV6: 6}.get(family)
        if wanted is None or wanted != self.relay_family:
            raise ProtocolError(440)
        if ft in self._pending:
            return []  # a retransmission while the relay is being bound: it will get the cache
        if len(self.allocations) + len(self._pending) >= self.config.total_quota:
            raise ProtocolError(486)
        pending = sum(1 for account in self._pending.values() if account == auth.account)
        if self.allocations.count(auth.account) + pending >= self.config.user_quota:
            logger.info("allocation quota of %r reached (%d)", username, self.config.user_quota)
            raise ProtocolError(486)
        requested = msg.get(stun.LIFETIME)
        lifetime = self.config.default_lifetime
        if requested is not None:
            lifetime = max(lifetime, min(requested, self.config.max_lifetime))
        even = bool(msg.get(stun.EVEN_PORT, 0) & 0x80) if stun.EVEN_PORT in msg else False
        self._pending[ft] = auth.account
        return [RelayRequest(ft, wanted, even, msg, auth, username, lifetime)]

    def _refresh(
        self, msg: stun.Message, ft: FiveTuple, alloc: Allocation, now: float
    ) -> list[Output]:
        """RFC 8656 §7.3."""
        family = msg.get(stun.REQUESTED_ADDRESS_FAMILY)
        if family is not None and {1: 4, 2: 6}.get(family) != self.relay_family:
            raise ProtocolError(443)
        requested = msg.get(stun.LIFETIME)
        if requested is None:
            lifetime = self.config.default_lifetime
        else:
            lifetime = min(requested, self.config.max_lifetime)
        data = self._respond(msg, stun.SUCCESS, {stun.LIFETIME: lifetime}, alloc.key)
        if lifetime == 0:
            return [ToClient(ft, data), *self._close(alloc, "released by client")]
        alloc.expires = now + lifetime
        return [ToClient(ft, data)]

    def _check_peer(self, alloc: Allocation, peer: Address, with_port: bool) -> None:
        allowed = self.policy.allows(peer) if with_port else self.policy.allows_ip(peer[0])
        if not allowed:
            logger.info("%r refused peer %s", alloc, peer[0])
            raise ProtocolError(403, "Forbidden IP")
        if ipaddress.ip_address(peer[0]).version != self.relay_family:
            raise ProtocolError(443)

    def _create_permission(
        self, msg: stun.Message, ft: FiveTuple, alloc: Allocation, now: float
    ) -> list[Output]:
        """RFC 8656 §9."""
        peers: list[Address] = msg.get_all(stun.XOR_PEER_ADDRESS)
        if not peers:
            raise ProtocolError(400, "Missing XOR-PEER-ADDRESS")
        for peer in peers:
            self._check_peer(alloc, peer, with_port=False)
        new = {p[0] for p in peers} - alloc.permissions.keys()
        if len(alloc.permissions) + len(new) > self.config.max_permissions:
            raise ProtocolError(508, "Too many permissions")
        expires = now + self.config.permission_lifetime
        for peer in peers:
            alloc.permissions[peer[0]] = expires
        self._lower_deadline(expires)
        return [ToClient(ft, self._respond(msg, stun.SUCCESS, {}, alloc.key))]

    def _channel_bind(
        self, msg: stun.Message, ft: FiveTuple, alloc: Allocation, now: float
    ) -> list[Output]:
        """RFC 8656 §11.2: binds a channel and installs/refreshes the peer's permission."""
        number = msg.get(stun.CHANNEL_NUMBER)
        peer = msg.get(stun.XOR_PEER_ADDRESS)
        if number is None or peer is None:
            raise ProtocolError(400, "Missing CHANNEL-NUMBER or XOR-PEER-ADDRESS")
        # RFC 5766 §11 allows 0x4000–0x7FFF (its §11.2 says 0x7FFE, RFC 8656 narrowed it to
        # 0x4FFF); coturn's clients pick any number up to 0x7FFF, so we accept the whole range.
        if not 0x4000 <= number <= 0x7FFF:
            raise ProtocolError(400, "Channel number out of range")
        self._check_peer(alloc, peer, with_port=True)
        existing = alloc.channels.get(number)
        if existing is not None and existing.peer != peer:
            raise ProtocolError(400, "Channel bound to another peer")
        other = alloc.peer_channels.get(peer)
        if other is not None and other.number != number:
            raise ProtocolError(400, "Peer bound to another channel")
        if existing is None and len(alloc.channels) >= self.config.max_channels:
            raise ProtocolError(508, "Too many channels")
        if (
            peer[0] not in alloc.permissions
            and len(alloc.permissions) >= self.config.max_permissions
        ):
            raise ProtocolError(508, "Too many permissions")
        alloc.bind_channel(number, peer, now + self.config.channel_lifetime)
        alloc.permissions[peer[0]] = now + self.config.permission_lifetime
        self._lower_deadline(now + self.config.permission_lifetime)
        return [ToClient(ft, self._respond(msg, stun.SUCCESS, {}, alloc.key))]

    def _send_indication(self, msg: stun.Message, ft: FiveTuple, now: float) -> list[Output]:
        """RFC 8656 §10.2: relay DATA to a permitted peer; anything else is dropped silently."""
        alloc = self.allocations.by_tuple.get(ft)
        peer = msg.get(stun.XOR_PEER_ADDRESS)
        data = msg.get(stun.DATA_ATTR)
        counters = self.counters
        if alloc is None or peer is None or data is None:
            counters.dropped_packets += 1
            return []
        if (
            not alloc.permitted(peer, now)
            or not self.policy.allows(peer)
            or not alloc.admit(len(data), now)
        ):
            counters.dropped_packets += 1
            return []
        counters.traffic_rcvp += 1
        counters.traffic_rcvb += len(data)
        counters.traffic_peer_sentp += 1
        counters.traffic_peer_sentb += len(data)
        return [ToPeer(alloc, peer, data)]

    # ------------------------------------------------------------------ helpers

    def _close(self, alloc: Allocation, reason: str) -> list[Output]:
        if not self.allocations.remove(alloc):
            return []
        logger.info("%r closed: %s", alloc, reason)
        return [AllocationClosed(alloc, reason)]

    def _lower_deadline(self, when: float) -> None:
        if self._deadline is None or when < self._deadline:
            self._deadline = when

    def _remember(self, ft: FiveTuple, msg: stun.Message, data: bytes, now: float) -> None:
        cache = self._cache
        if len(cache) >= CACHE_MAX:
            del cache[next(iter(cache))]
        cache[(ft, msg.transaction_id)] = (now + CACHE_SECONDS, data)
        self._lower_deadline(now + PRUNE_INTERVAL)

    def _respond(
        self, msg: stun.Message, cls: int, attrs: dict[int, Any], key: bytes | None
    ) -> bytes:
        if self.config.software is not None:
            attrs[stun.SOFTWARE] = self.config.software
        reply = stun.Message(msg.method, cls, msg.transaction_id, attrs)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("> %r", reply)
        return reply.encode(key, fingerprint=self.config.fingerprint)

    def _budget(self, ft: FiveTuple, now: float) -> bool:
        """Whether an answer to an unauthenticated request from ``ft``'s address may go out."""
        if self.unauthenticated.allow(ft.client[0], now):
            return True
        self.unauthenticated_dropped += 1
        return False

    def _challenge(self, msg: stun.Message, exc: ProtocolError, ft: FiveTuple, now: float) -> bytes:
        """A 401/438 as small as RFC 8489 §9.2.4 allows: ERROR-CODE with an empty reason
        phrase (§14.8 lets it be anything), REALM and a 16-character NONCE; no SOFTWARE; a
        FINGERPRINT only when the request carried one. Anyone can trigger it with a spoofed
        source, so it must not amplify."""
        attrs: dict[int, Any] = {
            stun.ERROR_CODE: stun.ErrorCode(exc.code, ""),
            stun.REALM: self.realm,
            stun.NONCE: self.nonces.make(_who(ft), now),
        }
        reply = stun.Message(msg.method, stun.ERROR, msg.transaction_id, attrs)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("> %r", reply)
        return reply.encode(None, fingerprint=stun.FINGERPRINT in msg)

    def _error(
        self,
        msg: stun.Message,
        exc: ProtocolError,
        key: bytes | None,
        extra: dict[int, Any] | None = None,
    ) -> bytes:
        attrs: dict[int, Any] = {stun.ERROR_CODE: stun.ErrorCode(exc.code, exc.reason)}
        if extra:
            attrs.update(extra)
        return self._respond(msg, stun.ERROR, attrs, key)


def _who(ft: FiveTuple) -> str:
    return f"{ft.client[0]}:{ft.client[1]}"
