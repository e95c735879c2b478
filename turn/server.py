"""asyncio shell around :class:`turn.handler.TurnHandler`: UDP, TCP and TLS listeners, relay sockets.

The shell only moves bytes: it frames TCP/TLS streams (STUN by its length field, ChannelData padded
to 4 bytes), reads datagrams, binds relay sockets when the core asks, and drives the core's timer
with one task. UDP sockets (listener and relays) are ``create_datagram_endpoint`` protocols (uvloop reads and writes them in C); relay sockets are
bound synchronously from the configured port range and handed to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from . import stun
from .allocation import Address, Allocation, FiveTuple
from .config import TurnConfig
from .errors import ConfigError
from .handler import (
    AllocationClosed,
    AllocationCreated,
    AuthCallback,
    Output,
    RelayRequest,
    ToClient,
    ToPeer,
    TurnHandler,
)
from .metrics import register_prometheus, unregister_prometheus

logger = logging.getLogger(__name__)

MAX_WRITE_BUFFER = 1 << 20  # drop relayed data to a TCP client whose buffer exceeds this
BIND_ATTEMPTS = 200
LISTENER_BUFFER = 4 << 20  # many clients share the UDP listener: absorb bursts (capped by rmem_max)
RELAY_BUFFER = 1 << 20
ALLOCATE_TIMEOUT = (
    60.0  # close TCP/TLS connections that have no allocation after this (coturn: 60 s)
)
TIMER_MAX_SLEEP = 1.0
KEEPALIVE_IDLE = 15
"""Seconds a TCP/TLS client connection may be silent before the kernel probes it."""
KEEPALIVE_INTERVAL = 5
KEEPALIVE_PROBES = 3
USER_TIMEOUT = 20.0
"""Seconds data sent to a TCP/TLS client may stay unacknowledged before the connection is
dropped (TCP_USER_TIMEOUT). A client whose network vanished sends no FIN: without this, and
the keepalive above, its allocations would stay until the kernel gave up retransmitting
(about 15 minutes) or their lifetime ended, and a participant that drops repeatedly would run
into its allocation quota."""


def _set_buffers(sock: socket.socket, size: int) -> None:
    """Ask for larger UDP buffers; the kernel caps them at net.core.[rw]mem_max."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            logger.debug("cannot set socket buffer option %d", option)


def _norm(addr: Any) -> Address:
    return (addr[0], addr[1])


class _UdpListener(asyncio.DatagramProtocol):
    """The UDP listening socket; every datagram is one STUN message or ChannelData."""

    def __init__(self, server: TurnServer) -> None:
        self.server = server
        self.core = server.handler
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("", 0)
        #: client address -> its allocation, so ChannelData skips building/hashing a 5-tuple
        self.allocations: dict[Address, Allocation] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = _norm(transport.get_extra_info("sockname"))

    def sender(self, addr: Address) -> Callable[[bytes], None]:
        transport = self.transport
        assert transport is not None

        def send(data: bytes) -> None:
            transport.sendto(data, addr)

        return send

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(addr) > 2:
            addr = (addr[0], addr[1])
        if data and (data[0] & 0xC0) == 0x40 and len(data) >= 4:
            length = (data[2] << 8) | data[3]
            if length > len(data) - 4:
                return
            alloc = self.allocations.get(addr)
            if alloc is None or alloc.closed:
                alloc = self.core.allocations.by_tuple.get(FiveTuple("udp", addr, self.local))
                if alloc is None:
                    self.allocations.pop(addr, None)
                    return
                self.allocations[addr] = alloc
            peer = self.core.channel_peer(alloc, (data[0] << 8) | data[1], length, time.time())
            if peer is not None:
                alloc.handle.sendto(data[4 : 4 + length], peer)
            return
        ft = FiveTuple("udp", addr, self.local)
        self.server.dispatch(self.core.handle(data, ft, time.time()), self.sender(addr), None)

    def error_received(self, exc: Exception) -> None:
        logger.debug("udp listener error: %s", exc)


