"""coturn's turnutils_uclient (a real, independent TURN client) against our server, with
turnutils_peer as the UDP echo peer on loopback. Skipped only if the coturn tools are absent."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from parley.turn.credentials import rest_credentials
from parley.turn.server import TurnServer
from tests.turn.conftest import SECRET

UCLIENT = shutil.which("turnutils_uclient")
PEER = shutil.which("turnutils_peer")
pytestmark = [
    pytest.mark.coturn,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        UCLIENT is None or PEER is None,
        reason="coturn's turnutils_uclient/turnutils_peer not installed (apt-get install coturn)",
    ),
]
ServerFactory = Callable[..., AbstractAsyncContextManager[TurnServer]]
MESSAGES, CLIENTS = 40, 5


def free_udp_pair() -> int:
    """A port p with p and p+1 free on 127.0.0.1 (turnutils_peer binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port pair")


@pytest.fixture
async def coturn_peer() -> AsyncIterator[int]:
    assert PEER is not None
    port = free_udp_pair()
    proc = await asyncio.create_subprocess_exec(
        PEER,
        "-L",
        "127.0.0.1",
        "-p",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.3)
    try:
        yield port
    finally:
        proc.terminate()
        await proc.wait()


async def run_uclient(args: list[str]) -> str:
    assert UCLIENT is not None
    proc = await asyncio.create_subprocess_exec(
        UCLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 50)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace")


def check_no_loss(output: str, expected: int) -> None:
    lost = re.search(r"Total lost packets (\d+)", output)
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", output, re.M)
    assert lost and totals, output[-2000:]
    sent, received = (int(x) for x in totals[-1])
    assert (sent, received, int(lost.group(1))) == (expected, expected, 0), output[-2000:]


def common(port: int, peer: int) -> list[str]:
    return [
        "-c",
        "-p",
        str(port),
        "-e",
        "127.0.0.1",
        "-r",
        str(peer),
        "-X",
        "-n",
        str(MESSAGES),
        "-m",
        str(CLIENTS),
        "-l",
        "170",
    ]


async def test_uclient_over_tcp_with_rest_secret(
    turn_server: ServerFactory, coturn_peer: int
) -> None:
    async with turn_server(realm="bench.local") as server:
        out = await run_uclient(
            ["-t", "-u", "bench", "-W", SECRET, *common(server.tcp_port, coturn_peer), "127.0.0.1"]
        )
        check_no_loss(out, MESSAGES * CLIENTS)
        stats = server.stats()
        assert stats["turn_allocations_created"] >= CLIENTS
        assert stats["turn_traffic_peer_sentp"] >= MESSAGES * CLIENTS
        assert stats["turn_traffic_sentp"] >= MESSAGES * CLIENTS


async def test_uclient_over_udp_with_computed_rest_credentials(
    turn_server: ServerFactory, coturn_peer: int
) -> None:
    user, password = rest_credentials(SECRET, "bench", ttl=600, now=time.time())
    async with turn_server(realm="bench.local") as server:
        out = await run_uclient(
            ["-u", user, "-w", password, *common(server.udp_port, coturn_peer), "127.0.0.1"]
        )
        check_no_loss(out, MESSAGES * CLIENTS)


async def test_uclient_send_indications_over_udp(
    turn_server: ServerFactory, coturn_peer: int
) -> None:
    async with turn_server(realm="bench.local") as server:
        out = await run_uclient(
            [
                "-s",
                "-u",
                "alice",
                "-w",
                "s3cret",
                *common(server.udp_port, coturn_peer),
                "127.0.0.1",
            ]
        )
        check_no_loss(out, MESSAGES * CLIENTS)


async def test_uclient_over_tls(
    turn_server: ServerFactory, coturn_peer: int, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    async with turn_server(realm="bench.local", tls_cert=str(cert), tls_key=str(key)) as server:
        assert server.tls_port is not None
        out = await run_uclient(
            [
                "-t",
                "-S",
                "-u",
                "alice",
                "-w",
                "s3cret",
                *common(server.tls_port, coturn_peer),
                "127.0.0.1",
            ]
        )
        check_no_loss(out, MESSAGES * CLIENTS)
