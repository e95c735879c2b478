"""``parley bench --soak SECONDS -n N``: does the relay leak? (issue 12)

Starts ``parley serve``, holds N steady two-party calls with synthetic media (the load tool's
workers), and beside them creates and ends sessions in a loop (two participants join with media,
publish, leave; the session is deleted through the API; each churn round has worker processes of
its own, so nothing accumulates on the client side). The relay's RSS, open file descriptors and
asyncio tasks (``parley_asyncio_tasks`` in /metrics) are sampled every minute, every 10 s for runs
shorter than 10 minutes. After the warm-up (a fifth of the run, at most 5 minutes) nothing may
grow by more than 5 %: the result says which figure did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp

from .measure import BenchParticipant
from .procstat import rss_bytes
from .service import Service, create_session, http_session, relay_service, scrape_metrics
from .workers import bounded, worker_pair

GROWTH_LIMIT_PCT = 5.0
CHURN_HOLD_SECONDS = 2.0
"""How long each churned session carries media before it ends."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="soak the relay: -n steady calls plus sessions created and ended in a loop; "
        "RSS, descriptors and asyncio tasks sampled (bench/soak.py)",
    )


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0




async def sample(http: aiohttp.ClientSession, service: Service, t0: float) -> dict[str, float]:
    assert service.pid is not None
    metrics = await scrape_metrics(http, service.url)
    return {
        "t": round(time.monotonic() - t0, 1),
        "rss_mb": round(rss_bytes(service.pid) / 2**20, 2),
        "fds": open_fds(service.pid),
        "tasks": metrics.get("parley_asyncio_tasks", -1.0),
        "sessions_active": metrics.get('parley_sessions{state="active"}', -1.0),
        "participants": metrics.get("parley_participants", -1.0),
    }


async def call(
    http: aiohttp.ClientSession,
    service: Service,
    pub: Any,
    sub: Any,
    name: str,
    key: str,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], list[BenchParticipant]]:
    session = await create_session(http, service, name)
    participants = [
        BenchParticipant(http, service.url, url, f"{key}p{j}", pub, sub, False)
        for j, url in enumerate((session["agent_url"], session["customer_url"]))
    ]
    await bounded(8, [p.join_call() for p in participants])
    await bounded(
        8,
        [
            p.publish(2 * k, 2 * k + 1, args.video_bitrate, args.fps)
            for k, p in enumerate(participants)
        ],
    )
    return session, participants


async def churn(
    http: aiohttp.ClientSession,
    service: Service,
    log_dir: str,
    args: argparse.Namespace,
    stop: asyncio.Event,
    counts: dict[str, int],
) -> None:
    for i in range(100_000):  # bounded by the run's duration (stop)
        if stop.is_set():
            return
        async with worker_pair(log_dir, f"churn-{i % 4}") as (pub, sub):
            participants: list[BenchParticipant] = []
            try:
                session, participants = await call(
                    http, service, pub, sub, f"soak-churn-{i}", f"c{i}", args
                )
                counts["created"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), CHURN_HOLD_SECONDS)
                for p in participants:
                    with contextlib.suppress(Exception):
                        await p.send({"type": "leave"})
                async with http.delete(
                    f"{service.url}/api/v1/sessions/{session['session_id']}",
                    headers={"Authorization": f"Bearer {service.api_key}"},
                ) as response:
                    if response.status < 300:
                        counts["ended"] += 1
            except Exception as exc:  # noqa: BLE001 - counted; the soak goes on
                counts["failed"] += 1
                counts.setdefault("first_failure", str(exc)[:200])  # type: ignore[arg-type]
            finally:
                await asyncio.gather(*(p.close() for p in participants), return_exceptions=True)


def growth(samples: list[dict[str, float]], warm_until: float) -> dict[str, dict[str, float]]:
    """Per figure: the value at the end of the warm-up, the median of the last quarter of the
    run, and the growth between them in percent."""
    after = [s for s in samples if s["t"] >= warm_until]
    if len(after) < 2:
        return {}
    tail = after[-max(1, len(after) // 4) :]
    out = {}
    for key in ("rss_mb", "fds", "tasks"):
        start = after[0][key]
        end = statistics.median(s[key] for s in tail)
        pct = 100.0 * (end - start) / start if start > 0 else 0.0
        out[key] = {"after_warmup": start, "end": end, "growth_pct": round(pct, 1)}
    return out


async def soak(args: argparse.Namespace, log_dir: str) -> dict[str, Any]:
    seconds = args.soak
    n = args.sessions[0]
    interval = 60.0 if seconds >= 600 else 10.0
    warm_until = min(300.0, seconds / 5)
    samples: list[dict[str, float]] = []
    counts: dict[str, int] = {"created": 0, "ended": 0, "failed": 0}
    async with (
        relay_service(log_dir, n, args.relay_log_level) as service,
        worker_pair(log_dir, "steady") as (pub, sub),
        http_session() as http,
    ):
        steady: list[BenchParticipant] = []
        stop = asyncio.Event()
        churner: asyncio.Task[None] | None = None
        try:
            for i in range(n):
                _, participants = await call(http, service, pub, sub, f"soak-{i}", f"s{i}", args)
                steady.extend(participants)
            t0 = time.monotonic()
            churner = asyncio.ensure_future(churn(http, service, log_dir, args, stop, counts))
            for _ in range(int(seconds / interval) + 1):
                samples.append(await sample(http, service, t0))
                print(f"soak {samples[-1]}", file=sys.stderr, flush=True)
                remaining = t0 + seconds - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(interval, remaining))
            stop.set()
            await asyncio.wait_for(churner, 60)
            await asyncio.sleep(2.0)
            final = await sample(http, service, t0)
        finally:
            stop.set()
            if churner is not None and not churner.done():
                churner.cancel()
            await asyncio.gather(*(p.close() for p in steady), return_exceptions=True)
    figures = growth(samples, warm_until)
    return {
        "seconds": seconds,
        "sessions": n,
        "interval_s": interval,
        "warmup_s": warm_until,
        "samples": samples,
        "after_churn": final,
        "churn": counts,
        "growth": figures,
        "grew_more_than_5pct": sorted(
            k for k, v in figures.items() if v["growth_pct"] > GROWTH_LIMIT_PCT
        ),
        "log_dir": log_dir,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['seconds']:.0f} s, {result['sessions']} steady calls, samples every "
        f"{result['interval_s']:.0f} s, warm-up {result['warmup_s']:.0f} s",
        f"  churn              {result['churn']}",
        f"  after the churn    {result['after_churn']}",
    ]
    for key, value in result["growth"].items():
        lines.append(
            f"  {key:8s} after warm-up {value['after_warmup']}, end {value['end']}, "
            f"growth {value['growth_pct']:+.1f} %"
        )
    grew = result["grew_more_than_5pct"]
    lines.append(f"  grew more than 5 % after warm-up: {', '.join(grew) if grew else 'nothing'}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    log_dir = tempfile.mkdtemp(prefix="parley-soak-")
    try:
        import uvloop

        result = uvloop.run(soak(args, log_dir))
    except ImportError:  # pragma: no cover
        result = asyncio.run(soak(args, log_dir))
    print(report(result))
    if args.json:
        path = args.json if args.json != "bench-results.json" else "soak-results.json"
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results: {path}; logs: {log_dir}")
    return 0 if result["growth"] and not result["grew_more_than_5pct"] else 1
