"""``parley serve`` starts without the benchmark tool: neither ``parley.bench`` nor numpy is
imported (checked in a fresh interpreter, with ``-X importtime`` for the running server)."""

from __future__ import annotations

import subprocess
import sys

from tests.signaling.browser_support import free_port

FORBIDDEN = ("parley.bench", "numpy")

CHECK = """
import sys
from parley.signaling import cli
code = cli.main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m in ("numpy", "parley.bench")
                or m.startswith(("numpy.", "parley.bench.")))
print("LOADED", loaded)
sys.exit(code)
"""


def loaded_modules(*argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_the_cli_and_serve_parser_do_not_import_the_bench() -> None:
    assert loaded_modules("serve", "--print-config") == "LOADED []"


def test_parley_bench_still_gets_its_parser() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "parley.signaling", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--sessions", "--capacity", "--baseline", "--replot"):
        assert flag in proc.stdout


def test_a_running_parley_serve_has_not_imported_the_bench_or_numpy() -> None:
    """The real server up to its banner, every import it made listed by ``-X importtime``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "parley.signaling",
            "serve",
            "--port",
            str(free_port()),
            "--turn-port",
            str(free_port()),
            "--api-key",
            "import-test-key",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        output = ""
        for _ in range(100):  # the banner's lines, bounded
            line = proc.stdout.readline()
            assert line, f"parley serve exited: {proc.stderr.read() if proc.stderr else ''}"
            output += line
            if "create a session" in line:
                break
        assert "parley is running" in output
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    imported = [
        line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if "import time:" in line
    ]
    assert "parley.signaling.app" in imported
    assert [m for m in imported if m.startswith(FORBIDDEN)] == []
