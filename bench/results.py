"""What ``parley bench`` measures: one :class:`Measurement` per mode and N, a :class:`Point` per
N, the percentile and timeline arithmetic, and reading a results file back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy

PERCENTILES = (50, 95, 99)


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
    steal_pct: float | None = None
    """CPU time the hypervisor gave to other machines during the window, % of all of this
    machine's (a neighbour's load, which ``loadavg`` does not show)."""
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
