"""``parley serve --workers 2`` as real processes: sessions are placed on both media workers, a
call on each; ``kill -9`` of one worker mid-call brings its pages back within 5 s (on a live
worker, the session from the store) while the other call goes on, and the control process
replaces the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from parley.signaling.workers import merge_metrics
from tests.media_client import wait_for
from tests.signaling.store_serve import ParleyProcess, RejoiningParticipant


def in_call(a: RejoiningParticipant, b: RejoiningParticipant, frames: int = 10) -> bool:
    return all(
        x.frames_from(y, kind) >= frames for x, y in ((a, b), (b, a)) for kind in ("audio", "video")
    )


def video_frames(a: RejoiningParticipant, b: RejoiningParticipant) -> int:
    return min(a.frames_from(b, "video"), b.frames_from(a, "video"))


async def health(http: aiohttp.ClientSession, server: ParleyProcess) -> dict[str, Any]:
    async with http.get(f"{server.base_url}/healthz") as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        assert data["packet_path"] in ("compiled", "python")
        return data


async def create(http: aiohttp.ClientSession, server: ParleyProcess, name: str) -> dict[str, Any]:
    async with http.post(
        f"{server.base_url}/api/v1/sessions",
        json={"conversation_id": name},
        headers=server.auth(),
    ) as response:
        assert response.status == 201, await response.text()
        data: dict[str, Any] = await response.json()
        return data


async def wait_health(
    http: aiohttp.ClientSession,
    server: ParleyProcess,
    check: Any,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = await health(http, server)
        if check(data["workers"]) or time.monotonic() > deadline:
            return data
        await asyncio.sleep(0.1)


async def test_two_workers_a_crash_moves_only_its_sessions(tmp_path: Path) -> None:
    server = ParleyProcess(tmp_path / "data", "--workers", "2")
    await server.start()
    people: list[RejoiningParticipant] = []
    try:
        async with aiohttp.ClientSession() as http:
            data = await health(http, server)
            assert [w["alive"] for w in data["workers"]] == [True, True], server.output.decode()

            first = await create(http, server, "chat-a")
            data = await wait_health(
                http, server, lambda ws: sorted(w["sessions"] for w in ws) == [0, 1], 10
            )
            (crashing,) = [w for w in data["workers"] if w["sessions"] == 1]
            second = await create(http, server, "chat-b")
            data = await wait_health(
                http, server, lambda ws: [w["sessions"] for w in ws] == [1, 1], 10
            )
            assert [w["sessions"] for w in data["workers"]] == [1, 1]  # one on each worker

            a1 = RejoiningParticipant(server.base_url, first["agent_url"], "Ann")
            a2 = RejoiningParticipant(server.base_url, first["customer_url"], "Carl")
            b1 = RejoiningParticipant(server.base_url, second["agent_url"], "Bea")
            b2 = RejoiningParticipant(server.base_url, second["customer_url"], "Dan")
            people = [a1, a2, b1, b2]
            for p in people:
                p.start()
            assert await wait_for(lambda: in_call(a1, a2) and in_call(b1, b2), timeout=40)

            async with http.get(f"{server.base_url}/metrics") as response:
                text = await response.text()
            assert 'parley_worker_sessions{worker="0"} 1.0' in text
            assert 'parley_worker_sessions{worker="1"} 1.0' in text
            assert "parley_rtp_forwarded_packets " in text  # the workers' metrics, summed
            data = await wait_health(
                http, server, lambda ws: all(w["packets_per_second"] > 0 for w in ws), 10
            )
            assert all(w["packets_per_second"] > 0 for w in data["workers"]), data

            before = video_frames(b1, b2)
            os.kill(crashing["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            data = await wait_health(
                http, server, lambda ws: ws[crashing["index"]]["restarts"] == 1, 2
            )
            assert data["workers"][crashing["index"]]["restarts"] == 1  # noticed within 2 s

            assert await wait_for(lambda: a1.joins >= 2 and a2.joins >= 2, timeout=10)
            assert a1.rejoined_at is not None and a2.rejoined_at is not None
            assert max(a1.rejoined_at, a2.rejoined_at) - killed_at < 5.0
            assert await wait_for(lambda: in_call(a1, a2), timeout=20)

            # the other call saw nothing: same connections, frames still flowing
            assert await wait_for(lambda: video_frames(b1, b2) >= before + 30, timeout=20)
            assert b1.joins == 1 and b2.joins == 1

            data = await wait_health(
                http,
                server,
                lambda ws: (
                    ws[crashing["index"]]["alive"]
                    and ws[crashing["index"]]["pid"] != crashing["pid"]
                ),
                30,
            )
            replaced = data["workers"][crashing["index"]]
            assert replaced["alive"] and replaced["pid"] != crashing["pid"]

            async with http.get(
                f"{server.base_url}/api/v1/sessions/{first['session_id']}", headers=server.auth()
            ) as response:
                assert response.status == 200
                assert (await response.json())["state"] == "active"
            async with http.get(
                f"{server.base_url}/internal/worker/status", headers=server.auth()
            ) as response:
                assert response.status == 404  # the workers' own routes stay inside
    finally:
        for p in people:
            await p.close()
        await server.stop(signal.SIGTERM)
    assert server.proc is not None and server.proc.returncode == 0, server.output.decode()[-3000:]


def test_merged_metrics_add_samples_with_the_same_labels() -> None:
    one = '# HELP parley_x x\n# TYPE parley_x gauge\nparley_x{state="a"} 2.0\nparley_y 1\n'
    two = '# HELP parley_x x\n# TYPE parley_x gauge\nparley_x{state="a"} 3.0\n'
    merged = merge_metrics([one, two])
    assert 'parley_x{state="a"} 5' in merged
    assert "parley_y 1" in merged


def test_workers_need_the_store_and_a_count_in_range() -> None:
    from parley.signaling.config import ServiceConfig, StoreSettings

    with pytest.raises(ValueError, match="needs the store"):
        ServiceConfig(api_key="k", token_secret=b"x" * 16, workers=2, store=StoreSettings())
    with pytest.raises(ValueError, match="from 1 to 64"):
        ServiceConfig(api_key="k", token_secret=b"x" * 16, workers=0)


def test_placement_takes_the_fewest_packets_then_the_fewest_sessions() -> None:
    from parley.signaling.config import ServiceConfig, StoreSettings
    from parley.signaling.workers import Control, NoWorker

    store = StoreSettings(data_dir="unused")
    config = ServiceConfig(api_key="k", token_secret=b"x" * 16, workers=3, store=store)
    control = Control(config, config)
    try:
        a, b, c = control.workers
        for w, pps, sessions in ((a, 900.0, 1), (b, 300.0, 4), (c, 300.0, 2)):
            w.alive, w.packets_per_second, w.sessions = True, pps, sessions
        assert control.least_loaded() is c  # fewest packets (b, c), then fewest sessions
        control.placed("s_1", c)
        control.placed("s_2", c)  # placed since the last poll counts too
        assert control.least_loaded() is b
        c.alive = b.alive = False
        assert control.least_loaded() is a
        a.alive = False
        with pytest.raises(NoWorker):
            control.least_loaded()
    finally:
        os.rmdir(control.folder)
