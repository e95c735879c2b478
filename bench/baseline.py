"""The transcoding baseline in a ``parley bench`` run: aiortc ``MediaRelay`` (bench.mediarelay)
with real VP8 from a pre-encoded clip, and its own direct floor (the same clip straight to the
subscriber), both measured per frame (see bench/clip.py for the method)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy

from .clip import frame_latencies
from .measure import RunContext, measure_window
from .results import Measurement, added, percentiles
from .service import free_port, http_session, stop_process, wait_healthy
from .workers import WorkerProc, bounded, worker_pair


@contextlib.asynccontextmanager
async def mediarelay_server(log_dir: str) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    log = open(os.path.join(log_dir, "mediarelay.log"), "ab")  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.bench.mediarelay", "--port", str(port), stdout=log, stderr=log
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, proc, "the MediaRelay server (see mediarelay.log)")
        yield url, proc.pid
    finally:
        await stop_process(proc)


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=30)) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        return str((await response.json())["sdp"])


async def _measure_frames(
    ctx: RunContext,
    result: Measurement,
    pub: WorkerProc,
    sub: WorkerProc,
    pairs: dict[str, int],
    server_pid: int | None,
) -> None:
    """``pairs``: subscriber key -> the video id it receives."""
    args = ctx.args
    deadline = time.monotonic() + 20 + result.sessions
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = set(await sub.call("clip_seen"))
        if set(pairs) <= seen:
            break
        ctx.progress(f"{result.mode} N={result.sessions}: {len(seen)}/{len(pairs)} videos flowing")
        await asyncio.sleep(0.25)
    result.streams, result.streams_flowing = len(pairs), len(set(pairs) & seen)
    window = await measure_window(ctx, result, pub, sub, server_pid)
    start, end, cpu, elapsed = window.start, window.end, window.cpu, window.elapsed
    await asyncio.sleep(1.0)
    ctx.progress(f"{result.mode} N={result.sessions}: decoding received frames")
    pub_report, sub_report = await asyncio.gather(
        pub.call("clip_report", timeout=120), sub.call("clip_report", timeout=120)
    )
    latencies: list[int] = []
    lost = sent = 0
    for key, video_id in pairs.items():
        sends = pub_report["sends"].get(video_id, [])
        lat, missing = frame_latencies(sends, sub_report["arrivals"].get(key, []), (start, end))
        latencies += lat
        lost += missing
        sent += sum(1 for _, s in sends if start <= s <= end)
    result.latency_ms = percentiles(numpy.array(latencies, dtype=numpy.int64))
    result.latency_by_kind_ms = {"video frames": result.latency_ms}
    result.sent = sent
    result.delivered = len(latencies)
    packets = sum(sub_report["window_packets"].values())
    result.delivered_pps = packets / args.duration
    result.loss_pct = 100.0 * lost / sent if sent else 100.0
    result.publisher_cpu_pct = 100.0 * cpu[pub.pid] / elapsed
    result.subscriber_cpu_pct = 100.0 * cpu[sub.pid] / elapsed
    result.notes.append("video only, latency and loss per frame (see docs/benchmarks.md)")
    if server_pid:
        result.server_cpu_pct = 100.0 * cpu[server_pid] / elapsed
        result.server_rss_mb = window.server_rss / 2**20
        if packets:
            result.server_cpu_us_per_packet = 1e6 * cpu[server_pid] / packets


async def measure_mediarelay(ctx: RunContext, n: int) -> Measurement:
    args = ctx.args
    result = Measurement(mode="mediarelay", sessions=n)
    async with (
        mediarelay_server(ctx.log_dir) as (url, pid),
        worker_pair(ctx.log_dir, f"mediarelay-{n}") as (pub, sub),
        http_session() as http,
    ):
        t = time.monotonic()
        ctx.progress(f"mediarelay N={n}: connecting")

        async def publish(k: int) -> None:
            offer = await pub.call(
                "clip_publish_offer",
                key=f"p{k}",
                video_id=k,
                bitrate=args.video_bitrate,
                fps=args.fps,
                timeout=60,
            )
            answer = await _post(http, f"{url}/publish", {"key": f"p{k}", "sdp": offer})
            await pub.call("clip_publish_answer", key=f"p{k}", sdp=answer)

        async def subscribe(k: int) -> None:
            offer = await sub.call("clip_subscribe_offer", key=f"s{k}")
            answer = await _post(http, f"{url}/subscribe", {"source": f"p{k ^ 1}", "sdp": offer})
            await sub.call("clip_subscribe_answer", key=f"s{k}", sdp=answer)

        await bounded(4, [publish(k) for k in range(2 * n)])
        await bounded(4, [subscribe(k) for k in range(2 * n)])
        result.setup_s = time.monotonic() - t
        await _measure_frames(ctx, result, pub, sub, {f"s{k}": k ^ 1 for k in range(2 * n)}, pid)
    return result


async def measure_direct_vp8(ctx: RunContext, n: int) -> Measurement:
    args = ctx.args
    result = Measurement(mode="direct-vp8", sessions=n)
    async with worker_pair(ctx.log_dir, f"direct-vp8-{n}") as (pub, sub):
        t = time.monotonic()

        async def pair(k: int) -> None:
            offer = await pub.call(
                "clip_publish_offer",
                key=f"p{k}",
                video_id=k,
                bitrate=args.video_bitrate,
                fps=args.fps,
                timeout=60,
            )
            answer = await sub.call("clip_answer", key=f"s{k ^ 1}", sdp=offer)
            await pub.call("clip_publish_answer", key=f"p{k}", sdp=answer)

        await bounded(4, [pair(k) for k in range(2 * n)])
        result.setup_s = time.monotonic() - t
        await _measure_frames(ctx, result, pub, sub, {f"s{k}": k ^ 1 for k in range(2 * n)}, None)
    return result


async def measure_baseline(ctx: RunContext, n: int) -> list[Measurement]:
    """MediaRelay, then its direct floor, with ``n`` sessions (2n videos)."""
    transcoded = await measure_mediarelay(ctx, n)
    floor = await measure_direct_vp8(ctx, n)
    transcoded.added_ms = added(transcoded.latency_ms, floor.latency_ms)
    return [transcoded, floor]
