"""``parley bench``: what the relay adds to each packet, and how far one machine goes.

For each N it drives N sessions of two participants, each sending synthetic pre-encoded audio
(50 pps) and video (default 1 Mbit/s at 30 fps) and receiving the other's, first through the
relay (``python -m parley.signaling serve`` started as a subprocess, or ``--url``) and then directly
peer to peer (the floor). Publishers and subscribers run in two worker processes
(``bench.worker``). One-way latency is taken per packet on arrival at the subscriber against the
send time stamped in the payload (same CLOCK_MONOTONIC). Relay-added latency is the through-relay
percentile minus the direct percentile at the same N. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import platform
import secrets
import socket
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy

from .procstat import cpu_seconds, cpu_times, rss_bytes

HEADER = struct.Struct("!I")
PERCENTILES = (50, 95, 99)


# --- options -----------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N,N,..., got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("session counts must be >= 1")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import fuzz

    fuzz.add_arguments(p)  # --fuzz SECONDS: the live fuzz campaign (bench/fuzz.py)
    p.add_argument(
        "--sessions",
        "-n",
        type=_int_list,
        default=[1],
        help="session counts to measure, e.g. 1,5,10,20,40,80 (a sweep); default 1",
    )
    p.add_argument("--sweep", action="store_true", help="shorthand for -n 1,5,10,20,40,80")
    p.add_argument(
        "--capacity",
        action="store_true",
        help="find the largest N with relay-added p99 < --p99-bound and loss < --loss-bound",
    )
    p.add_argument("--p99-bound", type=float, default=20.0, help="ms (capacity mode)")
    p.add_argument("--loss-bound", type=float, default=0.1, help="percent (capacity mode)")
    p.add_argument("--max-sessions", type=int, default=160, help="capacity mode upper limit")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--video-bitrate", type=int, default=1_000_000, help="bit/s per video")
    p.add_argument("--fps", type=int, default=30, help="video frames per second")
    p.add_argument(
        "--turn",
        action="store_true",
        help="clients relay-only through the embedded TURN server over TCP (direct floor too)",
    )
    p.add_argument(
        "--baseline",
        type=int,
        default=0,
        metavar="N",
        help="also measure aiortc MediaRelay (decode + re-encode) with N sessions",
    )
    p.add_argument("--no-direct", action="store_true", help="skip the peer-to-peer floor")
    p.add_argument("--url", default="", help="target a running service instead of starting one")
    p.add_argument("--api-key", default="", help="API key of --url")
    p.add_argument("--json", default="bench-results.json", help="write results here ('' = no)")
    p.add_argument("--plot", default="bench-results.png", help="write the plot here ('' = no)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--relay-log-level", default="WARNING", help="log level of the relay we start (relay.log)"
    )
    p.add_argument(
        "--replot",
        default="",
        metavar="JSON",
        help="only redraw --plot and reprint the table from an earlier --json file",
    )


# --- results -----------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One mode (relay / direct / baseline) at one N."""

    mode: str
    sessions: int
    streams: int = 0
    streams_flowing: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """p50/p95/p99/max of one-way latency, all packets."""
    latency_by_kind_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    timeline_max_ms: list[float] = field(default_factory=list)
    """Worst latency of the packets sent in each 100 ms of the window (stalls vs. queueing)."""
    sent: int = 0
    delivered: int = 0
    delivered_pps: float = 0.0
    loss_pct: float = 0.0
    server_cpu_pct: float | None = None
    """The relay process (all threads), 100 = one core; in direct TURN mode: the TURN server."""
    server_cpu_us_per_packet: float | None = None
    server_rss_mb: float | None = None
    server_system_cpu_pct: float | None = None
    """The kernel's share of the server CPU % (system time: sendto/recvfrom, loopback delivery)."""
    publisher_cpu_pct: float = 0.0
    subscriber_cpu_pct: float = 0.0
    keyframe_requests: int = 0
    added_ms: dict[str, float] = field(default_factory=dict)
    """Baseline rows only: this mode's percentiles minus its own direct floor's."""
    setup_s: float = 0.0
    loadavg: list[float] = field(default_factory=list)
    """The machine's 1-minute load average before and after the window (others' work shows)."""
    notes: list[str] = field(default_factory=list)


