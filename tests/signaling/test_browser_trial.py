"""An ordinary Chromium (no test-only loopback flag) on a machine with a real network interface
reaches `parley serve` started with its defaults: the README's two-tab trial."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.signaling.browser_support import chromium_available

SCRIPT = Path(__file__).with_name("browser_trial.py")
NETNS = (
    "ip link set lo up && ip link add v0 type veth peer name v1 && "
    "ip addr add 10.200.0.1/24 dev v0 && ip addr add 10.200.0.2/24 dev v1 && "
    'ip link set v0 up && ip link set v1 up && exec "$0" "$1"'
)


@pytest.mark.browser
def test_ordinary_chromium_reaches_the_default_relay_in_two_tabs() -> None:
    if not chromium_available():
        pytest.skip("Debian chromium is not installed; scripts/setup.sh test installs it")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to build the test's own network namespace")
    proc = subprocess.run(
        ["unshare", "--net", "--", "bash", "-c", NETNS, sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "MEDIA OK" in lines, proc.stdout
    pairs = json.loads(lines[-1])
    # Chromium reached the relay's 127.0.0.1 candidate from its ordinary (non-loopback)
    # interface; a pair through the embedded TURN server may succeed as well
    assert any(p[0] == "host" and p[1].startswith("10.200.0.") for p in pairs), pairs
    assert all(p[3] == "127.0.0.1" for p in pairs), pairs
