"""A real PostgreSQL server for the store tests: Debian's ``postgresql`` binaries, a cluster made
with initdb in a temporary folder, started with pg_ctl on a loopback port (as the ``postgres``
user when the tests run as root), stopped afterwards. ``scripts/setup.sh test`` installs it."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """``postgresql://parley@127.0.0.1:PORT`` of a server private to this test run."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh test installs postgresql)")
        pytest.skip("PostgreSQL binaries are missing: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = _free_port()
    log = root / "server.log"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "parley",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        yield f"postgresql://parley@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A fresh, empty database on the test server (psql, so that any loop can use it)."""
    bin_dir = _bin_dir()
    assert bin_dir is not None
    name = "t_" + uuid.uuid4().hex[:12]
    port = server_url.rsplit(":", 1)[1]
    subprocess.run(
        [
            str(bin_dir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-U",
            "parley",
            "-d",
            "postgres",
            "-q",
            "-c",
            f"CREATE DATABASE {name}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return f"{server_url}/{name}"


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    return create_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL of each backend: SQLite in a temp folder, and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'parley.db'}"
    return create_database(request.getfixturevalue("postgres_server"))
