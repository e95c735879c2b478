"""Start and restart a real ``parley serve`` process, and participants that rejoin by
themselves after the server went away (as the join page does: same token, growing delays)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tests.signaling.ws_client import WsParticipant

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
"""join.js RETRY_DELAYS_MS (up to 4 s; the page goes on to 8 s)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ParleyProcess:
    """``python -m parley.signaling serve ARGS`` with a fixed port and data directory."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.turn_port = free_port()
        self.data_dir = data_dir
        self.extra = list(extra)
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._pump: asyncio.Task[None] | None = None

    @property
    def api_key(self) -> str:
        return (self.data_dir / "api-key").read_text().strip()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in ("PARLEY_API_KEY", "PARLEY_DATA_DIR", "PARLEY_DATABASE_URL"):
            env.pop(name, None)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley.signaling",
            "serve",
            "--port",
            str(self.port),
            "--turn-port",
            str(self.turn_port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        assert self.proc.stdout is not None
        mark = len(self.output)
        async with asyncio.timeout(30):
            while b"create a session" not in self.output[mark:]:
                line = await self.proc.stdout.readline()
                assert line, self.output.decode()
                self.output += line
        self._pump = asyncio.ensure_future(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.output += line

    async def stop(self, sig: int = signal.SIGINT) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._pump, 5)


class RejoiningParticipant:
    """Joins, publishes, and after the socket closes (anything but "session ended") joins again
    with the same token after the page's delays, with a fresh pair of peer connections."""

    def __init__(self, base_url: str, join_url: str, name: str, **media: Any) -> None:
        self.base_url, self.join_url, self.name, self.media = base_url, join_url, name, media
        self.current: WsParticipant | None = None
        self.joins = 0
        self.rejoined_at: float | None = None
        self._stop = False
        self._task: asyncio.Task[None] | None = None
        self.joined = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        attempt = 0
        while not self._stop:
            participant = WsParticipant(self.base_url, self.join_url, self.name, **self.media)
            try:
                welcome = await participant.join()
                assert welcome["type"] == "welcome", welcome
                await participant.publish()
            except (OSError, ConnectionError, TimeoutError, AssertionError):
                await participant.close()
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
                continue
            attempt = 0
            self.current = participant
            self.joins += 1
            if self.joins > 1:
                self.rejoined_at = time.monotonic()
            self.joined.set()
            await participant.closed.wait()
            if participant.close_code == 4002:
                return
            self.current = None
            await participant.close()
            await asyncio.sleep(RETRY_DELAYS[0])

    def frames_from(self, other: RejoiningParticipant, kind: str) -> int:
        me, them = self.current, other.current
        if me is None or them is None or me.client is None or them.welcome is None:
            return 0
        return me.client.frames_from(them.id, kind)

    async def close(self) -> None:
        self._stop = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.current is not None:
            await self.current.close()
