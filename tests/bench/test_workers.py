"""``parley bench --workers 1,2``: one run measures the relay with one process and with two media
workers (relay CPU read from the control process and its workers together). Timings are never
asserted: only that media flowed through both and each count has its own results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parley.bench import procstat


@pytest.mark.timeout(300)
def test_bench_measures_each_worker_count_in_one_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.signaling",
            "bench",
            "--workers",
            "1,2",
            "-n",
            "1",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--no-direct",
            "--json",
            str(out),
            "--plot",
            "",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=290,  # generous: the machine may be loaded; the bench bounds its own waits
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--workers 1:" in proc.stdout and "--workers 2:" in proc.stdout
    for count in (1, 2):
        result = json.loads((tmp_path / f"bench-w{count}.json").read_text())
        assert ("2 media workers" in result["title"]) == (count == 2)
        (point,) = result["points"]
        relay = point["relay"]
        assert relay["streams_flowing"] == relay["streams"] == 4, relay
        assert relay["server_cpu_us_per_packet"] is not None and relay["server_cpu_pct"] > 0


def test_process_tree_includes_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in procstat.tree(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_run_times_count_a_child_process_exactly() -> None:
    """The exact run time (schedstat) of a process tree: a child's main thread, which began
    after the first reading, counts from zero, and what it ran matches the CPU time the child
    itself reads (``time.process_time``, which it prints)."""
    before = procstat.run_times(os.getpid())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\n"
            "print(time.process_time(), flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        spent = float(proc.stdout.readline())
        after = procstat.run_times(os.getpid())
        assert proc.pid in after and proc.pid not in before
        seconds = procstat.run_seconds(before, {proc.pid: after[proc.pid]})
        # the child's print and exit from the loop run after its reading: a little more
        assert spent - 0.01 <= seconds <= spent + 0.05, (spent, seconds)
    finally:
        proc.kill()
        proc.wait()


def test_machine_ticks_cover_every_cpu_and_steal_is_a_share_of_them() -> None:
    """``/proc/stat``'s first line counts every CPU's ticks (busy, idle and stolen): over a
    0.5 s sleep they grow by about CPUs × 0.5 s, and the stolen share is a percentage."""
    cpus = os.cpu_count() or 1
    before = procstat.machine_ticks()
    time.sleep(0.5)
    after = procstat.machine_ticks()
    elapsed = (after[1] - before[1]) / procstat.CLOCK_TICKS
    assert 0.5 * cpus * 0.5 <= elapsed <= 1.5 * cpus * 0.5 + 0.1, (before, after, cpus)
    share = procstat.steal_pct(before, after)
    assert share is not None and 0.0 <= share <= 100.0, share
    assert procstat.steal_pct(after, after) is None
