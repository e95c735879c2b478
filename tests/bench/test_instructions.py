"""Instructions per wakeup under cachegrind (``python -m parley.bench.instructions``): the
wakeup forwards every datagram and a count comes out, never a timing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from parley.relay import accel

pytestmark = pytest.mark.skipif(
    accel.Reader is None, reason="the compiled packet path is not built"
)


def per_wakeup(*extra: str) -> float:
    command = [sys.executable, "-m", "parley.bench.instructions", "--rounds", "30", "--base", "5"]
    proc = subprocess.run(command + list(extra), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    found = re.match(r"([\d,]+) instructions per wakeup of 4 datagrams \(30 wakeups", proc.stdout)
    assert found, proc.stdout
    return float(found.group(1).replace(",", ""))


def test_a_wakeup_forwards_its_datagrams_without_valgrind() -> None:
    from parley.bench.instructions import run_wakeups

    run_wakeups(8, 8)  # raises unless 32 datagrams were taken and forwarded


@pytest.mark.timeout(300)
def test_cachegrind_counts_a_wakeup() -> None:
    if shutil.which("valgrind") is None:
        pytest.skip("needs valgrind (scripts/setup.sh test installs it)")
    # more than the 4 sendto that queue the datagrams, fewer than a pure-Python fan-out
    assert 20_000 < per_wakeup() < 1_000_000
