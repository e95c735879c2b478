"""The side-by-side run issue 10's targets are defined by: parley against Janus VideoRoom with the
same aiortc clients.

For each N and each server, N pairs: one publisher sending one-way synthetic VP8 video (default
1 Mbit/s at 30 fps, pre-encoded, send time stamped in the payload, through the fast sender) and
one subscriber receiving it, the publishers in one worker process and the subscribers in another
(bench/worker.py), exactly as ``parley bench`` drives them. Only the signaling differs: a parley
session per pair over the WebSocket API (``parley serve --workers 1``, one process like Janus), or
a Janus VideoRoom publisher and subscriber over Janus's HTTP API (bench/janus.py). The same N
pairs connected peer to peer give the floor that the added latency is measured against.

Per (server, N): forwarded packets/s, loss, the server's CPU (every thread and child, from
/proc) and CPU µs per forwarded packet, its RSS, added latency p50/p99 and the clients' CPU.

    python -m parley.bench.sidebyside -n 1,10,20,40 --duration 10 [--servers parley,janus]
        [--relay-cpus 0 --client-cpus 1] [--json F]

``parley bench --against janus`` runs the same (bench/main.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .janus import JanusSession, create_room, janus_service
from .measure import BenchParticipant, RunContext, measure_streams
from .output import fmt, machine_info
from .procstat import tree
from .results import Measurement, added
from .service import create_session, http_session, relay_service
from .signaling_client import SignalingClient
from .workers import WorkerProc, bounded, worker_pair

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SERVERS = ("parley", "janus")


@dataclass
class Row:
    """One server (or the direct floor) at one N."""

    server: str
    sessions: int
    measurement: Measurement
    added_ms: dict[str, float] = field(default_factory=dict)
    """Its latency percentiles minus the direct floor's at the same N."""
    server_threads: int | None = None
    """Threads of the server (all its processes) at the end of the window."""


@dataclass
class SideContext(RunContext):
    """The run context: the clients' address, a log line beside the status (none with
    --quiet)."""

    host: str = "127.0.0.1"
    threads: dict[tuple[str, int], int] = field(default_factory=dict)
    """Server threads per (server, N), read at the end of each window."""

    def log(self, text: str) -> None:
        display = self.progress
        if hasattr(display, "log"):
            display.log(text)


@contextlib.asynccontextmanager
async def load_clients(ctx: SideContext, tag: str) -> AsyncIterator[tuple[WorkerProc, WorkerProc]]:
    """The publisher and subscriber workers, gathering on the run's client address."""
    async with worker_pair(ctx.log_dir, tag) as (pub, sub):
        await asyncio.gather(
            pub.call("use_host", address=ctx.host), sub.call("use_host", address=ctx.host)
        )
        yield pub, sub


def video_id(k: int) -> int:
    """Pair ``k``'s stream id (odd: video, bench/synthetic.py)."""
    return 2 * k + 1


async def publish_offer(ctx: SideContext, pub: WorkerProc, k: int) -> dict[str, Any]:
    args = ctx.args
    offer: dict[str, Any] = await pub.call(
        "publish_offer",
        key=f"p{k}",
        audio_id=None,  # video alone, one way
        video_id=video_id(k),
        bitrate=args.video_bitrate,
        fps=args.fps,
    )
    return offer


def thread_count(pid: int | None) -> int:
    """Threads of ``pid`` and its child processes (what the CPU figures add up)."""
    if pid is None:
        return 0
    return sum(
        len(os.listdir(f"/proc/{p}/task")) for p in tree(pid) if os.path.isdir(f"/proc/{p}/task")
    )


# --- the direct floor ------------------------------------------------------------------------


async def measure_direct(ctx: SideContext, n: int) -> Measurement:
    """The floor: the same N one-way pairs, publisher straight to subscriber."""
    result = Measurement(mode="direct", sessions=n)
    async with load_clients(ctx, f"sbs-direct-{n}") as (pub, sub):
        t = time.monotonic()

        async def pair(k: int) -> None:
            offer = await publish_offer(ctx, pub, k)
            answer = await sub.call("subscribe_answer", key=f"p{k}", sdp=offer["sdp"])
            await pub.call("publish_answer", key=f"p{k}", sdp=answer)

        ctx.progress(f"direct N={n}: connecting {n} pairs")
        await bounded(8, [pair(k) for k in range(n)])
        result.setup_s = time.monotonic() - t
        await measure_streams(ctx, result, pub, sub, {video_id(k) for k in range(n)}, None)
    return result


