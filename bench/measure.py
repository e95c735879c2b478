"""One measurement of ``parley bench``: a window over running media, the relay mode (sessions
through ``parley serve``, driven over the WebSocket API), the direct peer-to-peer floor, and one
point (both at one N)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy

from .procstat import (
    cpu_seconds,
    cpu_times,
    machine_ticks,
    rss_bytes,
    run_seconds,
    run_times,
    steal_pct,
)
from .results import Measurement, Point, added, percentiles, timeline
from .service import Service, create_session, http_session, relay_service
from .signaling_client import SignalingClient
from .workers import WorkerProc, bounded, worker_pair

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
    run0 = {pid: run_times(pid) for pid in pids}
    system0 = cpu_times(server_pid)[1] if server_pid else 0.0
    result.loadavg.append(os.getloadavg()[0])
    ticks0 = machine_ticks()
    t0 = time.monotonic()
    ctx.progress(f"{result.mode} N={result.sessions}: measuring {args.duration:g} s")
    await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
    # the scheduler's exact run time where it has it, else clock ticks
    cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in pids}
    for pid in pids:
        run1 = run_times(pid)
        if run0[pid] and run1:
            cpu[pid] = run_seconds(run0[pid], run1)
    system = cpu_times(server_pid)[1] - system0 if server_pid else 0.0
    elapsed = time.monotonic() - t0
    result.steal_pct = steal_pct(ticks0, machine_ticks())
    result.loadavg.append(os.getloadavg()[0])
    rss = rss_bytes(server_pid) if server_pid else 0
    return Window(start, end, cpu, elapsed, system, rss)


async def measure_streams(
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


class BenchParticipant(SignalingClient):
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
        super().__init__(base_url, join_url, key, http=http)
        self.key = key
        self.pub = pub
        self.sub = sub
        self.turn = turn
        self.ice: dict[str, Any] | None = None
        self.failures: list[dict[str, Any]] = []
        """Subscribe offers the worker could not answer."""

    async def join_call(self) -> None:
        welcome = await self.join(timeout=15)
        if welcome["type"] != "welcome":
            raise RuntimeError(f"join failed: {welcome}")
        if self.turn:
            self.ice = turn_ice(welcome)

    async def publish(self, audio_id: int, video_id: int, bitrate: int, fps: int) -> None:
        offer = await self.pub.call(
            "publish_offer",
            key=self.key,
            audio_id=audio_id,
            video_id=video_id,
            bitrate=bitrate,
            fps=fps,
            ice=self.ice,
        )
        sdp = await self.send_publish_offer(offer["sdp"], offer["sources"], timeout=15)
        await self.pub.call("publish_answer", key=self.key, sdp=sdp)

    async def on_subscribe_offer(self, message: dict[str, Any]) -> str | None:
        try:
            answer = await self.sub.call(
                "subscribe_answer", key=self.key, sdp=message["sdp"], ice=self.ice
            )
        except Exception as exc:  # noqa: BLE001 - recorded, the run reports missing streams
            self.failures.append({"type": "error", "message": str(exc)})
            return None
        return str(answer)

    def all_errors(self) -> list[dict[str, Any]]:
        return self.errors() + self.failures


async def measure_relay(ctx: RunContext, service: Service, n: int) -> Measurement:
    args = ctx.args
    result = Measurement(mode="relay", sessions=n)
    async with worker_pair(ctx.log_dir, f"relay-{n}") as (pub, sub), http_session() as http:
        participants: list[BenchParticipant] = []
        t = time.monotonic()
        try:
            ctx.progress(f"relay N={n}: creating sessions")
            for i in range(n):
                name = f"bench-{n}-{i}-{time.time_ns()}"
                session = await create_session(http, service, name, args.record)
                for j, url in enumerate((session["agent_url"], session["customer_url"])):
                    participants.append(
                        BenchParticipant(http, service.url, url, f"s{i}p{j}", pub, sub, args.turn)
                    )
            ctx.progress(f"relay N={n}: joining {len(participants)} participants")
            await bounded(8, [p.join_call() for p in participants])
            await bounded(
                8,
                [
                    p.publish(2 * k, 2 * k + 1, args.video_bitrate, args.fps)
                    for k, p in enumerate(participants)
                ],
            )
            result.setup_s = time.monotonic() - t
            expected = set(range(2 * len(participants)))
            await measure_streams(ctx, result, pub, sub, expected, service.pid)
            errors = [e for p in participants for e in p.all_errors()]
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
    async with worker_pair(ctx.log_dir, f"direct-{n}") as (pub, sub):
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

        await bounded(8, [pair(k) for k in range(2 * n)])
        result.setup_s = time.monotonic() - t
        await measure_streams(
            ctx, result, pub, sub, set(range(4 * n)), server_pid if turn else None
        )
    return result


async def turn_credentials(service: Service, count: int) -> list[dict[str, Any]]:
    """TURN credentials for the direct floor in TURN mode, from real welcome messages."""
    out = []
    async with http_session() as http:
        session = await create_session(http, service, f"bench-turn-{time.time_ns()}")
        for url in (session["agent_url"], session["customer_url"])[:count]:
            probe = SignalingClient(service.url, url, "turn-probe", http=http)
            try:
                welcome = await probe.join()
            finally:
                await probe.close()
            if welcome["type"] != "welcome":
                raise RuntimeError(f"join failed: {welcome}")
            out.append(turn_ice(welcome))
    return out


async def measure_point(ctx: RunContext, n: int) -> Point:
    args = ctx.args
    async with contextlib.AsyncExitStack() as stack:
        if args.url:
            service = Service(url=args.url.rstrip("/"), api_key=args.api_key, pid=None)
        else:
            service = await stack.enter_async_context(
                relay_service(
                    ctx.log_dir,
                    n,
                    args.relay_log_level,
                    workers=getattr(args, "relay_workers", 1),  # --workers (bench/main.py)
                    cpus=set(args.relay_cpus) if getattr(args, "relay_cpus", None) else None,
                )
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
