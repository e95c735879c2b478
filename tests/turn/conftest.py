"""Fixtures for the TURN tests: a running server on loopback (port 0), a UDP echo peer, a TLS cert."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from parley.turn.config import TurnConfig
from parley.turn.server import TurnServer

SECRET = "test-shared-secret"
USER = ("alice", "s3cret")


def make_config(**overrides: Any) -> TurnConfig:
    base = TurnConfig(
        host="127.0.0.1",
        port=0,
        tls_port=0,
        realm="parley.test",
        secrets=(SECRET,),
        users=(USER,),
        relay_address="127.0.0.1",
        relay_port_min=0,
        relay_port_max=0,
        allowed_peers=("127.0.0.1/32",),
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def turn_server() -> Callable[..., AbstractAsyncContextManager[TurnServer]]:
    """``async with turn_server(**config_overrides) as server``."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[TurnServer]:
        server = TurnServer(make_config(**overrides))
        await server.start()
        try:
            yield server
        finally:
            await server.close()

    return run


class EchoPeer(asyncio.DatagramProtocol):
    """A UDP peer that records what it gets and echoes it back."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.echo = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


@pytest.fixture
async def echo_peer() -> AsyncIterator[EchoPeer]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(EchoPeer, local_addr=("127.0.0.1", 0))
    yield peer
    transport.close()
