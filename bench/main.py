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
import os
import sys
import tempfile
from typing import Any

from .capacity import find_capacity
from .measure import RunContext, measure_point
from .output import fmt, print_table, title_of, write_json, write_plot
from .results import Measurement, Point, load_results


class Display:
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


async def run(args: argparse.Namespace, display: Display, log_dir: str) -> dict[str, Any]:
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
            f"N={n}: relay p50 {fmt(p.relay.latency_ms.get('p50'))} ms, "
            f"added p50 {fmt(p.added_ms.get('p50'))} p99 {fmt(p.added_ms.get('p99'))} ms, "
            f"loss {p.relay.loss_pct:.3f} %, relay {fmt(p.relay.server_cpu_us_per_packet, 1)} µs/pkt"
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
    if args.soak:
        from . import soak

        return soak.main(args)
    if args.replot:
        return replot(args)
    if args.sweep:
        args.sessions = [1, 5, 10, 20, 40, 80]
    if args.against:
        from . import sidebyside

        return sidebyside.from_bench(args)
    if args.url and not args.api_key:
        print("parley bench: --url needs --api-key", file=sys.stderr)
        return 2
    if args.url and args.workers:
        print("parley bench: --workers starts the relay itself (not with --url)", file=sys.stderr)
        return 2
    if args.client_cpus:  # the publishers and subscribers we start inherit it
        os.sched_setaffinity(0, set(args.client_cpus))
    counts = args.workers or [1]
    json_path, plot_path = args.json, args.plot
    summary = []
    for count in counts:
        args.relay_workers = count
        if args.workers:  # one file per count: bench-results-w2.json
            args.json = _suffixed(json_path, f"-w{count}")
            args.plot = _suffixed(plot_path, f"-w{count}")
        points, capacity = _one_run(args)
        summary.append((count, points, capacity))
    if args.workers:
        print("by media workers (relay CPU: control process and workers together):")
        for count, points, capacity in summary:
            print(f"  --workers {count}: " + _summary_line(points, capacity))
    return 0


def _suffixed(path: str, suffix: str) -> str:
    if not path:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}{suffix}{ext}"


def _summary_line(points: list[Point], capacity: dict[str, Any] | None) -> str:
    parts = []
    if capacity:
        parts.append(f"capacity {capacity['largest_passing_sessions']} sessions")
    for p in points:
        parts.append(
            f"N={p.sessions}: loss {p.relay.loss_pct:.3f} %, added p99 "
            f"{fmt(p.added_ms.get('p99'))} ms, relay {fmt(p.relay.server_cpu_us_per_packet, 1)}"
            f" µs/pkt, relay CPU {fmt(p.relay.server_cpu_pct, 0)} %"
        )
    return "; ".join(parts)


def _one_run(args: argparse.Namespace) -> tuple[list[Point], dict[str, Any] | None]:
    log_dir = tempfile.mkdtemp(prefix="parley-bench-")
    display = Display(args.quiet)
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
    return points, outcome["capacity"]
