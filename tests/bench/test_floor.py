"""The physical floor (``python -m parley.bench.floor``), in C and in Python, so it cannot rot.
Only that every packet was forwarded and a CPU figure came out: never a timing."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("python", [False, True], ids=["c", "python"])
def test_the_floor_forwards_every_packet_and_prints_its_cost(python: bool) -> None:
    if not python and shutil.which("cc") is None:
        pytest.skip("the C floor needs cc")
    command = [sys.executable, "-m", "parley.bench.floor", "-n", "1,2", "--seconds", "0.5"]
    command += ["--fanout", "2", "--pps", "200"] + (["--python"] if python else [])
    proc = subprocess.run(command, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert ("Python (uvloop)" if python else "forwarder: C") in proc.stdout
    rows = [
        line.split("|")[1:-1] for line in proc.stdout.splitlines() if line[:3] in ("| 1", "| 2")
    ]
    assert [int(r[0]) for r in rows] == [1, 2], proc.stdout
    for _, pps, fanout, _, sent, us, sys_us in ([c.strip() for c in r] for r in rows):
        # every offered packet forwarded to each subscriber (0.5 s of pkt/s, bursts of 4)
        assert int(sent) == int(float(pps) * 0.5) * int(fanout), proc.stdout
        assert float(us) > 0 and 0 <= float(sys_us) <= float(us), proc.stdout
