"""The orchestrator's side of the worker RPC: a ``bench.worker`` subprocess per role, called
over its stdin/stdout with length-prefixed pickled ``(id, method, kwargs)`` requests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

HEADER = struct.Struct("!I")


class WorkerProc:
    """A ``bench.worker`` subprocess and its request/reply pipe."""

    def __init__(self, name: str, log_dir: str) -> None:
        self.name = name
        self.log_dir = log_dir
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        log = open(os.path.join(self.log_dir, f"{self.name}.log"), "ab")  # noqa: SIM115
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "parley.bench.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=1 << 26,
            )
        finally:
            log.close()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while True:
                size = HEADER.unpack(await self.proc.stdout.readexactly(HEADER.size))[0]
                call_id, ok, result = pickle.loads(await self.proc.stdout.readexactly(size))
                future = self._pending.pop(call_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(RuntimeError(f"{self.name}: {result}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"{self.name} exited (see its log)"))
                    future.exception()  # awaiting callers still get it; no 'never retrieved'

    async def call(self, method: str, timeout: float = 30, **kwargs: Any) -> Any:  # noqa: ASYNC109
        assert self.proc is not None and self.proc.stdin is not None
        self._ids += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        data = pickle.dumps((self._ids, method, kwargs))
        self.proc.stdin.write(HEADER.pack(len(data)) + data)
        await self.proc.stdin.drain()
        return await asyncio.wait_for(future, timeout)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("close", timeout=10)
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


async def bounded(limit: int, coros: list[Any]) -> None:
    """Run ``coros`` with at most ``limit`` at a time."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


@contextlib.asynccontextmanager
async def worker_pair(log_dir: str, tag: str) -> AsyncIterator[tuple[WorkerProc, WorkerProc]]:
    """A publisher and a subscriber worker, started and stopped together."""
    pub = WorkerProc(f"{tag}-publishers", log_dir)
    sub = WorkerProc(f"{tag}-subscribers", log_dir)
    try:
        await asyncio.gather(pub.start(), sub.start())
        yield pub, sub
    finally:
        await asyncio.gather(pub.stop(), sub.stop(), return_exceptions=True)
