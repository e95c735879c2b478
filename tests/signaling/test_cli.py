"""``parley serve`` started the way the README says serves a session two aiortc clients use."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.signaling.test_media import assert_two_way_media, call


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_parley_serve_with_embedded_defaults_serves_a_two_party_call(tmp_path: Path) -> None:
    port, turn_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PARLEY_API_KEY", None)
    env.pop("PARLEY_DATA_DIR", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.signaling",
        "serve",
        "--port",
        str(port),
        "--turn-port",
        str(turn_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,  # the default data directory ./parley-data lands there
    )
    output = b""
    session: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        api_key = None
        async with asyncio.timeout(60):
            while api_key is None or b"create a session" not in output:
                line = await proc.stdout.readline()
                assert line, output.decode()
                output += line
                found = re.search(rb"generated API key: (\S+)", line)
                if found:
                    api_key = found.group(1).decode()
        assert f"http://127.0.0.1:{port}/".encode() in output
        assert (tmp_path / "parley-data" / "parley.db").is_file()  # the default store
        assert api_key is not None
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/api/v1/sessions",
                json={"conversation_id": "readme"},
                headers={"Authorization": f"Bearer {api_key}"},
            ) as response:
                assert response.status == 201
                session = await response.json()
            assert session["agent_url"].startswith(f"{base}/join/")
            async with http.get(session["customer_url"]) as page:
                assert page.status == 200
        agent, customer = await call(base, session["agent_url"], session["customer_url"])
        try:
            await assert_two_way_media(agent, customer)
        finally:
            await agent.close()
            await customer.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(10):
                    rest = await proc.stdout.read() if proc.stdout else b""
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                rest = b""
            logs = output + rest
            # at INFO, aioice's per-check lines (8 per peer connection) stay out of the log
            assert b"aioice" not in logs, logs.decode()[-2000:]
            # no secrets in the logs: the join tokens never appear
            for url in (session.get("agent_url"), session.get("customer_url")):
                if url:
                    assert url.rsplit("/", 1)[-1].encode() not in logs


def test_settle_heap_takes_start_up_out_of_the_collectors_way() -> None:
    """What ``parley serve`` does once it serves: start-up's objects frozen, so that a full
    collection (which the end of a session sets off) walks only what came after."""
    import subprocess

    code = (
        "import gc, time\n"
        "from parley.signaling.app import create_app, settle_heap\n"
        "from tests.signaling.conftest import make_config\n"
        "app = create_app(make_config())\n"
        "before = len(gc.get_objects())\n"
        "settle_heap()\n"
        "print(before, gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen, tracked = (int(x) for x in out.stdout.split())
    assert frozen >= before * 0.9 and tracked < before * 0.05, out.stdout
