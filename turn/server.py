"""asyncio shell around :class:`turn.handler.TurnHandler`: UDP, TCP and TLS listeners, relay sockets.

The shell only moves bytes: it frames TCP/TLS streams (STUN by its length field, ChannelData padded
to 4 bytes), reads datagrams, binds relay sockets when the core asks, and drives the core's timer
with one task. UDP sockets (listener and relays) are read with ``loop.add_reader`` and a bounded
non-blocking ``recvfrom`` loop and written with ``sock.sendto``; a full socket buffer drops the
datagram, as UDP would.
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

READ_BATCH = 64  # datagrams read per wake-up, bounded so one socket cannot starve the loop
RECV_SIZE = 65536
MAX_WRITE_BUFFER = 1 << 20  # drop relayed data to a TCP client whose buffer exceeds this
BIND_ATTEMPTS = 200
TIMER_MAX_SLEEP = 1.0


def _norm(addr: Any) -> Address:
    return (addr[0], addr[1])


class _UdpListener:
    """The UDP listening socket; every datagram is one STUN message or ChannelData."""

    def __init__(self, server: TurnServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.local: Address = _norm(sock.getsockname())
        self.senders: dict[Address, Callable[[bytes], None]] = {}

    def sender(self, addr: Address) -> Callable[[bytes], None]:
        sock = self.sock

        def send(data: bytes) -> None:
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self.server.handler.counters.dropped_packets += 1
            except OSError as exc:
                logger.debug("udp send to %s failed: %s", addr, exc)

        return send

    def readable(self) -> None:
        sock = self.sock
        core = self.server.handler
        local = self.local
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                logger.debug("udp listener recv error: %s", exc)
                continue
            if len(addr) > 2:
                addr = (addr[0], addr[1])
            ft = FiveTuple("udp", addr, local)
            now = time.time()
            if data and (data[0] & 0xC0) == 0x40:
                hit = core.channel_data(ft, data, now)
                if hit is not None:
                    alloc, peer, payload = hit
                    try:
                        alloc.handle.sendto(payload, peer)
                    except OSError:
                        core.counters.dropped_packets += 1
                continue
            self.server.dispatch(core.handle(data, ft, now), self.sender(addr))


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS client connection: frames STUN and ChannelData (RFC 8656 §12.5)."""

    def __init__(self, server: TurnServer, kind: str) -> None:
        self.server = server
        self.kind = kind
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ft: FiveTuple | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast
        self.transport = cast(asyncio.Transport, transport)
        peer = _norm(transport.get_extra_info("peername"))
        local = _norm(transport.get_extra_info("sockname"))
        self.ft = FiveTuple(self.kind, peer, local)
        self.server._connections.add(self)
        logger.debug("%s connection from %s", self.kind, peer)

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
        buf += data
        ft = self.ft
        assert ft is not None
        core = self.server.handler
        pos = 0
        end = len(buf)
        now = time.time()
        while end - pos >= 4:
            first = buf[pos]
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            if (first & 0xC0) == 0x40:  # ChannelData, padded to 4 over streams
                size = 4 + length + (-length % 4)
                if end - pos < size:
                    break
                hit = core.channel_data(ft, bytes(buf[pos : pos + 4 + length]), now)
                pos += size
                if hit is not None:
                    alloc, peer, payload = hit
                    try:
                        alloc.handle.sendto(payload, peer)
                    except OSError:
                        core.counters.dropped_packets += 1
                continue
            if first & 0xC0 or length % 4:
                self._garbage("not STUN or ChannelData")
                return
            size = stun.HEADER_LENGTH + length
            if end - pos < 8:
                break
            if buf[pos + 4 : pos + 8] != stun.COOKIE_BYTES:
                self._garbage("bad magic cookie")
                return
            if end - pos < size:
                break
            frame = bytes(buf[pos : pos + size])
            pos += size
            self.server.dispatch(core.handle(frame, ft, now), self.send)
        if pos:
            del buf[:pos]

    def _garbage(self, why: str) -> None:
        logger.info("closing %s connection from %s: %s", self.kind, self.ft and self.ft.client, why)
        self.server.handler.counters.malformed_messages += 1
        self.buffer.clear()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        if self.ft is not None:
            self.server.dispatch(self.server.handler.connection_lost(self.ft), None)
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
        self._udp = _UdpListener(self, sock)
        loop.add_reader(sock, self._udp.readable)
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
        for server in (self._tcp, self._tls):
            if server is not None:
                server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        for alloc in list(self.handler.allocations):
            self.handler.allocations.remove(alloc)
            self._close_relay(alloc)
        if self._udp is not None and self._loop is not None:
            self._loop.remove_reader(self._udp.sock)
            self._udp.sock.close()
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

    def dispatch(self, outputs: list[Output], reply: Callable[[bytes], None] | None) -> None:
        """Carry out the core's outputs; ``reply`` sends to the client that caused them."""
        for out in outputs:
            if isinstance(out, ToClient):
                if reply is not None:
                    reply(out.data)
            elif isinstance(out, ToPeer):
                try:
                    out.allocation.handle.sendto(out.data, out.peer)
                except OSError:
                    self.handler.counters.dropped_packets += 1
            elif isinstance(out, RelayRequest):
                self.dispatch(self._bind_relay(out), reply)
            elif isinstance(out, AllocationCreated):
                out.allocation.client_send = reply
            elif isinstance(out, AllocationClosed):
                self._close_relay(out.allocation)

    def _bind_relay(self, request: RelayRequest) -> list[Output]:
        cfg = self.config
        family = socket.AF_INET6 if request.family == 6 else socket.AF_INET
        lo, hi = cfg.relay_port_min, cfg.relay_port_max
        now = time.time()
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
            relay = _norm(sock.getsockname())
            outputs = self.handler.relay_bound(request, relay, now)
            for out in outputs:
                if isinstance(out, AllocationCreated):
                    alloc = out.allocation
                    alloc.handle = sock
                    assert self._loop is not None
                    self._loop.add_reader(sock, self._relay_readable, alloc)
            return outputs
        return self.handler.relay_failed(request, now)

    def _relay_readable(self, alloc: Allocation) -> None:
        sock: socket.socket = alloc.handle
        core = self.handler
        send = alloc.client_send
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("%r relay recv error: %s", alloc, exc)
                continue
            if len(addr) > 2:
                addr = (addr[0], addr[1])
            out = core.peer_data(alloc, data, addr, time.time())
            if out is not None and send is not None:
                send(out)

    def _close_relay(self, alloc: Allocation) -> None:
        sock = alloc.handle
        if sock is None:
            return
        alloc.handle = None
        if self._loop is not None:
            self._loop.remove_reader(sock)
        sock.close()

    async def _run_timer(self) -> None:
        core = self.handler
        while True:
            deadline = core.next_deadline()
            now = time.time()
            delay = TIMER_MAX_SLEEP if deadline is None else min(TIMER_MAX_SLEEP, deadline - now)
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                self.dispatch(core.handle_timer(time.time()), None)
            except Exception:  # never let the timer die
                logger.exception("TURN timer failed")
