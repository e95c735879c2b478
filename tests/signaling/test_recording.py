"""Recording through the service: the HTTP contract (start/stop, listing, downloads with the API
key and Range, the composed file), the agent-only WebSocket action, what everybody is told, and
a full or unwritable disk that fails the recording but not the call."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.media_client import wait_for
from tests.relay.test_recording import assert_playable, streams
from tests.signaling.conftest import Service, ServiceFactory
from tests.signaling.test_media import call
from tests.signaling.ws_client import WsParticipant

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "ffprobe"], capture_output=True).returncode != 0,
    reason="needs ffmpeg/ffprobe",
)


async def api(
    service: Service, method: str, path: str, body: Any = None, key: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = service.auth(key) if key is not None else service.auth()
    headers.update(kw.pop("headers", {}))
    async with service.http.request(
        method, f"{service.base_url}{path}", json=body, headers=headers, **kw
    ) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


async def listing(service: Service, session_id: str) -> dict[str, Any]:
    status, data = await api(service, "GET", f"/api/v1/sessions/{session_id}/recordings")
    assert status == 200, data
    return dict(data)


async def wait_ready(service: Service, session_id: str, count: int) -> list[dict[str, Any]]:
    async def ready() -> list[dict[str, Any]]:
        while True:
            recordings = (await listing(service, session_id))["recordings"]
            if len(recordings) >= count and all(
                r["state"] in ("ready", "failed") for r in recordings
            ):
                return list(recordings)
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(ready(), 60)


async def close_all(*people: WsParticipant) -> None:
    for p in people:
        with contextlib.suppress(Exception):
            await p.close()


async def test_recording_contract_over_http_and_websocket(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    service = await service_factory(recordings_dir=str(tmp_path))
    session = await service.create_session(record=True)
    sid = session["session_id"]
    agent, customer = await call(service.base_url, session["agent_url"], session["customer_url"])
    try:
        assert agent.welcome is not None and agent.welcome["recording"] == "recording"
        assert await wait_for(
            lambda: (
                agent.client is not None and agent.client.frames_from(customer.id, "video") >= 10
            ),
            20,
        )
        data = await listing(service, sid)
        assert {r["state"] for r in data["recordings"]} == {"recording"}
        # only agents may stop it from the page
        await customer.send({"type": "recording", "action": "stop"})
        error = await customer.wait_message(lambda m: m["type"] == "error")
        assert error["code"] == "forbidden"
        await agent.send({"type": "recording", "action": "bogus"})
        assert (await agent.wait_message(lambda m: m["type"] == "error"))["code"] == "bad_request"
        await asyncio.sleep(2.0)
        # HTTP: 400 for another action, starting twice is fine, stop
        bad = await api(service, "POST", f"/api/v1/sessions/{sid}/recording", {"action": "pause"})
        assert bad[0] == 400
        again = await api(service, "POST", f"/api/v1/sessions/{sid}/recording", {"action": "start"})
        assert again[0] == 200 and again[1]["recording"]["state"] == "recording"
        status, body = await api(
            service, "POST", f"/api/v1/sessions/{sid}/recording", {"action": "stop"}
        )
        assert status == 200, body
        assert body["recording"]["state"] == "stopped"
        assert body["recording"]["started_at"] and body["recording"]["stopped_at"]
        for p in (agent, customer):
            told = await p.wait_message(lambda m: m == {"type": "recording", "state": "stopped"})
            assert told
        recordings = await wait_ready(service, sid, 2)
        assert {r["role"] for r in recordings} == {"agent", "customer"}
        for r in recordings:
            assert r["state"] == "ready", r
            assert set(r) >= {
                "recording_id",
                "participant_id",
                "role",
                "name",
                "source",
                "format",
                "state",
                "started_at",
                "duration_s",
                "size_bytes",
                "url",
            }
            assert r["source"] == "camera" and r["format"] == "webm"
            assert r["url"].startswith(service.base_url)
            path = r["url"][len(service.base_url) :]
            # never without the API key
            async with service.http.get(r["url"]) as response:
                assert response.status == 401
            status, content = await api(service, "GET", path, key="wrong")
            assert status == 401
            status, content = await api(service, "GET", path)
            assert status == 200 and len(content) == r["size_bytes"]
            file = tmp_path / f"download-{r['recording_id']}.webm"
            file.write_bytes(content)
            assert_playable(file)
            async with service.http.get(
                r["url"], headers={**service.auth(), "Range": "bytes=100-199"}
            ) as response:
                assert response.status == 206
                assert response.headers["Content-Range"] == f"bytes 100-199/{r['size_bytes']}"
                assert await response.read() == content[100:200]
        # a WS start by the agent tells everyone
        await agent.send({"type": "recording", "action": "start"})
        for p in (agent, customer):
            await p.wait_message(lambda m: m == {"type": "recording", "state": "recording"})
    finally:
        await close_all(agent, customer)
    # unknown session 404, ended session 409
    assert (await api(service, "POST", "/api/v1/sessions/s_nope/recording", {"action": "start"}))[
        0
    ] == 404
    await api(service, "DELETE", f"/api/v1/sessions/{sid}")
    ended = await api(service, "POST", f"/api/v1/sessions/{sid}/recording", {"action": "start"})
    assert ended[0] == 409, ended
    assert await wait_ready(service, sid, 4)


async def test_paths_in_requests_never_leave_the_recordings_directory(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    service = await service_factory(recordings_dir=str(root))
    secret = tmp_path / "secret.json"
    secret.write_text('{"state": "ready"}')
    session = await service.create_session()
    sid = session["session_id"]
    for path in (
        f"/api/v1/sessions/{sid}/recordings/..%2F..%2Fsecret.json",
        f"/api/v1/sessions/{sid}/recordings/r_000000000000",
        "/api/v1/sessions/..%2F/recordings",
        "/api/v1/sessions/%2E%2E/recordings",
        f"/api/v1/sessions/{sid}/recordings/../../../secret.json",
    ):
        status, body = await api(service, "GET", path)
        assert status in (400, 404), (path, status, body)
        assert b"ready" not in (body if isinstance(body, bytes) else str(body).encode())
    # nothing recorded yet: an empty listing, and no composed file to make
    assert (await listing(service, sid))["recordings"] == []
    assert (await api(service, "GET", f"/api/v1/sessions/{sid}/recordings/composed"))[0] == 404


async def test_composed_file_is_made_at_session_end(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    service = await service_factory(recordings_dir=str(tmp_path))
    session = await service.create_session(record=True, compose=True)
    sid = session["session_id"]
    agent, customer = await call(service.base_url, session["agent_url"], session["customer_url"])
    try:
        assert await wait_for(
            lambda: (
                customer.client is not None and customer.client.frames_from(agent.id, "video") >= 10
            ),
            20,
        )
        await asyncio.sleep(2.5)
    finally:
        await close_all(agent, customer)
    await api(service, "DELETE", f"/api/v1/sessions/{sid}")
    composed_path = f"/api/v1/sessions/{sid}/recordings/composed"

    async def composed() -> bytes:
        while True:
            status, body = await api(service, "GET", composed_path)
            if status == 200:
                return bytes(body)
            assert status == 202, body
            assert 0.0 <= body["composed"]["progress"] <= 1.0
            seen.add(body["composed"]["state"])
            await asyncio.sleep(0.3)

    seen: set[str] = set()
    content = await asyncio.wait_for(composed(), 90)
    assert seen == {"composing"}  # the job starts when the session ends
    file = tmp_path / "composed-download.webm"
    file.write_bytes(content)
    info = assert_playable(file)
    video = streams(info, "video")[0]
    assert (video["width"], video["height"]) == (640, 240)  # two tiles side by side
    assert float(info["format"]["duration"]) > 2.0
    state = (await listing(service, sid))["composed"]
    assert state["state"] == "ready" and state["participants"] == 2


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "400k") -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


async def test_full_disk_fails_the_recording_but_not_the_call(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    with tiny_tmpfs(tmp_path / "small") as small:
        service = await service_factory(recordings_dir=str(small))
        session = await service.create_session(record=True)
        sid = session["session_id"]
        agent, customer = await call(
            service.base_url, session["agent_url"], session["customer_url"]
        )
        try:

            async def failed() -> list[dict[str, Any]]:
                while True:
                    recordings = (await listing(service, sid))["recordings"]
                    if recordings and any(r["state"] == "failed" for r in recordings):
                        return list(recordings)
                    await asyncio.sleep(0.2)

            recordings = await asyncio.wait_for(failed(), 40)
            reason = next(r["reason"] for r in recordings if r["state"] == "failed")
            assert "No space left on device" in reason, reason
            a = agent.client
            assert a is not None
            before = a.frames_from(customer.id, "video")
            assert await wait_for(lambda: a.frames_from(customer.id, "video") >= before + 30, 20)
            status, body = await api(service, "GET", f"/api/v1/sessions/{sid}")
            assert body["state"] == "active"
            assert not agent.closed.is_set() and not customer.closed.is_set()
        finally:
            await close_all(agent, customer)


async def test_unwritable_directory_fails_the_recording_with_a_clear_reason(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    service = await service_factory(recordings_dir=str(blocker / "recordings"))
    session = await service.create_session(record=True)
    sid = session["session_id"]
    agent, customer = await call(service.base_url, session["agent_url"], session["customer_url"])
    try:
        recordings = await wait_ready(service, sid, 2)
        assert all(r["state"] == "failed" for r in recordings)
        assert all("Not a directory" in r["reason"] for r in recordings), recordings
        a = agent.client
        assert a is not None
        before = a.frames_from(customer.id, "video")
        assert await wait_for(lambda: a.frames_from(customer.id, "video") >= before + 30, 20)
    finally:
        await close_all(agent, customer)