class _RelayProtocol(asyncio.DatagramProtocol):
    """A relay socket: datagrams from peers go to the allocation's client."""

    def __init__(self, core: TurnHandler) -> None:
        self.core = core
        self.allocation: Allocation | None = None
        self.send: Callable[[bytes], None] | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        alloc = self.allocation
        if alloc is None:
            return
        if len(addr) > 2:
            addr = (addr[0], addr[1])
        out = self.core.peer_data(alloc, data, addr, time.time())
        if out is not None and self.send is not None:
            self.send(out)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable from a peer
        logger.debug("relay socket error: %s", exc)


def watch_for_dead_peer(sock: Any) -> None:
    """Let the kernel find a client connection whose peer vanished: keepalive probes when it is
    silent, and :data:`USER_TIMEOUT` for data that is never acknowledged (Linux options; where
    one is missing the connection simply lives until its allocation expires)."""
    if sock is None:
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(USER_TIMEOUT * 1000)),
    ]
    for level, option, value in options:
        if option is None:
            continue
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            logger.debug("TURN: socket option %s not set: %s", option, exc)


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS client connection: frames STUN and ChannelData (RFC 8656 §12.5)."""

    def __init__(self, server: TurnServer, kind: str) -> None:
        self.server = server
        self.kind = kind
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ft: FiveTuple | None = None
        self.allocation: Allocation | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast
        self.transport = cast(asyncio.Transport, transport)
        watch_for_dead_peer(transport.get_extra_info("socket"))
        peer = _norm(transport.get_extra_info("peername"))
        local = _norm(transport.get_extra_info("sockname"))
        self.ft = FiveTuple(self.kind, peer, local)
        self.server._connections.add(self)
        self._idle = asyncio.get_running_loop().call_later(ALLOCATE_TIMEOUT, self._check_idle)
        logger.debug("%s connection from %s", self.kind, peer)

    def _check_idle(self) -> None:
        if self.ft is not None and self.ft not in self.server.handler.allocations.by_tuple:
            logger.debug("closing %s connection from %s: no allocation", self.kind, self.ft.client)
            if self.transport is not None:
                self.transport.abort()

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.server.handler.counters.dropped_packets += 1
            return
        transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        ft = self.ft
        assert ft is not None
        core = self.server.handler
        pos = 0
        end = len(data)
        now = time.time()
        while end - pos >= 4:
            first = data[pos]
            length = (data[pos + 2] << 8) | data[pos + 3]
            if (first & 0xC0) == 0x40:  # ChannelData, padded to 4 over streams
                size = 4 + length + (-length % 4)
                if end - pos < size:
                    break
                alloc = self.allocation
                if alloc is None or alloc.closed:
                    alloc = self.allocation = core.allocations.by_tuple.get(ft)
                if alloc is not None:
                    peer = core.channel_peer(alloc, (first << 8) | data[pos + 1], length, now)
                    if peer is not None:
                        alloc.handle.sendto(data[pos + 4 : pos + 4 + length], peer)
                pos += size
                continue
            if first & 0xC0 or length % 4:
                self._garbage("not STUN or ChannelData")
                return
            if end - pos < 8:
                break
            if data[pos + 4 : pos + 8] != stun.COOKIE_BYTES:
                self._garbage("bad magic cookie")
                return
            size = stun.HEADER_LENGTH + length
            if end - pos < size:
                break
            frame = data[pos : pos + size]
            pos += size
            self.server.dispatch(core.handle(frame, ft, now), self.send, self)
        if pos < end:
            buf += data[pos:]

    def _garbage(self, why: str) -> None:
        # DEBUG: anyone can open connections and send garbage (counted in malformed_messages)
        logger.debug(
            "closing %s connection from %s: %s", self.kind, self.ft and self.ft.client, why
        )
        self.server.handler.counters.malformed_messages += 1
        self.buffer.clear()
        if self.transport is not None:
            # close, not abort: answers to the whole requests before the garbage still go out
            # (the write buffer is bounded by MAX_WRITE_BUFFER); nothing more is read
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.server._connections.discard(self)
        if self.ft is not None:
            self.server.dispatch(self.server.handler.connection_lost(self.ft), None, None)
        self.transport = None


class TurnServer:
    """A TURN server: ``await start()``, ``await close()``; ports via :attr:`udp_port` and friends.

    ``auth`` replaces the config's credentials (see :data:`turn.handler.AuthCallback`);
    ``registry`` is a prometheus_client registry (default: the global one when ``metrics`` is True).
    """

    def __init__(
        self,
        config: TurnConfig,
        *,
        auth: AuthCallback | None = None,
        metrics: bool = False,
        registry: Any = None,
    ) -> None:
        self.config = config
        self.handler = TurnHandler(config, auth=auth)
        self._metrics = metrics or registry is not None
        self._registry = registry
        self._collector: Any = None
        self._udp: _UdpListener | None = None
        self._tcp: asyncio.Server | None = None
        self._tls: asyncio.Server | None = None
        self._connections: set[_StreamConnection] = set()
        self._timer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random()
        self._binds: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock, tcp = None, None
        for _ in range(20 if cfg.port == 0 else 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            _set_buffers(sock, LISTENER_BUFFER)
            sock.bind((cfg.host, cfg.port))
            port = sock.getsockname()[1]
            try:
                tcp = await loop.create_server(
                    lambda: _StreamConnection(self, "tcp"), cfg.host, port, reuse_address=True
                )
                break
            except OSError:
                sock.close()
                if cfg.port != 0:
                    raise
        if sock is None or tcp is None:
            raise OSError("could not bind UDP and TCP on the same port")
        self._tcp = tcp
        _, self._udp = await loop.create_datagram_endpoint(lambda: _UdpListener(self), sock=sock)
        if cfg.tls_enabled:
            assert cfg.tls_cert is not None and cfg.tls_port is not None
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load TLS certificate/key: {exc}") from exc
            self._tls = await loop.create_server(
                lambda: _StreamConnection(self, "tls"),
                cfg.host,
                cfg.tls_port,
                ssl=ctx,
                reuse_address=True,
            )
        listeners = [(cfg.host, self.udp_port)]
        if self._tls is not None:
            listeners.append((cfg.host, self.tls_port or 0))
        self.handler.policy.set_listeners(listeners)
        if self._metrics:
            self._collector = register_prometheus(self.stats, self._registry)
        self._timer = loop.create_task(self._run_timer())
        logger.info(
            "TURN server listening on %s udp/tcp %d%s, relay %s, %s peers",
            cfg.host,
            self.udp_port,
            f", tls {self.tls_port}" if self._tls else "",
            cfg.relay_address,
            "general-relay" if cfg.general_relay else "allow-listed",
        )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            try:
                await self._timer
            except asyncio.CancelledError:
                pass
            self._timer = None
        for task in list(self._binds):
            task.cancel()
        if self._binds:
            await asyncio.gather(*self._binds, return_exceptions=True)
        for server in (self._tcp, self._tls):
            if server is not None:
                server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        for alloc in list(self.handler.allocations):
            self.handler.allocations.remove(alloc)
            self._close_relay(alloc)
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
            self._udp = None
        for server in (self._tcp, self._tls):
            if server is not None:
                await server.wait_closed()
        self._tcp = self._tls = None
        unregister_prometheus(self._collector, self._registry)
        self._collector = None
        logger.info("TURN server closed")

    async def __aenter__(self) -> TurnServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def udp_port(self) -> int:
        assert self._udp is not None, "server not started"
        return self._udp.local[1]

    @property
    def tcp_port(self) -> int:
        assert self._tcp is not None, "server not started"
        return int(self._tcp.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        if self._tls is None:
            return None
        return int(self._tls.sockets[0].getsockname()[1])

    def stats(self) -> dict[str, int]:
        """Counters (coturn Prometheus names): allocations, relayed packets/bytes per direction."""
        return self.handler.stats()

    # ----------------------------------------------------------------- core outputs

    def dispatch(
        self,
        outputs: list[Output],
        reply: Callable[[bytes], None] | None,
        conn: _StreamConnection | None,
    ) -> None:
        """Carry out the core's outputs; ``reply`` sends to the client that caused them."""
        for out in outputs:
            if isinstance(out, ToClient):
                if reply is not None:
                    reply(out.data)
            elif isinstance(out, ToPeer):
                handle = out.allocation.handle
                if handle is not None:
                    handle.sendto(out.data, out.peer)
            elif isinstance(out, RelayRequest):
                assert self._loop is not None
                task = self._loop.create_task(self._bind_relay(out, reply, conn))
                self._binds.add(task)
                task.add_done_callback(self._binds.discard)
            elif isinstance(out, AllocationCreated):
                out.allocation.client_send = reply
            elif isinstance(out, AllocationClosed):
                self._close_relay(out.allocation)

    def _open_relay_socket(self, request: RelayRequest) -> socket.socket | None:
        cfg = self.config
        family = socket.AF_INET6 if request.family == 6 else socket.AF_INET
        lo, hi = cfg.relay_port_min, cfg.relay_port_max
        ports: list[int]
        if lo == 0:
            ports = [0]
        else:
            span = hi - lo + 1
            start = self._rng.randrange(span)
            ports = [lo + (start + i) % span for i in range(min(span, BIND_ATTEMPTS))]
            if request.even_port:
                ports = [p for p in ports if p % 2 == 0]
        for port in ports:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((cfg.relay_address, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            _set_buffers(sock, RELAY_BUFFER)
            return sock
        return None

    async def _bind_relay(
        self,
        request: RelayRequest,
        reply: Callable[[bytes], None] | None,
        conn: _StreamConnection | None,
    ) -> None:
        core = self.handler
        sock = self._open_relay_socket(request)
        if sock is None:
            self.dispatch(core.relay_failed(request, time.time()), reply, conn)
            return
        assert self._loop is not None
        try:
            transport, protocol = await self._loop.create_datagram_endpoint(
                lambda: _RelayProtocol(core), sock=sock
            )
        except Exception:
            logger.exception("cannot set up relay socket")
            sock.close()
            self.dispatch(core.relay_failed(request, time.time()), reply, conn)
            return
        relay = _norm(transport.get_extra_info("sockname"))
        outputs = core.relay_bound(request, relay, time.time())
        for out in outputs:
            if isinstance(out, AllocationCreated):
                out.allocation.handle = transport
                protocol.allocation = out.allocation
                protocol.send = reply
        self.dispatch(outputs, reply, conn)
        if conn is not None and conn.transport is None:  # the client left while we were binding
            self.dispatch(core.connection_lost(request.five_tuple), None, None)

    def _close_relay(self, alloc: Allocation) -> None:
        if self._udp is not None and alloc.five_tuple.transport == "udp":
            cached = self._udp.allocations.get(alloc.five_tuple.client)
            if cached is alloc:
                del self._udp.allocations[alloc.five_tuple.client]
        transport = alloc.handle
        if transport is None:
            return
        alloc.handle = None
        transport.close()

    async def _run_timer(self) -> None:
        core = self.handler
        while True:
            deadline = core.next_deadline()
            now = time.time()
            if deadline is None or deadline > now:
                delay = TIMER_MAX_SLEEP if deadline is None else deadline - now
                await asyncio.sleep(min(TIMER_MAX_SLEEP, delay))
                continue
            try:
                self.dispatch(core.handle_timer(now), None, None)
            except Exception:  # never let the timer die
                logger.exception("TURN timer failed")
                await asyncio.sleep(TIMER_MAX_SLEEP)
