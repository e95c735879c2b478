"""The service under test: ``parley serve`` started on loopback (or a ``--url``), and the HTTP
calls the orchestrator makes to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_session() -> aiohttp.ClientSession:
    """No connection limit (every participant holds a WebSocket open); bounded handshakes."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )


async def wait_healthy(
    url: str,
    proc: asyncio.subprocess.Process,
    what: str,
    timeout: float = 10.0,  # noqa: ASYNC109
    path: str = "/healthz",
) -> None:
    """Wait (at most about ``timeout`` s) until ``url`` + ``path`` answers 200."""
    async with http_session() as http:
        for _ in range(int(timeout / 0.05)):
            if proc.returncode is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}{path}") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout:g} s")


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class Service:
    url: str
    api_key: str
    pid: int | None
    """The relay process when we started it (CPU and RSS are read from it)."""


@contextlib.asynccontextmanager
async def relay_service(
    log_dir: str,
    sessions: int,
    log_level: str = "WARNING",
    workers: int = 1,
    cpus: set[int] | None = None,
) -> AsyncIterator[Service]:
    """``python -m parley.signaling serve`` on loopback with the embedded TURN server;
    ``--workers`` always (the default is one per core); pinned to ``cpus`` (sched_setaffinity)
    when given."""
    port, turn_port = free_port(), free_port()
    extra = ["--workers", str(workers)]

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    api_key = secrets.token_urlsafe(16)
    log = open(os.path.join(log_dir, "relay.log"), "ab")  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.signaling",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--turn-port",
        str(turn_port),
        f"--api-key={api_key}",  # a generated key may start with "-"
        "--max-participants",
        "2",
        "--log-level",
        log_level,
        # many participants join from one address in seconds: measure the relay, not the limits
        "--joins-per-minute=0",
        "--sessions-per-minute=0",
        "--data-dir",  # the store and kept secrets of this run, beside its logs
        os.path.join(log_dir, "data"),
        "--recordings-dir",
        os.path.join(log_dir, "recordings"),
        *extra,
        stdout=log,
        stderr=log,
        preexec_fn=pin if cpus else None,  # noqa: PLW1509 - only sched_setaffinity
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, proc, "the relay (see relay.log)", 60.0 if workers > 1 else 10.0)
        yield Service(url=url, api_key=api_key, pid=proc.pid)
    finally:
        await stop_process(proc)


async def create_session(
    http: aiohttp.ClientSession, service: Service, name: str, record: bool = False
) -> dict[str, Any]:
    async with http.post(
        f"{service.url}/api/v1/sessions",
        json={"conversation_id": name, "max_participants": 2, "record": record},
        headers={"Authorization": f"Bearer {service.api_key}"},
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"creating a session: {response.status} {await response.text()}")
        return dict(await response.json())


async def scrape_metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """``url``/metrics as ``{sample name with labels: value}`` (empty when it did not
    answer)."""
    values: dict[str, float] = {}
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(f"{url}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        values[name] = float(value)
    return values
