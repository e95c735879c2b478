"""Media sockets read in batches: a UDP datagram transport whose socket callback is the compiled
packet path's :class:`Reader` (relay/_accel.c).

uvloop reads a UDP socket one ``recvmsg`` per datagram (plus one that finds it empty) and calls
the protocol once per datagram. This transport registers the socket with ``loop.add_reader``
instead; on each wakeup the reader takes up to 32 datagrams with one ``recvmmsg`` and hands them
to ``protocol.datagram_received(data, addr)`` one by one, as uvloop would, and what their
fan-outs protect is sent at the end of the batch: one ``sendmmsg`` per destination, equal-size
packets to one destination as one UDP GSO message.

Only with the compiled path (:data:`AVAILABLE`); the pure-Python twin keeps the event loop's own
datagram transport. Everything else about the socket (``sendto`` of DTLS, STUN and RTCP,
``close``, ``get_extra_info``) is an ordinary non-blocking socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from . import accel

logger = logging.getLogger(__name__)

AVAILABLE = accel.Reader is not None and os.environ.get("PARLEY_NO_BATCHING", "") in ("", "0")
"""Whether media sockets are read in batches: the compiled path is in use (and
``PARLEY_NO_BATCHING=1``, a benchmark's switch, does not turn it off)."""


class BatchedDatagramTransport(asyncio.DatagramTransport):
    """A UDP socket read by :class:`accel.Reader`; ``sendto`` is a non-blocking ``sendto``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._closing = False
        self._reader: Any = accel.Reader(self._fd, protocol)
        self._taken_before = 0
        self._extra = {"socket": sock, "sockname": sock.getsockname(), "peername": None}

    def _start(self) -> None:
        self._loop.add_reader(self._fd, self._reader)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> Any:
        return self._protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol
        reader = accel.Reader(self._fd, protocol)
        reader.fast = self._reader.fast
        if not self._closing:
            self._loop.add_reader(self._fd, reader)
        self._reader.close()
        self._taken_before += self._reader.taken
        self._reader = reader

    @property
    def fast(self) -> Any:
        """The :class:`accel.FastIn` that takes this socket's SRTP packets, or None."""
        return self._reader.fast

    @fast.setter
    def fast(self, fast: Any) -> None:
        self._reader.fast = fast

    @property
    def taken(self) -> int:
        """Datagrams the fast path took, which the protocol never saw."""
        return int(self._taken_before + self._reader.taken)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return  # as uvloop: a closed transport drops what it is given
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass  # a full send buffer loses the datagram, as UDP does
        except OSError as exc:
            self._protocol.error_received(exc)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._reader.close()
        self._loop.call_soon(self._finish_close)

    def abort(self) -> None:
        self.close()

    def _finish_close(self) -> None:
        try:
            self._protocol.connection_lost(None)
        finally:
            self._sock.close()


async def create_batched_endpoint(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], Any],
    local_addr: tuple[str, int],
    family: int = 0,
) -> tuple[BatchedDatagramTransport, Any]:
    """``loop.create_datagram_endpoint(factory, local_addr=...)`` with a batched reader.
    Raises ``OSError`` when the address cannot be bound."""
    if not family:
        family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(local_addr)
    except OSError:
        sock.close()
        raise
    protocol = factory()
    transport = BatchedDatagramTransport(loop, sock, protocol)
    try:
        protocol.connection_made(transport)
        transport._start()
    except BaseException:
        with contextlib.suppress(OSError):
            transport.close()
        raise
    return transport, protocol
