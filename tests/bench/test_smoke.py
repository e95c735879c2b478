"""Smoke run of ``parley bench`` (N = 1, a few seconds) so the load tool cannot rot.

Timings are never asserted: only that media flowed both ways, through the relay and directly,
and that the table, JSON and plot came out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(240)
def test_bench_measures_one_session_through_the_relay_and_directly(tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.signaling",
            "bench",
            "-n",
            "1",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
            "--plot",
            str(png),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=230,  # generous: the machine may be loaded; the bench bounds its own waits
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "relay" in proc.stdout and "direct" in proc.stdout
    result = json.loads(out.read_text())
    (point,) = result["points"]
    for mode in ("relay", "direct"):
        m = point[mode]
        assert m["streams_flowing"] == m["streams"] == 4, m
        assert m["delivered"] > 0 and m["sent"] > 0, m
        assert set(m["latency_ms"]) == {"p50", "p95", "p99", "max"}, m
    assert point["relay"]["server_cpu_us_per_packet"] is not None
    assert set(point["added_ms"]) == {"p50", "p95", "p99", "max"}
    assert png.stat().st_size > 1000
