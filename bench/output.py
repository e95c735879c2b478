"""What ``parley bench`` prints and writes: the table (rich and Markdown), the plot, the JSON
results file with the machine it ran on."""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict
from typing import Any

from .results import Measurement, Point


def fmt(value: float | None, digits: int = 2) -> str:
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
    "steal %",
]


def table_rows(points: list[Point], baseline: list[Measurement]) -> list[list[str]]:
    rows = []

    def row(m: Measurement, add: dict[str, float]) -> list[str]:
        lat = m.latency_ms
        return [
            str(m.sessions),
            m.mode,
            fmt(lat.get("p50")),
            fmt(lat.get("p95")),
            fmt(lat.get("p99")),
            fmt(lat.get("max")),
            fmt(add.get("p50")),
            fmt(add.get("p99")),
            f"{m.delivered_pps:.0f}",
            f"{m.loss_pct:.3f}",
            fmt(m.server_cpu_pct, 1),
            fmt(m.server_cpu_us_per_packet, 1),
            fmt(m.server_rss_mb, 0),
            f"{m.publisher_cpu_pct:.1f}",
            f"{m.subscriber_cpu_pct:.1f}",
            fmt(m.steal_pct, 1),
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

    table = Table(
        title=title,
        caption="latency in ms (one-way, per packet); CPU 100 % = one core; steal: "
        "CPU time the hypervisor gave other machines during the window",
    )
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


def title_of(args: argparse.Namespace) -> str:
    transport = "TURN/TCP relay-only" if args.turn else "UDP host candidates"
    return (
        f"parley bench: {args.video_bitrate / 1e6:g} Mbit/s @ {args.fps} fps video + audio both "
        f"ways, {transport}, {args.duration:g} s per point" + _workers_note(args)
    )


def _workers_note(args: argparse.Namespace) -> str:
    """``, 2 media workers`` / ``, relay on CPU 0`` when the run says so."""
    note = ""
    count = getattr(args, "relay_workers", 1)
    if count > 1:
        note += f", {count} media workers"
    if getattr(args, "relay_cpus", None):
        note += f", relay on CPU {','.join(map(str, args.relay_cpus))}"
    if getattr(args, "client_cpus", None):
        note += f", clients on CPU {','.join(map(str, args.client_cpus))}"
    return note


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