# --- parley -----------------------------------------------------------------------------------


async def measure_parley(ctx: SideContext, n: int) -> Measurement:
    """N parley sessions, each a publishing participant and a receive-only one."""
    args = ctx.args
    result = Measurement(mode="parley", sessions=n)
    cpus = set(args.relay_cpus) if args.relay_cpus else None
    async with contextlib.AsyncExitStack() as stack:
        service = await stack.enter_async_context(
            relay_service(ctx.log_dir, n, args.relay_log_level, workers=1, cpus=cpus)
        )
        pub, sub = await stack.enter_async_context(load_clients(ctx, f"sbs-parley-{n}"))
        http = await stack.enter_async_context(http_session())
        clients: list[SignalingClient] = []
        stack.push_async_callback(
            lambda: asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        )
        t = time.monotonic()

        async def pair(k: int) -> None:
            session = await create_session(http, service, f"sbs-{n}-{k}-{time.time_ns()}")
            publisher = SignalingClient(service.url, session["agent_url"], f"pub{k}", http=http)
            subscriber = BenchParticipant(
                http, service.url, session["customer_url"], f"s{k}", pub, sub, False
            )
            clients.extend((publisher, subscriber))
            for client in (publisher, subscriber):
                welcome = await client.join()
                if welcome["type"] != "welcome":
                    raise RuntimeError(f"join failed: {welcome}")
            offer = await publish_offer(ctx, pub, k)
            sdp = await publisher.send_publish_offer(offer["sdp"], offer["sources"], timeout=15)
            await pub.call("publish_answer", key=f"p{k}", sdp=sdp)

        ctx.progress(f"parley N={n}: connecting {n} pairs")
        await bounded(8, [pair(k) for k in range(n)])
        result.setup_s = time.monotonic() - t
        await measure_streams(ctx, result, pub, sub, {video_id(k) for k in range(n)}, service.pid)
        ctx.threads["parley", n] = thread_count(service.pid)
        errors = [e for c in clients for e in c.errors()]
        errors += [e for c in clients if isinstance(c, BenchParticipant) for e in c.failures]
        if errors:
            result.notes.append(f"{len(errors)} signaling errors, first: {errors[0]}")
    return result


# --- Janus ------------------------------------------------------------------------------------


async def measure_janus(ctx: SideContext, n: int) -> Measurement:
    """One VideoRoom with N publishers, each watched by one subscriber; a Janus session per
    client, as a browser holds."""
    args = ctx.args
    result = Measurement(mode="janus", sessions=n)
    cpus = set(args.relay_cpus) if args.relay_cpus else None
    async with contextlib.AsyncExitStack() as stack:
        janus = await stack.enter_async_context(janus_service(ctx.log_dir, cpus))
        pub, sub = await stack.enter_async_context(load_clients(ctx, f"sbs-janus-{n}"))
        http = await stack.enter_async_context(http_session())
        sessions: list[JanusSession] = []
        stack.push_async_callback(
            lambda: asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        )
        room = await create_room(http, janus.url, max(40, n))
        t = time.monotonic()

        async def pair(k: int) -> None:
            publisher, subscriber = JanusSession(http, janus.url), JanusSession(http, janus.url)
            sessions.extend((publisher, subscriber))
            await publisher.create()
            pub_handle = await publisher.attach()
            joined, _ = await publisher.request(
                pub_handle,
                {"request": "join", "ptype": "publisher", "room": room, "display": f"pub{k}"},
            )
            feed = joined["id"]
            offer = await publish_offer(ctx, pub, k)
            _, answer = await publisher.request(
                pub_handle,
                {"request": "configure", "audio": False, "video": True},
                {"type": "offer", "sdp": offer["sdp"]},
            )
            if answer is None:
                raise RuntimeError(f"janus configured publisher {k} without an answer")
            await pub.call("publish_answer", key=f"p{k}", sdp=answer["sdp"])
            await publisher.wait_webrtc_up(pub_handle)

            await subscriber.create()
            sub_handle = await subscriber.attach()
            _, sub_offer = await subscriber.request(
                sub_handle,
                {
                    "request": "join",
                    "ptype": "subscriber",
                    "room": room,
                    "streams": [{"feed": feed}],
                },
            )
            if sub_offer is None:
                raise RuntimeError(f"janus attached subscriber {k} without an offer")
            sdp = await sub.call("subscribe_answer", key=f"s{k}", sdp=sub_offer["sdp"])
            await subscriber.request(
                sub_handle, {"request": "start", "room": room}, {"type": "answer", "sdp": sdp}
            )

        ctx.progress(f"janus N={n}: connecting {n} pairs")
        await bounded(8, [pair(k) for k in range(n)])
        result.setup_s = time.monotonic() - t
        await measure_streams(ctx, result, pub, sub, {video_id(k) for k in range(n)}, janus.pid)
        ctx.threads["janus", n] = thread_count(janus.pid)
        lost = [s.lost for s in sessions if s.lost]
        if lost:
            result.notes.append(f"{len(lost)} janus sessions lost, first: {lost[0]}")
        hangups = [h for s in sessions for h in s.hangups]
        if hangups:
            result.notes.append(f"{len(hangups)} hangups from janus, first: {hangups[0]}")
    return result


