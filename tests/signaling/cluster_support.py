"""A real ``redis-server`` on a loopback port in a temporary folder (Debian's ``redis-server``;
``scripts/setup.sh test`` installs it) and cluster nodes: ``parley serve --redis-url`` processes
with their own HTTP host and media address, sharing one PostgreSQL store and the secrets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.media_client import wait_for
from tests.signaling.store_serve import ParleyProcess, RejoiningParticipant, free_port


class RedisServer:
    """``redis-server`` with no persistence (``--save '' --appendonly no``), restartable on the
    same port (a stopped registry comes back empty, as a Redis without persistence does)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError(
                "redis-server is missing: run scripts/setup.sh test (Debian package redis-server)"
            )
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "redis-server exited at start"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def shared_secrets(*data_dirs: Path) -> None:
    """The same API key, token, TURN and webhook secrets in each node's data directory (a
    cluster's nodes share them: a join URL made by one verifies on every other)."""
    values = {
        "api-key": "pk_" + secrets.token_urlsafe(24),
        "token-secret": secrets.token_urlsafe(32),
        "turn-secret": secrets.token_urlsafe(24),
        "webhook-secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
    }
    for folder in data_dirs:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, value in values.items():
            path = folder / name
            path.write_text(value + "\n")
            path.chmod(0o600)


class ClusterNode(ParleyProcess):
    """One node: HTTP and media on its own loopback address. No TURN: the participants reach
    the media address directly (a participant's peer connections close at once when their node
    is gone, instead of retrying TURN deallocations to it for many seconds)."""

    def __init__(self, data_dir: Path, address: str, *extra: str) -> None:
        super().__init__(
            data_dir,
            "--host",
            address,
            "--media-address",
            address,
            "--workers",
            "1",
            "--turn-port",
            "0",
            *extra,
        )
        self.address = address
        self.base_url = f"http://{address}:{self.port}"
        self.redis_url = extra[extra.index("--redis-url") + 1] if "--redis-url" in extra else ""

    async def health(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.base_url}/healthz") as response:
            assert response.status == 200, await response.text()
            data: dict[str, Any] = await response.json()
            return data

    def kill_all(self, worker_pids: list[int], sig: int = signal.SIGKILL) -> None:
        """``kill -9`` of the node (or another signal, SIGSTOP: frozen): its control process and
        media workers at once."""
        assert self.proc is not None
        for pid in [self.proc.pid, *worker_pids]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


async def wait_until(check: Any, timeout: float) -> Any:  # noqa: ASYNC109
    """Poll the async ``check`` until it returns something true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


NODE_A, NODE_B = "127.0.0.2", "127.0.0.3"


@dataclasses.dataclass
class Cluster:
    redis: RedisServer
    a: ClusterNode
    b: ClusterNode


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path, database_url: str, *extra: str) -> AsyncIterator[Cluster]:
    """A real redis-server and two nodes (A on 127.0.0.2, B on 127.0.0.3) sharing it and the
    PostgreSQL database ``database_url``; both see each other live when this yields."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    if not (tmp_path / "a" / "api-key").exists():  # or made by the caller beforehand
        shared_secrets(tmp_path / "a", tmp_path / "b")
    flags = ("--redis-url", redis.url, "--database-url", database_url, *extra)
    a = ClusterNode(tmp_path / "a", NODE_A, *flags)
    b = ClusterNode(tmp_path / "b", NODE_B, *flags)
    try:
        await asyncio.gather(a.start(), b.start())
        async with aiohttp.ClientSession() as http:

            async def both_live() -> bool:
                seen = [len((await n.health(http))["cluster"]["nodes"]) for n in (a, b)]
                return seen == [2, 2]

            assert await wait_until(both_live, 10), (a.output + b.output).decode()[-3000:]
        yield Cluster(redis, a, b)
    finally:
        await a.stop()
        await b.stop()
        redis.stop()


async def create(
    http: aiohttp.ClientSession, node: ClusterNode, name: str, **options: Any
) -> aiohttp.ClientResponse:
    return await http.post(
        f"{node.base_url}/api/v1/sessions",
        json={"conversation_id": name, **options},
        headers=node.auth(),
    )


async def create_on(
    http: aiohttp.ClientSession, via: ClusterNode, target: ClusterNode
) -> dict[str, Any]:
    """Create sessions through ``via`` until one is placed on ``target`` (as the session map in
    Redis says); at most four. Its join URLs name ``via``, the node the API client used."""
    target_id = (await target.health(http))["cluster"]["node_id"]
    redis = aioredis.Redis.from_url(via.redis_url)
    try:
        for i in range(4):
            async with await create(http, via, f"chat-{i}") as response:
                assert response.status == 201, await response.text()
                data: dict[str, Any] = await response.json()
            assert data["agent_url"].startswith(via.base_url + "/join/"), data
            assert data["customer_url"].startswith(via.base_url + "/join/"), data
            owner = await redis.get(f"parley:session:{data['session_id']}")
            if owner == target_id.encode():
                return data
    finally:
        await redis.aclose()
    raise AssertionError("no session was placed on the other node")


@contextlib.asynccontextmanager
async def call_on(
    http: aiohttp.ClientSession,
    via: ClusterNode,
    owner: ClusterNode,
    customer_via: ClusterNode | None = None,
) -> AsyncIterator[tuple[dict[str, Any], RejoiningParticipant, RejoiningParticipant]]:
    """A session placed on ``owner`` through ``via``: its agent joins through ``via``, its
    customer through ``customer_via`` (default ``via``), and both talk before this yields
    ``(session, agent, customer)``; they rejoin by themselves as pages do, and leave at the end."""
    session = await create_on(http, via, owner)
    agent = RejoiningParticipant(via.base_url, session["agent_url"], "Ann")
    customer = RejoiningParticipant((customer_via or via).base_url, session["customer_url"], "Carl")
    try:
        agent.start()
        customer.start()
        assert await wait_for(lambda: in_call(agent, customer), timeout=40), (
            owner.output.decode()[-3000:]
        )
        yield session, agent, customer
    finally:
        await agent.close()
        await customer.close()


def in_call(a: RejoiningParticipant, b: RejoiningParticipant, frames: int = 10) -> bool:
    return all(
        x.frames_from(y, kind) >= frames for x, y in ((a, b), (b, a)) for kind in ("audio", "video")
    )


def video_frames(a: RejoiningParticipant, b: RejoiningParticipant) -> int:
    return min(a.frames_from(b, "video"), b.frames_from(a, "video"))
