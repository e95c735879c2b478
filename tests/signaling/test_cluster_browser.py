"""Real Chromium pages on a two-node cluster (real redis-server and PostgreSQL): the session is
created through node A and placed on node B; both pages load their join URLs from A (A relays
their WebSockets to B) and talk; ``kill -9`` of node B mid-call and the pages, rejoining by
themselves as they do on any dropped socket, are back with media on node A within 10 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.signaling.postgres_server import create_database, postgres_server  # noqa: F401

from .browser_support import (
    ARTIFACTS,
    CHROMIUM,
    REPO,
    ServedProcess,
    chromium_available,
    free_port,
    join_page,
    launch_chromium,
    participant_id,
    wait_for_media,
    wait_for_state,
)
from .cluster_support import NODE_A, NODE_B, RedisServer, shared_secrets

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed"),
]

AV = ("camera", "microphone")


class Node(ServedProcess):
    """One ``parley serve --redis-url`` node as a subprocess (sync, for Playwright's sync API)."""

    def __init__(self, data_dir: Path, address: str, *flags: str) -> None:
        self.data_dir, self.address = data_dir, address
        self.port = free_port()
        self.base_url = f"http://{address}:{self.port}"
        self.flags = list(flags)
        self.log_path = ARTIFACTS / f"parley-cluster-{address}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_timeout = 15.0

    @property
    def api_key(self) -> str:
        return (self.data_dir / "api-key").read_text().strip()

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "parley.signaling",
            "serve",
            "--host",
            self.address,
            "--port",
            str(self.port),
            "--media-address",
            self.address,
            "--turn-port",
            "0",
            "--workers",
            "1",
            "--data-dir",
            str(self.data_dir),
            *self.flags,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def wait_ready(self, live_nodes: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                if len(self.health()["cluster"]["nodes"]) == live_nodes:
                    return
            except (OSError, urllib.error.URLError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"node {self.base_url} not ready: {self.log_tail()}")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=3) as r:
            return dict(json.loads(r.read()))

    def create_session(self, name: str) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.base_url}/api/v1/sessions",
            data=json.dumps({"conversation_id": name}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201
            return dict(json.loads(r.read()))

    def kill_all(self) -> None:
        """``kill -9`` of the whole node: its control process and its media workers."""
        assert self.proc is not None
        pids = [w["pid"] for w in self.health()["workers"]]
        for pid in [self.proc.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


@pytest.fixture
def nodes(tmp_path: Path, postgres_server: str) -> Iterator[tuple[Node, Node, RedisServer]]:  # noqa: F811
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    shared_secrets(tmp_path / "a", tmp_path / "b")
    flags = ("--redis-url", redis.url, "--database-url", create_database(postgres_server))
    a = Node(tmp_path / "a", NODE_A, *flags)
    b = Node(tmp_path / "b", NODE_B, *flags)
    try:
        a.start()
        b.start()
        a.wait_ready(2)
        b.wait_ready(2)
        yield a, b, redis
    finally:
        a.stop()
        b.stop()
        redis.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with launch_chromium() as b:
        yield b


def owner_of(redis: RedisServer, session_id: str) -> str:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis.url)
    try:
        value = client.get(f"parley:session:{session_id}")
        return value.decode() if isinstance(value, bytes) else ""
    finally:
        client.close()


def test_pages_are_back_on_a_within_10_s_of_kill_9_of_b(
    nodes: tuple[Node, Node, RedisServer], browser: Any
) -> None:
    a, b, redis = nodes
    b_id = b.health()["cluster"]["node_id"]
    session: dict[str, Any] = {}
    for i in range(4):  # until one is placed on B
        session = a.create_session(f"browser-{i}")
        if owner_of(redis, session["session_id"]) == b_id:
            break
    assert owner_of(redis, session["session_id"]) == b_id, "no session was placed on B"
    assert session["agent_url"].startswith(a.base_url + "/join/")

    errors: list[str] = []
    agent = join_page(browser, session["agent_url"], "Alice", errors)
    customer = join_page(browser, session["customer_url"], "Carl", errors)
    pages = {"Alice": agent, "Carl": customer}
    ids = {name: participant_id(page) for name, page in pages.items()}
    for name, page in pages.items():
        wait_for_media(page, {ids[o]: AV for o in pages if o != name}, timeout=40)
    assert sum(w["sessions"] for w in b.health()["workers"]) >= 1  # the call is on B

    attempts = {name: page.evaluate("() => window.parley.attempts") for name, page in pages.items()}
    b.kill_all()
    killed_at = time.monotonic()
    for name, page in pages.items():  # each page notices and rejoins by itself
        page.wait_for_function(
            "n => window.parley.attempts > n", arg=attempts[name], timeout=10_000
        )
    for page in pages.values():
        left = max(1.0, 10.0 - (time.monotonic() - killed_at))
        wait_for_state(page, "connected", timeout=left)
    ids = {name: participant_id(page) for name, page in pages.items()}
    for name, page in pages.items():
        left = max(1.0, 10.0 - (time.monotonic() - killed_at))
        wait_for_media(page, {ids[o]: AV for o in pages if o != name}, timeout=left)
    back = time.monotonic() - killed_at
    assert back < 10.0, f"media back after {back:.1f} s"
    assert owner_of(redis, session["session_id"]) == a.health()["cluster"]["node_id"]
    assert sum(w["sessions"] for w in a.health()["workers"]) >= 1
    assert not errors, errors