# --- the run ----------------------------------------------------------------------------------

MEASURE = {"parley": measure_parley, "janus": measure_janus}


async def run(args: argparse.Namespace, ctx: SideContext, rows: list[Row]) -> None:
    for n in args.sessions:
        limit = 120 + 3 * n + 2 * (args.warmup + args.duration)
        direct: Measurement | None = None
        try:
            direct = await asyncio.wait_for(measure_direct(ctx, n), limit)
            rows.append(Row("direct", n, direct))
        except Exception as exc:  # noqa: BLE001 - one failed point must not lose the sweep
            failed(ctx, rows, "direct", n, exc)
        for server in args.servers:
            try:
                m = await asyncio.wait_for(MEASURE[server](ctx, n), limit)
            except Exception as exc:  # noqa: BLE001
                failed(ctx, rows, server, n, exc)
                continue
            row = Row(server, n, m, server_threads=ctx.threads.get((server, n)))
            if direct is not None:
                row.added_ms = added(m.latency_ms, direct.latency_ms)
            rows.append(row)
            ctx.log(
                f"{server} N={n}: {m.delivered_pps:.0f} pkt/s, loss {m.loss_pct:.3f} %, "
                f"{fmt(m.server_cpu_us_per_packet, 1)} µs/pkt, added p99 "
                f"{fmt(row.added_ms.get('p99'))} ms"
            )
        if args.json:  # after every N, so that an interrupted sweep keeps what it measured
            write_json(args, rows, ctx.log_dir)


def failed(ctx: SideContext, rows: list[Row], server: str, n: int, exc: Exception) -> None:
    m = Measurement(mode=server, sessions=n, streams=n, loss_pct=100.0)
    m.notes.append(f"failed: {type(exc).__name__}: {exc} (logs: {ctx.log_dir})")
    rows.append(Row(server, n, m))
    ctx.log(f"{server} N={n} failed: {type(exc).__name__}: {exc}")


# --- output -----------------------------------------------------------------------------------

COLUMNS = [
    "N",
    "server",
    "pkt/s",
    "loss %",
    "CPU %",
    "µs/pkt",
    "× janus",
    "RSS MB",
    "p50",
    "p99",
    "added p50",
    "added p99",
    "pub CPU %",
    "sub CPU %",
    "threads",
    "load",
    "steal %",
]


def table_rows(rows: list[Row]) -> list[list[str]]:
    janus = {
        r.sessions: r.measurement.server_cpu_us_per_packet for r in rows if r.server == "janus"
    }
    out = []
    for r in rows:
        m = r.measurement
        us, reference = m.server_cpu_us_per_packet, janus.get(r.sessions)
        ratio = us / reference if us is not None and reference else None
        out.append(
            [
                str(r.sessions),
                r.server,
                f"{m.delivered_pps:.0f}",
                f"{m.loss_pct:.3f}",
                fmt(m.server_cpu_pct, 1),
                fmt(us, 1),
                fmt(ratio),
                fmt(m.server_rss_mb, 0),
                fmt(m.latency_ms.get("p50")),
                fmt(m.latency_ms.get("p99")),
                fmt(r.added_ms.get("p50")),
                fmt(r.added_ms.get("p99")),
                f"{m.publisher_cpu_pct:.1f}",
                f"{m.subscriber_cpu_pct:.1f}",
                str(r.server_threads) if r.server_threads else "-",
                fmt(max(m.loadavg) if m.loadavg else None, 1),
                fmt(m.steal_pct, 1),
            ]
        )
    return out


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    return "\n".join(lines)