@dataclass
class Point:
    sessions: int
    relay: Measurement
    direct: Measurement | None
    added_ms: dict[str, float] = field(default_factory=dict)

    def passes(self, p99_bound: float, loss_bound: float) -> bool:
        added = self.added_ms.get("p99", self.relay.latency_ms.get("p99", 1e9))
        return (
            self.relay.streams_flowing == self.relay.streams
            and added < p99_bound
            and self.relay.loss_pct < loss_bound
        )


def percentiles(values_ns: numpy.ndarray) -> dict[str, float]:
    if values_ns.size == 0:
        return {}
    ms = values_ns / 1e6
    out = {f"p{p}": float(numpy.percentile(ms, p)) for p in PERCENTILES}
    out["max"] = float(ms.max())
    return out


def timeline(
    sent: numpy.ndarray, latency: numpy.ndarray, start: int, end: int, step: int = 100_000_000
) -> list[float]:
    """Max latency (ms) per ``step`` ns of send time over ``[start, end]``."""
    buckets = max(1, (end - start) // step)
    out = numpy.zeros(buckets)
    if sent.size:
        index = numpy.clip((sent - start) // step, 0, buckets - 1)
        numpy.maximum.at(out, index, latency / 1e6)
    return [round(float(x), 2) for x in out]


def added(relay: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    return {k: relay[k] - direct[k] for k in relay if k in direct}


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class Service:
    url: str
    api_key: str
    pid: int | None
    """The relay process when we started it (CPU and RSS are read from it)."""


@contextlib.asynccontextmanager
async def relay_service(
    log_dir: str, sessions: int, log_level: str = "WARNING"
) -> AsyncIterator[Service]:
    """``python -m parley.signaling serve`` on loopback with the embedded TURN server."""
    port, turn_port = free_port(), free_port()
    api_key = secrets.token_urlsafe(16)
    log = open(os.path.join(log_dir, "relay.log"), "ab")  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signaling",
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
        stdout=log,
        stderr=log,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        async with http_session() as http:
            for _ in range(200):
                if proc.returncode is not None:
                    raise RuntimeError(f"the relay exited with {proc.returncode} (see relay.log)")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the relay did not come up in 10 s")
        yield Service(url=url, api_key=api_key, pid=proc.pid)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- signaling (the orchestrator speaks parley's WebSocket protocol) ---------------------------


def http_session() -> aiohttp.ClientSession:
    """No connection limit (every participant holds a WebSocket open); bounded handshakes."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )


class Participant:
    """One participant's WebSocket: its publish connection lives in the publisher worker, its
    subscribe connection in the subscriber worker."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        join_url: str,
        key: str,
        pub: WorkerProc,
        sub: WorkerProc,
        turn: bool,
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.token = join_url.rsplit("/join/", 1)[1]
        self.key = key
        self.pub = pub
        self.sub = sub
        self.turn = turn
        self.ice: dict[str, Any] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.errors: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self) -> None:
        ws_url = self.base_url.replace("http://", "ws://") + "/api/v1/ws"
        self.ws = await self.http.ws_connect(ws_url, heartbeat=None)
        self._reader = asyncio.ensure_future(self._read())
        await self.ws.send_json({"type": "join", "token": self.token, "name": self.key})
        welcome = await asyncio.wait_for(self.welcome, 15)
        if self.turn:
            self.ice = turn_ice(welcome)

    async def publish(self, audio_id: int, video_id: int, bitrate: int, fps: int) -> None:
        assert self.ws is not None
        offer = await self.pub.call(
            "publish_offer",
            key=self.key,
            audio_id=audio_id,
            video_id=video_id,
            bitrate=bitrate,
            fps=fps,
            ice=self.ice,
        )
        await self.ws.send_json(
            {"type": "offer", "pc": "publish", "sdp": offer["sdp"], "sources": offer["sources"]}
        )
        sdp = await asyncio.wait_for(self.answer, 15)
        await self.pub.call("publish_answer", key=self.key, sdp=sdp)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            kind, pc = message.get("type"), message.get("pc")
            if kind == "welcome" and not self.welcome.done():
                self.welcome.set_result(message)
            elif kind == "error":
                self.errors.append(message)
                if not self.welcome.done():
                    self.welcome.set_exception(RuntimeError(f"join failed: {message}"))
            elif kind == "answer" and pc == "publish" and not self.answer.done():
                self.answer.set_result(message["sdp"])
            elif kind == "offer" and pc == "subscribe":
                # answered in order (renegotiations must not overtake each other)
                await self._answer_subscribe(message["sdp"])

    async def _answer_subscribe(self, sdp: str) -> None:
        assert self.ws is not None
        try:
            answer = await self.sub.call("subscribe_answer", key=self.key, sdp=sdp, ice=self.ice)
        except Exception as exc:  # noqa: BLE001 - recorded, the run reports missing streams
            self.errors.append({"type": "error", "message": str(exc)})
            return
        await self.ws.send_json({"type": "answer", "pc": "subscribe", "sdp": answer})

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()


def turn_ice(welcome: dict[str, Any]) -> dict[str, Any]:
    """The welcome's ``?transport=tcp`` TURN URL alone, with its credentials."""
    for server in welcome.get("ice_servers", []):
        urls = server.get("urls", [])
        urls = [urls] if isinstance(urls, str) else urls
        tcp = [u for u in urls if u.startswith("turn:") and u.endswith("transport=tcp")]
        if tcp:
            return {
                "urls": tcp[:1],
                "username": server["username"],
                "credential": server["credential"],
            }
    raise RuntimeError("the welcome message has no turn:...?transport=tcp URL")


async def create_session(
    http: aiohttp.ClientSession, service: Service, name: str
) -> dict[str, Any]:
    async with http.post(
        f"{service.url}/api/v1/sessions",
        json={"conversation_id": name, "max_participants": 2},
        headers={"Authorization": f"Bearer {service.api_key}"},
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"creating a session: {response.status} {await response.text()}")
        return dict(await response.json())


# --- one measurement ---------------------------------------------------------------------------


Progress = Callable[[str], None]


@dataclass
class RunContext:
    args: argparse.Namespace
    log_dir: str
    progress: Progress


@dataclass
class Window:
    """One measurement window: its bounds (monotonic ns) and what the processes spent in it."""

    start: int
    end: int
    cpu: dict[int, float]
    """CPU seconds per pid over the window."""
    elapsed: float
    server_system: float
    """The server's system (kernel) CPU seconds over the window."""
    server_rss: int


async def measure_window(
    ctx: RunContext,
    result: Measurement,
    pub: WorkerProc,
    sub: WorkerProc,
    server_pid: int | None,
) -> Window:
    """Tell both workers the window, wait out the warm-up and the window, and read the CPU
    time every process spent in it (and the server's RSS at its end)."""
    args = ctx.args
    start = time.monotonic_ns() + int(args.warmup * 1e9)
    end = start + int(args.duration * 1e9)
    await asyncio.gather(
        pub.call("set_window", start=start, end=end), sub.call("set_window", start=start, end=end)
    )
    ctx.progress(f"{result.mode} N={result.sessions}: warming up {args.warmup:g} s")
    await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
    pids = [pub.pid, sub.pid] + ([server_pid] if server_pid else [])
    cpu0 = {pid: cpu_seconds(pid) for pid in pids}
    system0 = cpu_times(server_pid)[1] if server_pid else 0.0
    result.loadavg.append(os.getloadavg()[0])
    t0 = time.monotonic()
    ctx.progress(f"{result.mode} N={result.sessions}: measuring {args.duration:g} s")
    await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
    cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in pids}
    system = cpu_times(server_pid)[1] - system0 if server_pid else 0.0
    elapsed = time.monotonic() - t0
    result.loadavg.append(os.getloadavg()[0])
    rss = rss_bytes(server_pid) if server_pid else 0
    return Window(start, end, cpu, elapsed, system, rss)


async def _measure(
    ctx: RunContext,
    result: Measurement,
    pub: WorkerProc,
    sub: WorkerProc,
    expected: set[int],
    server_pid: int | None,
) -> None:
    """Wait for every stream to flow, then measure one window."""
    args = ctx.args
    deadline = time.monotonic() + 15 + 0.5 * result.sessions
    seen: set[int] = set()
    while time.monotonic() < deadline:
        seen = set(await sub.call("seen"))
        if expected <= seen:
            break
        ctx.progress(
            f"{result.mode} N={result.sessions}: {len(seen)}/{len(expected)} streams flowing"
        )
        await asyncio.sleep(0.25)
    result.streams = len(expected)
    result.streams_flowing = len(expected & seen)
    if result.streams_flowing < result.streams:
        result.notes.append(f"only {result.streams_flowing}/{result.streams} streams flowed")
    window = await measure_window(ctx, result, pub, sub, server_pid)
    start, end, cpu, elapsed = window.start, window.end, window.cpu, window.elapsed
    await asyncio.sleep(0.5)  # packets stamped just before the end are still in flight
    pub_report, sub_report = await asyncio.gather(
        pub.call("report", timeout=60), sub.call("report", timeout=60)
    )
    sent = sum(pub_report["sent"].values())
    delivered = sum(sub_report["counts"].values())
    lat = {k: numpy.frombuffer(v, dtype=numpy.int64) for k, v in sub_report["latency"].items()}
    everything = numpy.concatenate(list(lat.values()))
    result.latency_ms = percentiles(everything)
    result.latency_by_kind_ms = {k: percentiles(v) for k, v in lat.items()}
    result.timeline_max_ms = timeline(
        numpy.frombuffer(sub_report["sent_at"], dtype=numpy.int64),
        numpy.frombuffer(sub_report["all_latency"], dtype=numpy.int64),
        start,
        end,
    )
    result.sent = sent
    result.delivered = delivered
    result.delivered_pps = delivered / args.duration
    result.loss_pct = max(0.0, 100.0 * (1 - delivered / sent)) if sent else 100.0
    result.publisher_cpu_pct = 100.0 * cpu[pub.pid] / elapsed
    result.subscriber_cpu_pct = 100.0 * cpu[sub.pid] / elapsed
    result.keyframe_requests = int(pub_report["keyframe_requests"])
    if pub_report["send_errors"]:
        result.notes.append(
            f"{pub_report['send_errors']} packets refused by closed publisher connections "
            f"(counted as lost); last state of each publisher: {pub_report['publisher_states']}"
        )
    if server_pid:
        result.server_cpu_pct = 100.0 * cpu[server_pid] / elapsed
        result.server_system_cpu_pct = 100.0 * window.server_system / elapsed
        result.server_rss_mb = window.server_rss / 2**20
        if delivered:
            result.server_cpu_us_per_packet = 1e6 * cpu[server_pid] / delivered


async def _bounded(limit: int, coros: list[Any]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


@contextlib.asynccontextmanager
async def _workers(ctx: RunContext, tag: str) -> AsyncIterator[tuple[WorkerProc, WorkerProc]]:
    pub = WorkerProc(f"{tag}-publishers", ctx.log_dir)
    sub = WorkerProc(f"{tag}-subscribers", ctx.log_dir)
    try:
        await asyncio.gather(pub.start(), sub.start())
        yield pub, sub
    finally:
        await asyncio.gather(pub.stop(), sub.stop(), return_exceptions=True)


async def measure_relay(ctx: RunContext, service: Service, n: int) -> Measurement:
    args = ctx.args
    result = Measurement(mode="relay", sessions=n)
    async with _workers(ctx, f"relay-{n}") as (pub, sub), http_session() as http:
        participants: list[Participant] = []
        t = time.monotonic()
        try:
            ctx.progress(f"relay N={n}: creating sessions")
            for i in range(n):
                session = await create_session(http, service, f"bench-{n}-{i}-{time.time_ns()}")
                for j, url in enumerate((session["agent_url"], session["customer_url"])):
                    participants.append(
                        Participant(http, service.url, url, f"s{i}p{j}", pub, sub, args.turn)
                    )
            ctx.progress(f"relay N={n}: joining {len(participants)} participants")
            await _bounded(8, [p.join() for p in participants])
            await _bounded(
                8,
                [
                    p.publish(2 * k, 2 * k + 1, args.video_bitrate, args.fps)
                    for k, p in enumerate(participants)
                ],
            )
            result.setup_s = time.monotonic() - t
            expected = set(range(2 * len(participants)))
            await _measure(ctx, result, pub, sub, expected, service.pid)
            errors = [e for p in participants for e in p.errors]
            if errors:
                result.notes.append(f"{len(errors)} signaling errors, first: {errors[0]}")
        finally:
            await asyncio.gather(*(p.close() for p in participants), return_exceptions=True)
    return result


async def measure_direct(
    ctx: RunContext, n: int, turn: list[dict[str, Any]] | None, server_pid: int | None
) -> Measurement:
    """The floor: the same clients, publisher connection straight to the subscriber's."""
    args = ctx.args
    result = Measurement(mode="direct", sessions=n)
    async with _workers(ctx, f"direct-{n}") as (pub, sub):
        t = time.monotonic()
        ctx.progress(f"direct N={n}: connecting {2 * n} pairs")

        async def pair(k: int) -> None:
            ice = turn[k % len(turn)] if turn else None
            offer = await pub.call(
                "publish_offer",
                key=f"p{k}",
                audio_id=2 * k,
                video_id=2 * k + 1,
                bitrate=args.video_bitrate,
                fps=args.fps,
                ice=ice,
            )
            answer = await sub.call("subscribe_answer", key=f"p{k}", sdp=offer["sdp"], ice=ice)
            await pub.call("publish_answer", key=f"p{k}", sdp=answer)

        await _bounded(8, [pair(k) for k in range(2 * n)])
        result.setup_s = time.monotonic() - t
        await _measure(ctx, result, pub, sub, set(range(4 * n)), server_pid if turn else None)
    return result


async def turn_credentials(service: Service, count: int) -> list[dict[str, Any]]:
    """TURN credentials for the direct floor in TURN mode, from real welcome messages."""
    out = []
    async with http_session() as http:
        session = await create_session(http, service, f"bench-turn-{time.time_ns()}")
        for url in (session["agent_url"], session["customer_url"])[:count]:
            token = url.rsplit("/join/", 1)[1]
            ws = await http.ws_connect(service.url.replace("http://", "ws://") + "/api/v1/ws")
            await ws.send_json({"type": "join", "token": token, "name": "turn-probe"})
            async for msg in ws:
                message = json.loads(msg.data)
                if message.get("type") == "welcome":
                    out.append(turn_ice(message))
                    break
            await ws.close()
    return out


async def measure_point(ctx: RunContext, n: int) -> Point:
    args = ctx.args
    async with contextlib.AsyncExitStack() as stack:
        if args.url:
            service = Service(url=args.url.rstrip("/"), api_key=args.api_key, pid=None)
        else:
            service = await stack.enter_async_context(
                relay_service(ctx.log_dir, n, args.relay_log_level)
            )
        relay = await measure_relay(ctx, service, n)
        direct = None
        if not args.no_direct:
            turn = await turn_credentials(service, 2) if args.turn else None
            direct = await measure_direct(ctx, n, turn, service.pid)
            if args.turn and service.pid:
                direct.notes.append("server CPU here is the TURN server alone (same process)")
    point = Point(sessions=n, relay=relay, direct=direct)
    if direct is not None:
        point.added_ms = added(relay.latency_ms, direct.latency_ms)
    return point


# --- output ------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_COLUMNS = [
    "N",
    "mode",
    "p50",
    "p95",
    "p99",
    "max",
    "added p50",
    "added p99",
    "pkt/s",
    "loss %",
    "relay CPU %",
    "µs/pkt",
    "RSS MB",
    "pub CPU %",
    "sub CPU %",
]


def table_rows(points: list[Point], baseline: list[Measurement]) -> list[list[str]]:
    rows = []

    def row(m: Measurement, add: dict[str, float]) -> list[str]:
        lat = m.latency_ms
        return [
            str(m.sessions),
            m.mode,
            _f(lat.get("p50")),
            _f(lat.get("p95")),
            _f(lat.get("p99")),
            _f(lat.get("max")),
            _f(add.get("p50")),
            _f(add.get("p99")),
            f"{m.delivered_pps:.0f}",
            f"{m.loss_pct:.3f}",
            _f(m.server_cpu_pct, 1),
            _f(m.server_cpu_us_per_packet, 1),
            _f(m.server_rss_mb, 0),
            f"{m.publisher_cpu_pct:.1f}",
            f"{m.subscriber_cpu_pct:.1f}",
        ]

    for point in points:
        rows.append(row(point.relay, point.added_ms))
        if point.direct is not None:
            rows.append(row(point.direct, {}))
    for m in baseline:
        rows.append(row(m, m.added_ms))
    return rows


def markdown_table(points: list[Point], baseline: list[Measurement]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(points, baseline)]
    return "\n".join(lines)


def print_table(points: list[Point], baseline: list[Measurement], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption="latency in ms (one-way, per packet); CPU 100 % = one core")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column == "mode" else "right")
    for r in table_rows(points, baseline):
        table.add_row(*r)
    Console(width=max(170, Console().width)).print(table)


def write_plot(path: str, points: list[Point], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [p.sessions for p in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    for key, style in (("p50", "-o"), ("p99", "--o")):
        ax1.plot(
            ns,
            [p.relay.latency_ms.get(key, float("nan")) for p in points],
            style,
            color="tab:blue",
            label=f"through relay {key}",
        )
        if any(p.direct for p in points):
            ax1.plot(
                ns,
                [
                    p.direct.latency_ms.get(key, float("nan")) if p.direct else float("nan")
                    for p in points
                ],
                style,
                color="tab:gray",
                label=f"direct {key}",
            )
            ax1.plot(
                ns,
                [p.added_ms.get(key, float("nan")) for p in points],
                style,
                color="tab:red",
                label=f"relay-added {key}",
            )
    ax1.set_xlabel("sessions (N)")
    ax1.set_ylabel("one-way latency, ms")
    ax1.set_yscale("symlog", linthresh=0.1)  # relay-added may be negative
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7)
    ax1.set_title("latency per packet")
    us = [p.relay.server_cpu_us_per_packet or float("nan") for p in points]
    ax2.plot(ns, us, "-o", color="tab:green", label="relay CPU µs / forwarded packet")
    ax2.set_xlabel("sessions (N)")
    ax2.set_ylabel("µs per packet")
    ax2.grid(True, alpha=0.3)
    ax3 = ax2.twinx()
    ax3.plot(
        ns,
        [p.relay.server_cpu_pct or float("nan") for p in points],
        ":s",
        color="tab:purple",
        label="relay CPU % (100 = 1 core)",
    )
    ax3.set_ylabel("relay CPU %")
    lines = ax2.get_legend_handles_labels()
    more = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    ax2.set_title("relay CPU")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _git(*args: str) -> str:
    import subprocess

    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    import aiortc

    return {
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "relay_uncommitted_changes": bool(_git("status", "--porcelain", "relay", "signaling")),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")
            ),
            "",
        )
        if os.path.exists("/proc/cpuinfo")
        else "",
    }


