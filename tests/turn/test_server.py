"""Functional tests: real sockets on loopback, aioice as the TURN client, our own test client."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint

from parley.turn import stun
from parley.turn.credentials import rest_credentials
from parley.turn.server import TurnServer
from tests.media_client import wait_for
from tests.turn.client import TurnTestClient
from tests.turn.conftest import SECRET, USER, EchoPeer

pytestmark = pytest.mark.timeout(30)
ServerFactory = Callable[..., AbstractAsyncContextManager[TurnServer]]


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))


def client_tls_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def exchange_via_aioice(
    server_addr: tuple[str, int],
    peer: EchoPeer,
    transport: str,
    username: str,
    password: str,
    ssl_ctx: ssl.SSLContext | None = None,
    count: int = 20,
) -> None:
    turn_t, sink = await create_turn_endpoint(
        Sink, server_addr, username, password, transport=transport, ssl=ssl_ctx
    )
    try:
        relay = turn_t.get_extra_info("sockname")
        assert relay[0] == "127.0.0.1"
        for i in range(count):
            payload = f"packet {i} ".encode() * (i + 1)
            turn_t.sendto(payload, peer.address)
            got, frm = await asyncio.wait_for(peer.received.get(), 2)
            assert got == payload and frm == relay
            echoed, src = await asyncio.wait_for(sink.queue.get(), 2)
            assert echoed == payload and src == peer.address
    finally:
        turn_t.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_aioice_allocates_and_relays_over_udp_and_tcp(
    turn_server: ServerFactory, echo_peer: EchoPeer, transport: str
) -> None:
    async with turn_server() as server:
        await exchange_via_aioice(("127.0.0.1", server.udp_port), echo_peer, transport, *USER)
        stats = server.stats()
        assert stats["turn_allocations_created"] == 1
        assert stats["turn_traffic_peer_sentp"] == 20 and stats["turn_traffic_sentp"] == 20


async def test_aioice_relays_over_tls(
    turn_server: ServerFactory, echo_peer: EchoPeer, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    async with turn_server(tls_cert=str(cert), tls_key=str(key)) as server:
        assert server.tls_port and server.tls_port != server.udp_port
        await exchange_via_aioice(
            ("127.0.0.1", server.tls_port), echo_peer, "tcp", *USER, client_tls_context(cert)
        )
        assert server.stats()["turn_traffic_sentp"] == 20


async def test_aioice_with_rest_api_credentials(
    turn_server: ServerFactory, echo_peer: EchoPeer
) -> None:
    import time

    username, password = rest_credentials(SECRET, "participant-1", ttl=3600, now=time.time())
    async with turn_server(users=()) as server:
        await exchange_via_aioice(
            ("127.0.0.1", server.udp_port), echo_peer, "tcp", username, password, count=3
        )


async def test_many_aioice_clients_at_once_over_tcp(turn_server: ServerFactory) -> None:
    loop = asyncio.get_running_loop()

    async def one(server_addr: tuple[str, int]) -> None:
        transport, peer = await loop.create_datagram_endpoint(EchoPeer, local_addr=("127.0.0.1", 0))
        try:
            await exchange_via_aioice(server_addr, peer, "tcp", *USER, count=2)
        finally:
            transport.close()

    async with turn_server() as server:
        await asyncio.gather(*(one(("127.0.0.1", server.udp_port)) for _ in range(20)))
        assert server.stats()["turn_allocations_created"] == 20


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_create_permission_and_send_data_indications(
    turn_server: ServerFactory,
    echo_peer: EchoPeer,
    tls_files: tuple[Path, Path],
    transport: str,
) -> None:
    cert, key = tls_files
    async with turn_server(tls_cert=str(cert), tls_key=str(key)) as server:
        port = server.tls_port if transport == "tls" else server.udp_port
        assert port is not None
        async with TurnTestClient(
            ("127.0.0.1", port), *USER, transport=transport, ssl_context=client_tls_context(cert)
        ) as client:
            alloc = await client.allocate()
            assert alloc.cls == stun.SUCCESS
            relay = alloc.get(stun.XOR_RELAYED_ADDRESS)
            # before any permission, Send indications are dropped
            client.send_indication(echo_peer.address, b"too early")
            await asyncio.sleep(0.2)
            assert echo_peer.received.empty()
            perm = await client.create_permission(echo_peer.address)
            assert perm.cls == stun.SUCCESS
            for size in (1, 5, 100, 1200):
                client.send_indication(echo_peer.address, b"s" * size)
                data, src = await asyncio.wait_for(echo_peer.received.get(), 2)
                assert data == b"s" * size and src == relay
                ind = await client.next_indication()
                assert isinstance(ind, stun.Message)
                assert (ind.method, ind.cls) == (stun.DATA, stun.INDICATION)
                assert ind.get(stun.DATA_ATTR) == b"s" * size
                assert ind.get(stun.XOR_PEER_ADDRESS) == echo_peer.address
            # ChannelData both ways, odd sizes (padding over streams)
            assert (await client.channel_bind(0x4123, echo_peer.address)).cls == stun.SUCCESS
            for size in (1, 2, 3, 4, 7):
                client.send_channel_data(0x4123, b"c" * size)
                data, _ = await asyncio.wait_for(echo_peer.received.get(), 2)
                assert data == b"c" * size
                ind = await client.next_indication()
                assert ind == stun.ChannelData(0x4123, b"c" * size)


async def test_several_peers_in_one_create_permission(
    turn_server: ServerFactory, echo_peer: EchoPeer
) -> None:
    async with turn_server(allowed_peers=("127.0.0.0/8",)) as server:
        async with TurnTestClient(("127.0.0.1", server.udp_port), *USER) as client:
            await client.allocate()
            resp = await client.create_permission(("127.0.0.2", 1), echo_peer.address)
            assert resp.cls == stun.SUCCESS
            alloc = next(iter(server.handler.allocations))
            assert set(alloc.permissions) == {"127.0.0.2", "127.0.0.1"}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_no_credentials_gets_401_with_realm_and_nonce(
    turn_server: ServerFactory, transport: str
) -> None:
    async with turn_server() as server:
        async with TurnTestClient(("127.0.0.1", server.udp_port), transport=transport) as client:
            data, tid = client.build(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17}, auth=False)
            resp = await client.transact(data, tid)
            assert resp.get(stun.ERROR_CODE).code == 401
            assert resp.get(stun.REALM) == "parley.test" and resp.get(stun.NONCE)
            assert len(server.handler.allocations) == 0


async def test_bad_password_and_expired_rest_username_get_401(turn_server: ServerFactory) -> None:
    import time

    expired, expired_pw = rest_credentials(SECRET, "bob", ttl=1, now=time.time() - 10)
    async with turn_server() as server:
        for user, pw in (("alice", "wrong"), (expired, expired_pw), ("nobody", "x")):
            async with TurnTestClient(("127.0.0.1", server.udp_port), user, pw) as client:
                resp = await client.allocate()
                assert resp.get(stun.ERROR_CODE).code == 401, user
        assert len(server.handler.allocations) == 0


@pytest.mark.parametrize("general", [False, True])
async def test_refused_peers_get_403_over_the_wire(
    turn_server: ServerFactory, general: bool
) -> None:
    peers = [
        "127.0.0.2",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "2001:0:7f00:1:8000:63bf:3fff:fdd2",
        "10.1.2.3",
        "fc00::1",
    ]
    async with turn_server(general_relay=general) as server:
        async with TurnTestClient(("127.0.0.1", server.udp_port), *USER, "tcp") as client:
            assert (await client.allocate()).cls == stun.SUCCESS
            for i, peer in enumerate(peers):
                resp = await client.create_permission((peer, 4000))
                assert resp.get(stun.ERROR_CODE).code == 403, peer
                resp = await client.channel_bind(0x4000 + i, (peer, 4000))
                assert resp.get(stun.ERROR_CODE).code == 403, peer
            # the server's own listener is refused even though 127.0.0.1 is allow-listed
            if not general:
                resp = await client.channel_bind(0x4100, ("127.0.0.1", server.udp_port))
                assert resp.get(stun.ERROR_CODE).code == 403


async def test_tcp_relay_request_gets_442_and_quota_486(turn_server: ServerFactory) -> None:
    async with turn_server(user_quota=1) as server:
        addr = ("127.0.0.1", server.udp_port)
        async with TurnTestClient(addr, *USER, "tcp") as a, TurnTestClient(addr, *USER) as b:
            resp = await a.allocate({stun.REQUESTED_TRANSPORT: 6})
            assert resp.get(stun.ERROR_CODE).code == 442
            assert (await a.allocate()).cls == stun.SUCCESS
            assert (await b.allocate()).get(stun.ERROR_CODE).code == 486


async def test_retransmitted_request_gets_identical_cached_response(
    turn_server: ServerFactory,
) -> None:
    async with turn_server() as server:
        async with TurnTestClient(("127.0.0.1", server.udp_port), *USER) as client:
            await client.allocate()  # learn the nonce
            await client.request(stun.REFRESH, {stun.LIFETIME: 0})
            data, tid = client.build(stun.ALLOCATE, {stun.REQUESTED_TRANSPORT: 17})
            first = await client.transact(data, tid)
            second = await client.transact(data, tid)
            assert first.cls == stun.SUCCESS
            assert first.raw == second.raw
            assert len(server.handler.allocations) == 1


async def test_stream_framing_coalesced_and_split_messages(turn_server: ServerFactory) -> None:
    async with turn_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        try:
            tids = [os.urandom(12) for _ in range(5)]
            msgs = [stun.Message(stun.BINDING, stun.REQUEST, t).encode() for t in tids]
            writer.write(b"".join(msgs[:3]))  # three in one segment
            for byte in msgs[3] + msgs[4][:7]:  # one split byte by byte, then a partial one
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)
            writer.write(msgs[4][7:])
            got: list[stun.Message] = []
            buf = b""
            while len(got) < 5:
                buf += await asyncio.wait_for(reader.read(4096), 2)
                while len(buf) >= 20 and len(buf) >= stun.message_length(buf):
                    n = stun.message_length(buf)
                    got.append(stun.parse(buf[:n]))
                    buf = buf[n:]
            assert [m.transaction_id for m in got] == tids
            assert all(m.cls == stun.SUCCESS for m in got)
        finally:
            writer.close()


async def test_garbage_on_tcp_closes_only_that_connection(
    turn_server: ServerFactory, echo_peer: EchoPeer
) -> None:
    async with turn_server() as server:
        addr = ("127.0.0.1", server.udp_port)
        async with (
            TurnTestClient(addr, *USER, "tcp") as good,
            TurnTestClient(addr, *USER, "tcp") as bad,
        ):
            assert (await good.allocate()).cls == stun.SUCCESS
            assert (await bad.allocate()).cls == stun.SUCCESS
            assert (await good.channel_bind(0x4001, echo_peer.address)).cls == stun.SUCCESS
            assert len(server.handler.allocations) == 2
            bad.send_raw(b"\xff\xfeGET / HTTP/1.1\r\n\r\n")
            await asyncio.wait_for(bad.closed.wait(), 2)
            for _ in range(50):  # the bad connection's allocation goes away with it
                if len(server.handler.allocations) == 1:
                    break
                await asyncio.sleep(0.02)
            assert len(server.handler.allocations) == 1
            good.send_channel_data(0x4001, b"still here")
            data, _ = await asyncio.wait_for(echo_peer.received.get(), 2)
            assert data == b"still here"
            assert await good.next_indication() == stun.ChannelData(0x4001, b"still here")
            # a STUN-looking frame with a bad magic cookie also closes the connection
            async with TurnTestClient(addr, *USER, "tcp") as bad2:
                bad2.send_raw(b"\x00\x01\x00\x00" + b"\x00" * 16)
                await asyncio.wait_for(bad2.closed.wait(), 2)


async def test_relay_ports_come_from_the_configured_range(turn_server: ServerFactory) -> None:
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    base = probe.getsockname()[1]
    probe.close()
    lo, hi = (base, base + 3) if base + 3 <= 65535 else (base - 3, base)
    async with turn_server(relay_port_min=lo, relay_port_max=hi) as server:
        addr = ("127.0.0.1", server.udp_port)
        ports = []
        for _ in range(2):
            async with TurnTestClient(addr, *USER, "tcp") as c:
                resp = await c.allocate()
                if resp.cls == stun.SUCCESS:
                    ports.append(resp.get(stun.XOR_RELAYED_ADDRESS)[1])
        assert ports and all(lo <= p <= hi for p in ports)


async def test_prometheus_registry_exposes_coturn_named_metrics(
    turn_server: ServerFactory, echo_peer: EchoPeer
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    from tests.turn.conftest import make_config

    server = TurnServer(make_config(), registry=registry)
    await server.start()
    try:
        await exchange_via_aioice(("127.0.0.1", server.udp_port), echo_peer, "udp", *USER, count=3)
        assert registry.get_sample_value("turn_traffic_sentp_total") == 3
        assert registry.get_sample_value("turn_traffic_peer_sentb_total") is not None
        assert registry.get_sample_value("turn_allocations_created_total") == 1
        for _ in range(50):  # aioice releases its allocation (REFRESH 0) after close()
            if registry.get_sample_value("turn_total_allocations") == 0:
                break
            await asyncio.sleep(0.02)
        assert registry.get_sample_value("turn_total_allocations") == 0
    finally:
        await server.close()
    assert registry.get_sample_value("turn_traffic_sentp_total") is None


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_listener_and_ipv6_relay(turn_server: ServerFactory) -> None:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(EchoPeer, local_addr=("::1", 0))
    try:
        async with turn_server(host="::1", relay_address="::1", allowed_peers=("::1/128",)) as srv:
            async with TurnTestClient(("::1", srv.udp_port), *USER, "tcp") as client:
                v4 = await client.allocate()
                assert v4.get(stun.ERROR_CODE).code == 440  # IPv4 relay asked, IPv6 server
                resp = await client.allocate({stun.REQUESTED_ADDRESS_FAMILY: 2})
                assert resp.cls == stun.SUCCESS
                assert resp.get(stun.XOR_RELAYED_ADDRESS)[0] == "::1"
                assert (await client.channel_bind(0x4000, peer.address)).cls == stun.SUCCESS
                client.send_channel_data(0x4000, b"v6")
                data, _ = await asyncio.wait_for(peer.received.get(), 2)
                assert data == b"v6"
                assert await client.next_indication() == stun.ChannelData(0x4000, b"v6")
                refused = await client.create_permission(("::ffff:127.0.0.1", 1))
                assert refused.get(stun.ERROR_CODE).code == 403
    finally:
        transport.close()


async def test_tcp_connection_without_allocation_is_closed_after_timeout(
    turn_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import parley.turn.server

    monkeypatch.setattr(parley.turn.server, "ALLOCATE_TIMEOUT", 0.3)
    async with turn_server() as server:
        addr = ("127.0.0.1", server.tcp_port)
        async with (
            TurnTestClient(addr, transport="tcp") as idle,
            TurnTestClient(addr, *USER, "tcp") as busy,
        ):
            assert (await busy.allocate()).cls == stun.SUCCESS
            await asyncio.wait_for(idle.closed.wait(), 3)
            await asyncio.sleep(0.2)
            assert not busy.closed.is_set()
            assert (await busy.request(stun.REFRESH, {stun.LIFETIME: 600})).cls == stun.SUCCESS


def _only_loopback_here() -> bool:
    """True in a network namespace of the test's own (only ``lo``): safe to add interfaces."""
    return [name for _index, name in socket.if_nameindex()] == ["lo"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not _only_loopback_here(),
    reason="needs root and a network namespace of its own (scripts/test.sh runs in one)",
)
@pytest.mark.parametrize(
    ("transport", "vanish"), [("tcp", "idle"), ("tcp", "sending"), ("tls", "idle")]
)
async def test_a_tcp_client_whose_network_vanishes_loses_its_allocation_soon(
    turn_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    tls_files: tuple[Path, Path],
    transport: str,
    vanish: str,
) -> None:
    """The client's address disappears (no FIN, no RST reaches the server): keepalive probes
    (idle) or the user timeout (data the server sends is never acknowledged) end the connection,
    and with it the allocation, instead of it lasting until its lifetime or ~15 min."""
    from parley.turn import server as turn_server_module

    monkeypatch.setattr(turn_server_module, "KEEPALIVE_IDLE", 1)
    monkeypatch.setattr(turn_server_module, "KEEPALIVE_INTERVAL", 1)
    monkeypatch.setattr(turn_server_module, "KEEPALIVE_PROBES", 2)
    monkeypatch.setattr(turn_server_module, "USER_TIMEOUT", 3.0)
    address = "10.77.0.1"
    subprocess.run(
        ["ip", "link", "add", "pvanish0", "type", "veth", "peer", "name", "pvanish1"], check=True
    )
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "pvanish0"], check=True)
        subprocess.run(["ip", "link", "set", "pvanish0", "up"], check=True)
        cert, key = tls_files
        async with turn_server(tls_cert=str(cert), tls_key=str(key)) as server:
            port = server.tls_port if transport == "tls" else server.udp_port
            assert port is not None
            client = TurnTestClient(
                ("127.0.0.1", port),
                *USER,
                transport,
                ssl_context=client_tls_context(cert),
                local_addr=(address, 0),
            )
            async with client:
                assert (await client.allocate()).cls == stun.SUCCESS
                assert len(server.handler.allocations) == 1
                subprocess.run(["ip", "link", "del", "pvanish0"], check=True)
                if vanish == "sending":
                    # a request whose answer can no longer be delivered
                    data, _tid = client.build(stun.REFRESH, {stun.LIFETIME: 600})
                    client.send_raw(data)
                gone = await wait_for(lambda: len(server.handler.allocations) == 0, 20)
                assert gone, "the allocation outlived its client's network"
    finally:
        subprocess.run(["ip", "link", "del", "pvanish0"], capture_output=True)
