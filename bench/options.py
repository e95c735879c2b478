"""The flags of ``parley bench`` (added to the ``bench`` sub-command by ``signaling.cli``)."""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N,N,..., got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("session counts must be >= 1")
    return values


def _cpu_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected CPU numbers N,N,..., got {text!r}") from exc
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("CPU numbers must be >= 0")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import fuzz, soak

    fuzz.add_arguments(p)  # --fuzz SECONDS: the live fuzz campaign (bench/fuzz.py)
    soak.add_arguments(p)  # --soak SECONDS: leaks under steady calls and churn (bench/soak.py)
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
    p.add_argument("--record", action="store_true", help='relay sessions record ("record": true)')
    p.add_argument(
        "--workers",
        type=_int_list,
        default=[],
        help="measure the relay with each of these --workers counts in one run, e.g. 1,2",
    )
    p.add_argument(
        "--relay-cpus",
        type=_cpu_list,
        default=[],
        metavar="N,N",
        help="pin the relay (and its media workers) to these CPUs, e.g. 0",
    )
    p.add_argument(
        "--client-cpus",
        type=_cpu_list,
        default=[],
        metavar="N,N",
        help="pin the load tool (publishers, subscribers) to these CPUs, e.g. 1",
    )
    p.add_argument(
        "--against",
        choices=["janus"],
        default="",
        help="the side-by-side run: parley and this server, one-way pairs (bench/sidebyside.py)",
    )
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