# --- main --------------------------------------------------------------------------------------


class _Display:
    """A rich status line while running (nothing with --quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.status: Any = None
        if not quiet:
            from rich.console import Console

            self.console = Console(stderr=True)
            self.status = self.console.status("starting")
            self.status.start()

    def __call__(self, text: str) -> None:
        if self.status is not None:
            self.status.update(text)

    def log(self, text: str) -> None:
        if self.status is not None:
            self.console.log(text)

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


async def run(args: argparse.Namespace, display: _Display, log_dir: str) -> dict[str, Any]:
    ctx = RunContext(args=args, log_dir=log_dir, progress=display)
    points: list[Point] = []

    async def point(n: int) -> Point:
        try:
            limit = 120 + 3 * n + 2 * (args.warmup + args.duration)
            p = await asyncio.wait_for(measure_point(ctx, n), limit)
        except Exception as exc:  # noqa: BLE001 - one failed point must not lose the sweep
            failed = Measurement(mode="relay", sessions=n, streams=4 * n)
            failed.notes.append(f"failed: {type(exc).__name__}: {exc} (logs: {log_dir})")
            failed.loss_pct = 100.0
            p = Point(sessions=n, relay=failed, direct=None)
            display.log(f"N={n} failed: {type(exc).__name__}: {exc}")
        points.append(p)
        points.sort(key=lambda x: x.sessions)
        display.log(
            f"N={n}: relay p50 {_f(p.relay.latency_ms.get('p50'))} ms, "
            f"added p50 {_f(p.added_ms.get('p50'))} p99 {_f(p.added_ms.get('p99'))} ms, "
            f"loss {p.relay.loss_pct:.3f} %, relay {_f(p.relay.server_cpu_us_per_packet, 1)} µs/pkt"
        )
        if args.json:  # after every point, so that an interrupted sweep keeps what it measured
            write_json(args, points, [], None, log_dir)
        return p

    capacity: dict[str, Any] | None = None
    if args.capacity:
        capacity = await find_capacity(args, point)
    else:
        for n in args.sessions:
            await point(n)
    baseline: list[Measurement] = []
    if args.baseline:
        from .baseline import measure_baseline

        baseline.extend(await measure_baseline(ctx, args.baseline))
    return {
        "points": points,
        "baseline": baseline,
        "capacity": capacity,
    }


async def find_capacity(args: argparse.Namespace, point: Callable[[int], Any]) -> dict[str, Any]:
    """Double N until a point fails the bounds, then bisect between the last pass and the
    first failure (at most ~log2(max) + 4 points)."""
    good, bad = 0, args.max_sessions + 1
    n = max(1, args.sessions[0])
    steps = 0
    while good + 1 < bad and steps < 14:
        steps += 1
        p = await point(n)
        if p.passes(args.p99_bound, args.loss_bound):
            good = n
            n = n * 2 if bad > args.max_sessions else (good + bad) // 2
        else:
            bad = n
            n = (good + bad) // 2
        n = min(n, args.max_sessions)
        if n <= good or n >= bad:
            break
    return {
        "largest_passing_sessions": good,
        "first_failing_sessions": bad,
        "p99_bound_ms": args.p99_bound,
        "loss_bound_pct": args.loss_bound,
    }


def load_results(path: str) -> tuple[str, list[Point], list[Measurement]]:
    with open(path) as f:
        document = json.load(f)

    def measurement(data: dict[str, Any] | None) -> Measurement | None:
        return None if data is None else Measurement(**data)

    points = []
    for p in document["points"]:
        relay = measurement(p["relay"])
        assert relay is not None
        points.append(
            Point(
                sessions=p["sessions"],
                relay=relay,
                direct=measurement(p["direct"]),
                added_ms=p["added_ms"],
            )
        )
    baseline = [Measurement(**m) for m in document["baseline"]]
    return document["title"], points, baseline


def replot(args: argparse.Namespace) -> int:
    title, points, baseline = load_results(args.replot)
    print_table(points, baseline, title)
    if args.plot:
        write_plot(args.plot, [p for p in points if p.relay.latency_ms], title)
    return 0


def main(args: argparse.Namespace) -> int:
    if args.fuzz:
        from . import fuzz

        return fuzz.main(args)
    if args.replot:
        return replot(args)
    if args.sweep:
        args.sessions = [1, 5, 10, 20, 40, 80]
    if args.url and not args.api_key:
        print("parley bench: --url needs --api-key", file=sys.stderr)
        return 2
    log_dir = tempfile.mkdtemp(prefix="parley-bench-")
    display = _Display(args.quiet)
    try:
        import uvloop

        outcome = uvloop.run(run(args, display, log_dir))
    finally:
        display.stop()
    points: list[Point] = outcome["points"]
    baseline: list[Measurement] = outcome["baseline"]
    title = title_of(args)
    print_table(points, baseline, title)
    if outcome["capacity"]:
        c = outcome["capacity"]
        print(
            f"capacity: largest N with relay-added p99 < {c['p99_bound_ms']} ms and loss < "
            f"{c['loss_bound_pct']} %: {c['largest_passing_sessions']}"
        )
    write_json(args, points, baseline, outcome["capacity"], log_dir)
    if args.plot and points:
        write_plot(args.plot, [p for p in points if p.relay.latency_ms], title)
    print(f"logs: {log_dir}" + (f"; results: {args.json}" if args.json else ""))
    return 0


def title_of(args: argparse.Namespace) -> str:
    transport = "TURN/TCP relay-only" if args.turn else "UDP host candidates"
    return (
        f"parley bench: {args.video_bitrate / 1e6:g} Mbit/s @ {args.fps} fps video + audio both "
        f"ways, {transport}, {args.duration:g} s per point"
    )


def write_json(
    args: argparse.Namespace,
    points: list[Point],
    baseline: list[Measurement],
    capacity: dict[str, Any] | None,
    log_dir: str,
) -> None:
    if not args.json:
        return
    document = {
        "title": title_of(args),
        "machine": machine_info(),
        "options": {k: v for k, v in vars(args).items() if k not in ("api_key", "func")},
        "points": [asdict(p) for p in points],
        "baseline": [asdict(m) for m in baseline],
        "capacity": capacity,
        "markdown_table": markdown_table(points, baseline),
        "logs": log_dir,
    }
    with open(args.json, "w") as f:
        json.dump(document, f, indent=1)
