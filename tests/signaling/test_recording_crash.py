"""``kill -9`` of a real ``parley serve`` while recording loses at most the last 2 seconds: the
next start finalises the leftovers by itself, and ``parley recording export`` is idempotent."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.relay.test_recording import assert_playable, probe
from tests.signaling.test_cli import free_port
from tests.signaling.test_media import call

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "ffprobe"], capture_output=True).returncode != 0,
    reason="needs ffmpeg/ffprobe",
)

API_KEY = "crash-test-key"


@contextlib.asynccontextmanager
async def parley_serve(recordings: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PARLEY_API_KEY": API_KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.signaling",
        "serve",
        "--port",
        str(port),
        # no TURN: the clients' TURN allocations would take a minute to time out after kill -9
        "--turn-port",
        "0",
        "--recordings-dir",
        str(recordings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    output = b""
    try:
        async with asyncio.timeout(20):
            while b"create a session" not in output:
                line = await proc.stdout.readline()
                assert line, output.decode()
                output += line
        drain = asyncio.ensure_future(proc.stdout.read())
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        drain.cancel()


def wall(iso: str) -> float:
    base, _, ms = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(ms or 0) / 1000


async def recordings_of(http: aiohttp.ClientSession, base: str, sid: str) -> list[dict[str, Any]]:
    async with http.get(
        f"{base}/api/v1/sessions/{sid}/recordings", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as response:
        assert response.status == 200, await response.text()
        return list((await response.json())["recordings"])


async def test_kill_9_mid_recording_then_restart_gives_ready_files(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as http:
        async with parley_serve(recordings) as (base, proc):
            async with http.post(
                f"{base}/api/v1/sessions",
                json={"conversation_id": "crash", "record": True},
                headers=auth,
            ) as response:
                session = await response.json()
            sid = session["session_id"]
            agent, customer = await call(base, session["agent_url"], session["customer_url"])
            try:
                async with asyncio.timeout(30):
                    while True:
                        listed = await recordings_of(http, base, sid)
                        if len(listed) == 2 and all((r["duration_s"] or 0) >= 6 for r in listed):
                            break
                        await asyncio.sleep(0.2)
                started = {r["recording_id"]: wall(r["started_at"]) for r in listed}
                proc.kill()  # SIGKILL: no clean-up at all
                killed_at = time.time()
                await proc.wait()
            finally:
                for p in (agent, customer):
                    with contextlib.suppress(Exception):
                        await p.close()
        assert all(r["state"] == "recording" for r in listed)
        async with parley_serve(recordings) as (base, _):
            async with asyncio.timeout(60):
                while True:
                    after = await recordings_of(http, base, sid)
                    if after and all(r["state"] in ("ready", "failed") for r in after):
                        break
                    await asyncio.sleep(0.3)
            assert {r["state"] for r in after} == {"ready"}, after
            for r in after:
                async with http.get(r["url"], headers=auth) as response:
                    assert response.status == 200
                    content = await response.read()
                file = tmp_path / f"{r['recording_id']}.webm"
                file.write_bytes(content)
                assert_playable(file)
                recorded = killed_at - started[r["recording_id"]]
                duration = float(probe(file)["format"]["duration"])
                assert duration >= recorded - 2.0, (duration, recorded)
    # the export command finds nothing left to do, and says so
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.signaling",
            "recording",
            "export",
            sid,
            "--recordings-dir",
            str(recordings),
        ],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(re.findall(rb"already ready", result.stdout)) == 2, result.stdout


async def test_export_finalises_a_killed_recording_with_a_torn_journal(tmp_path: Path) -> None:
    from parley.relay.recorder import SessionRecorder
    from tests.relay.harness import session
    from tests.relay.test_recording import flowing

    live = tmp_path / "live"
    async with session("ann", "bob") as (router, p):
        await p["ann"].publish()
        await flowing(p["bob"], "ann")
        recorder = SessionRecorder(router, live, lambda pid: ("agent", pid))
        recorder.start()
        await asyncio.sleep(3.0)
        # what kill -9 leaves: the journals as flushed so far and manifests saying "recording"
        await asyncio.sleep(0.6)  # more than the writer's flush interval
        crashed = tmp_path / "crashed"
        await asyncio.to_thread(shutil.copytree, live, crashed)
        await recorder.stop()
        await recorder.wait()
    journal = next(crashed.glob("r_*/001-video.journal"))
    with open(journal, "ab") as f:
        f.write(b"P\x05\x00\x00\x01")  # a record torn in the middle
    command = [
        sys.executable,
        "-m",
        "parley.signaling",
        "recording",
        "export",
        str(crashed),
    ]
    first = subprocess.run(command, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert b"100%" in first.stderr and b"ready in" in first.stdout, (first.stdout, first.stderr)
    file = next(crashed.glob("r_*.webm"))
    assert_playable(file)
    assert float(probe(file)["format"]["duration"]) >= 2.5
    mtime = file.stat().st_mtime
    second = subprocess.run([*command, "--compose"], capture_output=True, timeout=90)
    assert second.returncode == 0 and b"already ready" in second.stdout, second.stdout
    assert file.stat().st_mtime == mtime
    assert b"composed [" in second.stderr and b"composed: ready" in second.stdout
    assert_playable(crashed / "composed.webm")