def title_of(args: argparse.Namespace) -> str:
    title = (
        f"side by side: {', '.join(args.servers)}; one-way {args.video_bitrate / 1e6:g} Mbit/s "
        f"@ {args.fps} fps VP8 per pair, {args.duration:g} s per point"
    )
    if args.relay_cpus:
        title += f", servers on CPU {','.join(map(str, args.relay_cpus))}"
    if args.client_cpus:
        title += f", clients on CPU {','.join(map(str, args.client_cpus))}"
    return title


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=title,
        caption="latency in ms (one-way, per packet; added = minus the direct floor); "
        "CPU 100 % = one core, all threads and children of the server; load: the machine's "
        "1-minute load average around the window; steal: CPU time the hypervisor gave other "
        "machines during the window",
    )
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "server" else "right")
    for cells in table_rows(rows):
        table.add_row(*cells)
    Console(width=max(150, Console().width)).print(table)
    for row in rows:
        for note in row.measurement.notes:
            print(f"note: {row.server} N={row.sessions}: {note}")


def write_json(args: argparse.Namespace, rows: list[Row], log_dir: str) -> None:
    document = {
        "title": title_of(args),
        "machine": machine_info(),
        "janus_version": janus_version(),
        "options": {k: v for k, v in vars(args).items() if k not in ("api_key", "func")},
        "rows": [asdict(r) for r in rows],
        "markdown_table": markdown_table(rows),
        "logs": log_dir,
    }
    with open(args.json, "w") as f:
        json.dump(document, f, indent=1)


def janus_version() -> str:
    import subprocess

    from .janus import janus_binary

    binary = janus_binary()
    if binary is None:
        return ""
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((line.strip() for line in out.splitlines() if "version" in line), "")


# --- the command line -------------------------------------------------------------------------


def _servers(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in values if x not in SERVERS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"servers are {', '.join(SERVERS)}; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from .options import _cpu_list, _int_list

    p = argparse.ArgumentParser(
        prog="python -m parley.bench.sidebyside",
        description="parley against Janus VideoRoom with the same one-way aiortc clients",
    )
    p.add_argument("--sessions", "-n", type=_int_list, default=[1, 10, 20, 40], help="pairs N,N")
    p.add_argument("--servers", type=_servers, default=list(SERVERS), help="parley,janus")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--video-bitrate", type=int, default=1_000_000, help="bit/s per video")
    p.add_argument("--fps", type=int, default=30, help="video frames per second")
    p.add_argument("--relay-cpus", type=_cpu_list, default=[], metavar="N,N", help="servers' CPUs")
    p.add_argument(
        "--client-cpus", type=_cpu_list, default=[], metavar="N,N", help="load clients' CPUs"
    )
    p.add_argument("--json", default="sidebyside-results.json", help="write results here ('')")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--relay-log-level", default="WARNING", help="log level of parley serve")
    return p


def from_bench(bench: argparse.Namespace) -> int:
    """``parley bench --against SERVER``: this run with parley bench's own flags (its default
    ``--json`` becomes ``sidebyside-results.json``: the document differs)."""
    args = build_parser().parse_args([])
    for name in (
        "sessions",
        "duration",
        "warmup",
        "video_bitrate",
        "fps",
        "relay_cpus",
        "client_cpus",
        "quiet",
        "relay_log_level",
    ):
        setattr(args, name, getattr(bench, name))
    args.servers = ["parley", bench.against]
    if bench.json != "bench-results.json":
        args.json = bench.json
    return main(args)


def main(args: argparse.Namespace) -> int:
    from . import netns
    from .janus import janus_binary
    from .main import Display

    if "janus" in args.servers:
        if janus_binary() is None:
            print(
                "side by side: the janus binary is missing (apt-get install janus)", file=sys.stderr
            )
            return 2
        try:  # both servers in the same namespace, where Janus has a candidate
            if not netns.inside():
                return netns.reexec()
            netns.set_up()
        except netns.NamespaceError as exc:
            print(
                f"side by side: a network namespace of its own needs root: {exc}", file=sys.stderr
            )
            return 2
    if args.client_cpus:  # the publishers and subscribers we start inherit it
        os.sched_setaffinity(0, set(args.client_cpus))
    log_dir = tempfile.mkdtemp(prefix="parley-sidebyside-")
    display = Display(args.quiet)
    host = netns.JANUS_ADDRESS if netns.inside() else "127.0.0.1"
    ctx = SideContext(args=args, log_dir=log_dir, progress=display, host=host)
    rows: list[Row] = []
    try:
        import uvloop

        uvloop.run(run(args, ctx, rows))
    finally:
        display.stop()
    print_table(rows, title_of(args))
    if args.json:
        write_json(args, rows, log_dir)
    print(f"logs: {log_dir}" + (f"; results: {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
