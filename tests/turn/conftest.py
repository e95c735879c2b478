"""Fixtures for the TURN tests: a running server on loopback (port 0), a UDP echo peer, a TLS cert."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from turn.config import TurnConfig
from turn.server import TurnServer

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


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
